"""Peak memory of nnx.dask on a .npy file larger than its blocks: predict and streaming fit.

Each measurement runs in a fresh process and reports its peak resident set (``VmHWM``,
which counts the file's pages while they are mapped) beside the RSS after the imports, so
that what the data adds is visible. Run from the repository root:

    python bench/dask_memory.py --gb 0.5 1.0 --fit-gb 0.25 --dir /tmp

``--naive`` adds ``da.from_array(np.load(path, mmap_mode="r"))``, the way that hashes (and in
dask 2026.x copies) the whole memmap (dask #11850), and ``--load`` loading the whole file
first (``model.predict(np.load(path))``), for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

N_IN, HIDDEN, N_OUT = 64, 256, 10


def rss_mb() -> float:
    """This process's peak RSS (VmHWM: reset by exec, unlike ru_maxrss, which a child
    inherits from the parent that wrote the files)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_files(directory: str, gb: float) -> tuple[str, str]:
    """X (float32, 64 features) and integer labels, written in pieces."""
    rows = int(gb * 2**30 / (4 * N_IN))
    x_path = os.path.join(directory, f"nnx-dask-X-{gb:g}GB.npy")
    y_path = os.path.join(directory, f"nnx-dask-y-{gb:g}GB.npy")
    if not (os.path.exists(x_path) and np.load(x_path, mmap_mode="r").shape[0] == rows):
        rng = np.random.default_rng(0)
        X = np.lib.format.open_memmap(x_path, mode="w+", dtype=np.float32, shape=(rows, N_IN))
        y = np.lib.format.open_memmap(y_path, mode="w+", dtype=np.int64, shape=(rows,))
        step = 1 << 18
        for start in range(0, rows, step):
            part = rng.standard_normal((min(step, rows - start), N_IN), dtype=np.float32)
            X[start:start + len(part)] = part
            y[start:start + len(part)] = (part[:, 0] > 0) + (part[:, 1] > 0)
        X.flush()
        y.flush()
        del X, y
    return x_path, y_path


def model():
    import nnx

    return nnx.Sequential([nnx.Dense(N_IN, HIDDEN, activation="tanh"),
                           nnx.Dense(HIDDEN, N_OUT, activation="softmax")],
                          seed=0, backend="numpy")


def child(kind: str, x_path: str, y_path: str, chunk_rows: int) -> dict:
    import dask.array as da

    import nnx.dask as nd

    net = model()
    base = rss_mb()
    start = time.perf_counter()
    if kind == "naive":
        X = da.from_array(np.load(x_path, mmap_mode="r"), chunks=(chunk_rows, N_IN))
    elif kind == "load":
        X = np.load(x_path)
    else:
        X = nd.read_npy(x_path, chunk_rows=chunk_rows)
    graph_s = time.perf_counter() - start
    first = np.array(np.load(x_path, mmap_mode="r")[:1000])
    if kind == "load":
        labels = net.predict(X)
        check = bool(np.array_equal(labels[:1000], net.predict(first)))
        extra = {"rows": int(labels.shape[0])}
    elif kind in ("predict", "naive"):
        labels = nd.predict(net, X).compute()
        check = bool(np.array_equal(labels[:1000], net.predict(first)))
        extra = {"rows": int(labels.shape[0])}
    elif kind == "predict-sum":
        total = int(nd.predict(net, X).sum().compute())
        check = total >= 0
        extra = {}
    else:  # fit
        y = nd.read_npy(y_path, chunk_rows=chunk_rows)
        history = nd.fit(net, X, y, epochs=1, lr=0.05, batch_size=256)
        check = bool(np.isfinite(history["loss"][0]))
        extra = {"loss": history["loss"][0], "accuracy": history["accuracy"][0]}
    return {"kind": kind, "rss_after_imports_mb": round(base, 1),
            "peak_rss_mb": round(rss_mb(), 1), "graph_s": round(graph_s, 3),
            "seconds": round(time.perf_counter() - start, 2), "answer_checked": check,
            "file_gb": round(os.path.getsize(x_path) / 2**30, 3), "chunk_rows": chunk_rows,
            **extra}


def run_child(kind: str, x_path: str, y_path: str, chunk_rows: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, x_path, y_path,
                          str(chunk_rows)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, nargs="+", default=[0.5, 1.0])
    parser.add_argument("--fit-gb", type=float, default=0.25)
    parser.add_argument("--dir", default="/tmp")
    parser.add_argument("--chunk-mb", type=float, default=32.0, help="block size for predict")
    parser.add_argument("--fit-chunk-mb", type=float, default=16.0, help="block size for fit")
    parser.add_argument("--naive", action="store_true")
    parser.add_argument("--load", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the data files")
    parser.add_argument("--child", nargs=4, metavar=("KIND", "X", "Y", "ROWS"))
    args = parser.parse_args()
    if args.child:
        kind, x_path, y_path, rows = args.child
        print(json.dumps(child(kind, x_path, y_path, int(rows))))
        return
    rows_of = lambda mb: int(mb * 2**20 / (4 * N_IN))  # noqa: E731
    made = []
    results = []
    for gb in args.gb:
        x_path, y_path = make_files(args.dir, gb)
        made += [x_path, y_path]
        kinds = (["predict", "predict-sum"] + (["naive"] if args.naive else [])
                 + (["load"] if args.load else []))
        for kind in kinds:
            results.append(run_child(kind, x_path, y_path, rows_of(args.chunk_mb)))
            print(json.dumps(results[-1]), flush=True)
    x_path, y_path = make_files(args.dir, args.fit_gb)
    made += [x_path, y_path]
    results.append(run_child("fit", x_path, y_path, rows_of(args.fit_chunk_mb)))
    print(json.dumps(results[-1]), flush=True)
    if not args.keep:
        for path in set(made):
            os.remove(path)


if __name__ == "__main__":
    main()
