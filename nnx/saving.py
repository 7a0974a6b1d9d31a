"""Save and load models: one ``.npz`` file, no pickle, written atomically, versioned.

The file is a zip archive of ``.npy`` members, as :func:`numpy.savez` writes them, so
``numpy.load(path, allow_pickle=False)`` can read it too:

``layers.{i}.{name}``
    Each layer's parameters (a Dense layer's ``W``, shape ``(n_in, n_out)``, and ``b``,
    shape ``(n_out,)``), in the model's dtype.
``metadata``
    UTF-8 JSON in a 1-D uint8 array: ``format`` (``nnx.Sequential``), ``format_version``,
    ``nnx_version``, ``config`` (:meth:`Sequential.get_config`: per layer ``{"type",
    "config"}``), ``dtype``, ``backend`` and ``device`` (where the model was trained), ``seed``
    and ``epochs_trained``.

Format version 2 names each layer's type; version 1 (nnx 0.1.0: Dense layers only, their
settings without a type) still loads.

Limits, checked before anything is allocated: the metadata member is at most
:data:`MAX_METADATA_BYTES` (JSON nested too deeply is refused); at most :data:`MAX_LAYERS`
layers, each size at most 2**31; the archive holds exactly the members the architecture lists,
each read with a bound of its declared array's size plus a ``.npy`` header, whatever the zip
directory says; each ``.npy`` header must declare exactly the bytes its member holds (numpy's
reader would allocate the declared array first). So a load allocates no more than the file
holds (inflated: about 1000x its size at most, for a compressed member) and its architecture
declares. Each member is read to its end, so zipfile checks its CRC-32: a damaged file is a
:class:`~nnx.errors.ModelFileError`, never different weights.

The optimizer state and the training history are not saved: ``fit`` after ``load`` starts a
fresh optimizer from the loaded weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import secrets
import socket
import stat
import zipfile
from typing import Any

import numpy as np

from nnx.backends import Backend, get_backend, to_numpy
from nnx.errors import InvalidDataError, InvalidParameterError, ModelFileError
from nnx.layers import LAYERS

FORMAT_NAME = "nnx.Sequential"
FORMAT_VERSION = 2  # the newest version this code writes and reads
METADATA = "metadata"
DTYPES = ("float32", "float64")
MAX_METADATA_BYTES = 1 << 20
MAX_LAYERS = 10_000
_NPY_HEADER_BYTES = 1 << 16  # the most a .npy header may take (format version 2/3)

__all__ = ["FORMAT_VERSION", "ModelFileError", "check_writable", "load", "save",
           "write_atomically"]


# -- save -------------------------------------------------------------------------------------
def save(model: Any, path: str | os.PathLike) -> None:
    """Write `model` to the file `path` (``model.save(path)`` calls this).

    Parameters
    ----------
    model : Sequential
    path : str or os.PathLike
        Written exactly as given: no ``.npz`` is appended (``model.npz`` is the usual name).

    The file is written to a temporary file in the same folder, flushed to disk and renamed over
    `path`, so that an error or a crash leaves either the previous file or the new one, never a
    partial file. An existing file keeps its permissions; a read-only one is refused; a
    symbolic link keeps pointing to its (updated) target.

    Raises
    ------
    InvalidParameterError
        `path` is not a file name (``""``, None).
    FileNotFoundError
        The folder of `path` does not exist.
    IsADirectoryError
        `path` is a folder (or ends with ``/``).
    PermissionError
        `path` or its folder is read-only (see :func:`write_atomically`); nothing is written.
    ValueError
        A parameter is NaN or inf (nothing is written).
    """
    arrays = _arrays_of(model)
    # A file object, so that numpy does not append ".npz" to the name.
    write_atomically(path, lambda handle: _write_npz(handle, arrays), "nnx.save")


def write_atomically(path: str | os.PathLike, write: Any, where: str, text: bool = False) -> None:
    """Call ``write(handle)`` on a temporary file beside `path`, then rename it over `path`.

    An error, a crash or Ctrl-C inside `write` leaves the previous file (or no file) at `path`;
    the temporary file is removed, or, after a crash (SIGKILL, power loss), by the next write
    of the same path. Used for models, predictions and figures alike.

    * An existing file keeps its permission bits (and, where allowed, its owner); a new one
      gets ``open()``'s usual ``0o666 & ~umask``.
    * A file or folder that cannot be written is refused before anything is written, with
      a ``PermissionError`` naming `path`: one that ``os.access`` says is not writable, or
      whose mode has no write bit for anyone (``0o444``). The second rule also holds for
      root, to whom ``os.access`` says everything is writable: nnx does not replace a file
      that its owner made read-only.
    * `path` a symbolic link: its target is replaced (the temporary file is written beside
      the target), the link stays.
    * The temporary file is ``.NAME.nnx-tmp-HOST-PID-RANDOM`` (NAME cut to fit the file
      system's name length); ones left by a process of this machine that no longer runs (a
      write killed midway) are removed by the next write of the same path (POSIX only).
    * Every error names `path`, never the temporary file.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write; its folder must exist.
    write : callable
        Receives the open file (binary, or text with ``newline=''`` when `text`).
    where : str
        Names the caller in error messages (``nnx.save``, ``nnx predict --out``).
    """
    path, target = check_writable(path, where)
    folder, base = os.path.split(target)
    prefix = _temp_prefix(folder, base)
    _remove_stale(folder, prefix)
    try:
        existing: os.stat_result | None = os.stat(target)
    except OSError:
        existing = None
    tmp = ""
    try:
        for _ in range(100):
            tmp = os.path.join(folder, f"{prefix}{_HOST}-{os.getpid()}-{secrets.token_hex(4)}")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                             0o600)
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 100 random names taken
            raise FileExistsError(f"{where}: cannot write {path}: no free temporary name in "
                                  f"{folder}.")
        try:
            mode = {"mode": "w", "newline": "", "encoding": "utf-8"} if text else {"mode": "wb"}
            with os.fdopen(fd, **mode) as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            if existing is not None:
                os.chmod(tmp, stat.S_IMODE(existing.st_mode))
                if hasattr(os, "chown") and (existing.st_uid, existing.st_gid) != (
                        os.getuid(), os.getgid()):
                    with contextlib.suppress(OSError):  # only root may give a file away
                        os.chown(tmp, existing.st_uid, existing.st_gid)
            else:
                os.chmod(tmp, 0o666 & ~_umask())  # open()'s usual mode
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        if exc.filename not in (None, tmp):
            raise  # about another file (one that `write` opened): its own message says which
        detail = exc.strerror or str(exc) or type(exc).__name__
        raise type(exc)(f"{where}: cannot write {path}: {detail}.") from None
    _fsync_folder(folder)


def check_writable(path: Any, where: str) -> tuple[str, str]:
    """``(path, target)``: `path` as given and the file to replace (a link's target), checked
    as :func:`write_atomically` does before it writes anything."""
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidParameterError(f"{where}: path must be a file name (str or os.PathLike); "
                                    f"received path={path!r}.")
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not path:
        raise InvalidParameterError(f"{where}: path must be a file name; received path=''.")
    seps = tuple(s for s in (os.sep, os.altsep) if s)
    if path.endswith(seps) or os.path.basename(path) in (".", ".."):
        raise IsADirectoryError(f"{where}: {path!r} names a folder; give a file name inside "
                                "it.")
    target = os.path.realpath(path) if os.path.islink(path) else os.path.abspath(path)
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{where}: cannot write {path}: the folder {folder} does not "
                                "exist; create it first (os.makedirs).")
    if os.path.isdir(target):
        raise IsADirectoryError(f"{where}: {path} is a folder; give a file name inside it.")
    if not _may_write(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{where}: cannot write {path}: the folder {folder} is read-only "
                              "(no write permission); choose another folder or make it "
                              "writable.")
    if os.path.exists(target) and not _may_write(target, os.W_OK):
        shown = f"{path} (a link to {target})" if target != os.path.abspath(path) else path
        raise PermissionError(
            f"{where}: cannot write {shown}: the file is read-only (mode "
            f"{stat.filemode(os.stat(target).st_mode)}); nothing was changed. Make it "
            "writable (chmod u+w) or remove it first.")
    name_max = _name_max(folder)
    if len(os.fsencode(os.path.basename(target))) > name_max:
        raise OSError(f"{where}: cannot write {path}: the file name is "
                      f"{len(os.fsencode(os.path.basename(target)))} bytes long; this file "
                      f"system allows at most {name_max}.")
    return path, target


def _may_write(path: str, how: int) -> bool:
    """Whether a write would be allowed: by ``os.access`` and by the mode, which must have a
    write bit for someone (root may write anything; nnx still keeps a read-only file)."""
    try:
        bits = os.stat(path).st_mode
    except OSError:
        return False
    return os.access(path, how) and bool(bits & 0o222)


def _name_max(folder: str) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (AttributeError, OSError, ValueError):
        return 255


_TEMP_TAG = ".nnx-tmp-"
# This machine, in temporary names: in a folder shared between machines (NFS), a process id
# only says whether a writer is alive on the machine that wrote it.
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _temp_prefix(folder: str, base: str) -> str:
    """``.NAME.nnx-tmp-``, NAME cut so that the whole temporary name fits the folder's limit
    (the same cut for the same name, so that the next write finds a crash's leftovers)."""
    room = _name_max(folder) - len(_TEMP_TAG) - 1 - 9 - 20 - 1 - 8  # ".", host-, pid-, random
    name = base
    while len(os.fsencode(name)) > room:
        name = name[:-1]
    return f".{name}{_TEMP_TAG}"


def _remove_stale(folder: str, prefix: str) -> None:
    """Remove the temporary files of `prefix` left by processes that no longer run (a write
    killed midway); another process's write in progress is left alone."""
    if os.name != "posix":
        return
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if not name.startswith(prefix):
            continue
        host, _, rest = name[len(prefix):].partition("-")
        pid_text = rest.split("-", 1)[0]
        if host == _HOST and pid_text.isdigit() and not _alive(int(pid_text)):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it runs, as another user
        return True
    return True


def _arrays_of(model: Any) -> dict[str, np.ndarray]:
    arrays = {}
    for i, layer in enumerate(model.layers):
        for name, value in layer.params().items():
            host = np.asarray(to_numpy(value))
            if not np.all(np.isfinite(host)):
                raise InvalidDataError(f"nnx.save: layers[{i}].{name} contains NaN or inf; "
                                       "nothing was written. Retrain or restore finite "
                                       "weights first.")
            arrays[f"layers.{i}.{name}"] = host
    from nnx import __version__

    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "nnx_version": __version__,
        "config": model.get_config(),
        "dtype": model.dtype_name,
        "backend": model.backend.name,
        "device": str(model.backend.device),
        "seed": model.seed,
        "epochs_trained": model.epochs_trained,
    }
    for key in ("classes", "feature_names"):
        if getattr(model, key, None) is not None:
            metadata[key] = list(getattr(model, key))
    text = json.dumps(metadata, allow_nan=False)
    arrays[METADATA] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    return arrays


def _write_npz(handle: Any, arrays: dict[str, np.ndarray]) -> None:
    """What ``np.savez`` does, with ``allow_pickle=False`` spelled out."""
    with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            with archive.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def _umask() -> int:
    # The only way to read the umask is to set it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable (POSIX only: Windows cannot open a folder)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # some file systems refuse fsync on a folder
            os.fsync(fd)
    finally:
        os.close(fd)


# -- load -------------------------------------------------------------------------------------
def load(path: str | os.PathLike, backend: str | Backend | None = None, device: Any = None,
         *, dtype: str | None = None) -> Any:
    """Read a model written by :func:`save` onto `backend`, whatever it was trained on.

    Parameters
    ----------
    path : str or os.PathLike
    backend : str or Backend, optional
        Default: resolved as for a new model (``nnx.use_backend``, ``NNX_BACKEND``, numpy).
    device : optional
        A device of that backend.
    dtype : {'float32', 'float64'}, optional
        Cast the parameters to this dtype, e.g. ``'float32'`` to put a float64 model on a
        device without float64. Default: the saved dtype.

    Returns
    -------
    Sequential
        With the saved architecture, parameters and ``epochs_trained``.

    Raises
    ------
    ModelFileError
        The file is missing, unreadable, damaged, from a newer nnx, or not a valid model.
    ValueError
        The saved (or requested) dtype is not available on the device.
    """
    from nnx.model import Sequential

    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise InvalidParameterError(f"nnx.load: path must be a file name (str or os.PathLike); "
                                    f"received {type(path).__name__}.")
    path = os.fspath(path)
    if dtype is not None and dtype not in DTYPES:
        raise InvalidParameterError(f"nnx.load: dtype={dtype!r} is not supported; expected "
                                    "'float32' or 'float64'.")
    # A backend that cannot be used is the caller's problem, not the file's: raise it as is.
    target = get_backend(backend, device)
    config, saved_dtype, epochs_trained, members = _read(path)
    shapes = _parameter_shapes(config, path)
    for name, shape in shapes.items():
        _check_parameter(members[name], name, shape, saved_dtype, path)

    dtype = saved_dtype if dtype is None else dtype
    if dtype == "float64" and not target.supports_float64:
        raise InvalidParameterError(
            f"nnx.load: {path} holds a float64 model but {target.name} device "
            f"{target.device_label()} has no float64; pass dtype='float32' to nnx.load to "
            "cast it.")
    try:
        model = Sequential.from_config({**config, "dtype": dtype}, backend=target)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(path, f"the architecture in the metadata is invalid "
                                   f"({type(exc).__name__}: {exc}).") from None
    # Cast on the host: any byte order and the requested dtype reach the device as native.
    model.set_weights([members[name].astype(dtype) for name in shapes])
    model.epochs_trained = epochs_trained
    classes, names = config.get("classes"), config.get("feature_names")
    if classes is not None and len(classes) != max(2, model.n_out):
        raise ModelFileError(path, f"it lists {len(classes)} classes for {model.n_out} output "
                                   "units.")
    if names is not None and len(names) != model.n_in:
        raise ModelFileError(path, f"it lists {len(names)} feature names for {model.n_in} "
                                   "inputs.")
    model.classes, model.feature_names = classes, names
    return model


def _open(path: str) -> zipfile.ZipFile:
    if not os.path.exists(path):
        raise ModelFileError(path, "no such file.")
    if not os.path.isfile(path):
        raise ModelFileError(path, "it is not a file.")
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ModelFileError(path, "it is not a zip (.npz) archive; it is truncated, corrupted "
                                   "or not a file written by model.save().") from None
    except OSError as exc:
        raise ModelFileError(path, f"it cannot be read ({exc.strerror or exc}).") from None
    except NotImplementedError as exc:  # a "version needed to extract" nnx never writes
        raise ModelFileError(path, f"it needs a zip feature that nnx does not read ({exc}); "
                                   "model.save() never writes one, so the file is corrupted "
                                   "or not a model.") from None
    except Exception as exc:  # noqa: BLE001 - zipfile raises several types on a bad directory
        raise ModelFileError(path, f"its zip directory is damaged ({type(exc).__name__}: "
                                   f"{exc}).") from None


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: str,
                 limit: int) -> bytes:
    """The member's bytes, read with a bound: never more than `limit` bytes, whatever its
    header declares (a zip bomb declares little and inflates to much)."""
    if info.file_size > limit:
        raise ModelFileError(path, f"the member {info.filename!r} declares {info.file_size} "
                                   f"bytes; at most {limit} are expected for it.")
    try:
        with archive.open(info) as member:
            data = member.read(limit + 1)
            if len(data) > limit:
                raise ModelFileError(path, f"the member {info.filename!r} holds more than the "
                                           f"{limit} bytes expected for it.")
            return data
    except ModelFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - BadZipFile, EOFError, zlib.error, OSError...
        raise ModelFileError(path, f"the member {info.filename!r} is damaged ({exc}); the file "
                                   "is truncated or corrupted.") from None


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "") if names else "none"


