"""nnx on Dask: predict, evaluate and train on dask arrays that outgrow memory or one machine.

``pip install 'nnx-arrays[dask]'``. ``import nnx`` never imports dask; this package does.

- :func:`read_npy`, :func:`read_zarr`, :func:`read_array`: files as dask arrays whose tasks
  each read their own rows (nothing is copied or hashed when the graph is built).
- :func:`predict`, :func:`predict_proba`, :func:`evaluate`: lazily by row blocks, with the
  model in the graph once.
- :func:`fit`: training that streams the row blocks (the next block read while the current
  one trains), on the core's epoch loop.
- :func:`fit_parallel`: data-parallel full-batch training on a ``dask.distributed`` cluster,
  each worker on the blocks it holds, gradients combined by a torch.distributed all-reduce
  (or through the client).
"""

from __future__ import annotations

try:
    import dask.array  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without dask
    from nnx.errors import MissingDependencyError

    raise MissingDependencyError(
        f"nnx.dask needs dask[array]: pip install 'nnx-arrays[dask]' ({exc}).") from None

from nnx.dask._io import read_array, read_npy, read_zarr
from nnx.dask._parallel import fit_parallel, shard_placement
from nnx.dask._predict import evaluate, predict, predict_proba
from nnx.dask._stream import fit

__all__ = ["evaluate", "fit", "fit_parallel", "predict", "predict_proba", "read_array",
           "read_npy", "read_zarr", "shard_placement"]