def _read(path: str) -> tuple[dict[str, Any], str, int, dict[str, np.ndarray]]:
    """``(config, dtype, epochs_trained, arrays)``: the metadata first (bounded), then
    exactly the members the architecture lists, each bounded by its declared size, each
    read in full (so zipfile checks its CRC-32) and parsed as ``.npy`` without pickle."""
    with _open(path) as archive:
        infos: dict[str, zipfile.ZipInfo] = {}
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            if name == info.filename or name in infos:
                what = "is not a .npy array" if name == info.filename else "appears twice"
                raise ModelFileError(path, f"the member {info.filename!r} {what}; nnx writes "
                                           "each array once, as NAME.npy.")
            infos[name] = info
        if METADATA not in infos:
            raise ModelFileError(path, f"it holds no {METADATA!r} member, so it is not a model "
                                       "written by model.save().")
        raw = _parse_npy(_read_member(archive, infos.pop(METADATA), path, MAX_METADATA_BYTES),
                         METADATA + ".npy", path)
        config, dtype, epochs = _check_metadata(raw, path)
        shapes = _parameter_shapes(config, path)
        missing = [name for name in shapes if name not in infos]
        extra = [name for name in infos if name not in shapes]
        if missing or extra:
            raise ModelFileError(path, f"the arrays do not match the architecture: missing "
                                       f"{_names(missing)}, unexpected {_names(extra)}.")
        itemsize = np.dtype(dtype).itemsize
        arrays = {}
        for name, shape in shapes.items():
            limit = math.prod(shape) * itemsize + _NPY_HEADER_BYTES
            arrays[name] = _parse_npy(_read_member(archive, infos[name], path, limit),
                                      infos[name].filename, path)
    return config, dtype, epochs, arrays


def _parse_npy(data: bytes, member: str, path: str) -> np.ndarray:
    stream = io.BytesIO(data)
    # numpy's read_array allocates the array its header declares before reading any data:
    # a few hundred bytes declaring a 1 GiB shape would cost 1 GiB. The header is read first
    # and must declare exactly the bytes the member holds.
    try:
        version = np.lib.format.read_magic(stream)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ValueError(f".npy format version {version[0]}.{version[1]}, which nnx never "
                             "writes")
        shape, _, dtype = read_header(stream)
    except Exception as exc:  # noqa: BLE001 - a malformed header raises several types
        raise ModelFileError(path, f"the member {member!r} is not a plain .npy array "
                                   f"({exc}).") from None
    if not dtype.hasobject:  # an object array is refused by read_array, unread
        need, have = math.prod(shape) * dtype.itemsize, len(data) - stream.tell()
        if have < need:
            raise ModelFileError(path, f"the member {member!r} declares a {dtype} array of "
                                       f"shape {shape} ({need} bytes) but holds {have} bytes; "
                                       "the file is truncated or corrupted.")
        if have > need:
            raise ModelFileError(path, f"the member {member!r} has {have - need} bytes after "
                                       "its array; the file is corrupted.")
    stream.seek(0)
    try:
        array = np.lib.format.read_array(stream, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - a malformed header raises several types
        raise ModelFileError(path, f"the member {member!r} is not a plain .npy array "
                                   f"({exc}).") from None
    if stream.tell() != len(data):
        raise ModelFileError(path, f"the member {member!r} has {len(data) - stream.tell()} "
                                   "bytes after its array; the file is corrupted.")
    return array


def _check_metadata(raw: np.ndarray | None, path: str) -> tuple[dict[str, Any], str, int]:
    """``(config, dtype, epochs_trained)`` from the metadata member, each checked."""
    if raw is None:
        raise ModelFileError(path, f"it holds no {METADATA!r} member, so it is not a model "
                                   "written by model.save().")
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ModelFileError(path, f"the {METADATA!r} member must be a 1-D uint8 array of JSON "
                                   f"text; received {raw.dtype} shape {raw.shape}.")
    try:
        metadata = json.loads(raw.tobytes().decode("utf-8"))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise ModelFileError(path, f"the metadata is not valid JSON ({exc}).") from None
    except RecursionError:
        raise ModelFileError(path, "the metadata is nested too deeply to be a model's.") from None
    if not isinstance(metadata, dict):
        raise ModelFileError(path, "the metadata is not a JSON object.")
    if metadata.get("format") != FORMAT_NAME:
        raise ModelFileError(path, f"format={metadata.get('format')!r}; expected "
                                   f"{FORMAT_NAME!r}. It is not an nnx model file.")
    version = metadata.get("format_version")
    if not _is_count(version) or version < 1:
        raise ModelFileError(path, f"format_version={version!r}; expected an integer >= 1.")
    if version > FORMAT_VERSION:
        from nnx import __version__

        raise ModelFileError(
            path, f"it was written by a newer nnx ({metadata.get('nnx_version')}, format "
                  f"version {version}); nnx {__version__} reads format versions up to "
                  f"{FORMAT_VERSION}. Upgrade nnx: pip install -U nnx-arrays.")
    config = metadata.get("config")
    if not isinstance(config, dict):
        raise ModelFileError(path, f"config={config!r}; expected a JSON object (the "
                                   "architecture from model.get_config()).")
    dtype = metadata.get("dtype")
    if dtype not in DTYPES or config.get("dtype") != dtype:
        raise ModelFileError(path, f"dtype={dtype!r} (config dtype={config.get('dtype')!r}); "
                                   "expected the same 'float32' or 'float64' in both.")
    epochs = metadata.get("epochs_trained")
    if not _is_count(epochs) or epochs < 0:
        raise ModelFileError(path, f"epochs_trained={epochs!r}; expected an integer >= 0.")
    for key, kinds in (("classes", (str, int, float, bool)), ("feature_names", (str,))):
        if key in metadata:
            value = metadata[key]
            if not isinstance(value, list) or not all(isinstance(v, kinds) for v in value) \
                    or len(value) > 1_000_000:
                raise ModelFileError(path, f"{key} must be a list of "
                                           f"{'/'.join(k.__name__ for k in kinds)}; received "
                                           f"{str(value)[:80]}.")
            config = {**config, key: value}
    return config, dtype, epochs


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _layer_spec(spec: Any) -> tuple[str, dict[str, Any]] | None:
    """``(type, config)`` of a layer entry of format 2 (``{"type", "config"}``) or 1 (a Dense
    layer's settings)."""
    if not isinstance(spec, dict):
        return None
    if "type" in spec:
        return (spec["type"], spec.get("config")) if isinstance(spec.get("config"),
                                                                dict) else None
    return "Dense", spec


def _parameter_shapes(config: dict[str, Any], path: str) -> dict[str, tuple[int, ...]]:
    """``{'layers.0.W': (n_in, n_out), 'layers.0.b': (n_out,), ...}`` from the config, in the
    order of ``get_weights``; checked before any array is trusted."""
    layers = config.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ModelFileError(path, f"the architecture has layers={str(layers)[:80]}; expected "
                                   "a non-empty list.")
    if len(layers) > MAX_LAYERS:
        raise ModelFileError(path, f"the architecture lists {len(layers)} layers; nnx loads at "
                                   f"most {MAX_LAYERS}.")
    shapes: dict[str, Any] = {}
    for i, spec in enumerate(layers):
        parsed = _layer_spec(spec)
        if parsed is None or parsed[0] not in LAYERS:
            raise ModelFileError(path, f"layer {i} of the architecture is {str(spec)[:200]}; "
                                       "expected {'type': one of "
                                       f"{sorted(LAYERS)}, 'config': {{...}}}}.")
        layer_shapes = LAYERS[parsed[0]].param_shapes(parsed[1])
        sizes = [d for shape in layer_shapes.values() for d in shape]
        if not all(_is_count(size) and 1 <= size <= 2**31 for size in sizes):
            raise ModelFileError(path, f"layer {i} of the architecture is {str(spec)[:200]}; "
                                       "expected integer sizes n_in >= 1 and n_out >= 1.")
        for name, shape in layer_shapes.items():
            shapes[f"layers.{i}.{name}"] = tuple(shape)
    return shapes


def _check_parameter(array: np.ndarray, name: str, shape: tuple[int, ...], dtype: str,
                     path: str) -> None:
    # Either byte order is fine: astype() on loading makes it native.
    same_type = array.dtype.kind == "f" and array.dtype.itemsize == np.dtype(dtype).itemsize
    if array.shape != shape or not same_type:
        raise ModelFileError(path, f"the array {name!r} is {array.dtype} shape {array.shape}; "
                                   f"the architecture needs {dtype} shape {shape}.")
    if not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ModelFileError(path, f"the array {name!r} holds {bad} NaN or inf value"
                                   f"{'s' if bad > 1 else ''}; the file is corrupted.")

