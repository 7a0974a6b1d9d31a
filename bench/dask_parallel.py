"""Per-step overhead of nnx.dask.fit_parallel for a model of about 9 MB, on a LocalCluster.

A step's overhead is its time on the cluster less the time of the same step's computation in
one process (the gradient of one worker's shard and the update, no communication). The
cluster's per-step time is the slope between a short and a long run, so the start-up (model
and shards sent, the process group joined) does not count. Run from the repository root:

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python bench/dask_parallel.py --workers 2

(dask's workers run one BLAS thread each; the single-process reference then does too.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def network(dtype):
    import nnx

    # 64 -> 1024 -> 2048 -> 10: 2.19 M parameters, 8.8 MB in float32.
    return nnx.Sequential([nnx.Dense(64, 1024, activation="tanh"),
                           nnx.Dense(1024, 2048, activation="tanh"),
                           nnx.Dense(2048, 10, activation="softmax")],
                          dtype=dtype, seed=0, backend="numpy")


def local_step_seconds(X, y, dtype, steps):
    """One worker's share of a step in one process: its gradient sum and the update."""
    from nnx.dask._parallel import _local_sum, _step

    model = network(dtype)
    model.set_optimizer("sgd", lr=0.01)
    shards = [model.encode(X, y)]
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        total = _local_sum(model, shards)
        _step(model, total, float(X.shape[0]))
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def allreduce_ms(rank, world, host, port, size, dtype, reps):
    """The all-reduce alone, as fit_parallel calls it: gloo on a NumPy buffer of `size`."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://{host}:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=60))
    try:
        buf = np.ones(size, dtype=dtype)
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            dist.all_reduce(torch.from_numpy(buf))
            times.append(time.perf_counter() - start)
    finally:
        dist.destroy_process_group()
    return 1e3 * statistics.median(times[2:])


def phases_ms(key, model, xs, ys, world, host, port, steps):
    """fit_parallel's collective loop on one worker, each phase timed: the local gradient
    sum, the all-reduce (with the host round trip), the update."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from nnx.dask._parallel import _STATE, _local_sum, _prepare, _step

    n = _prepare(key, model, xs, ys) * world
    state = _STATE.pop(key)
    replica, shards = state["model"], state["shards"]
    dist.init_process_group("gloo", init_method=f"tcp://{host}:{port}", rank=key[1],
                            world_size=world, timeout=timedelta(seconds=60))
    phases = {"gradient": [], "allreduce": [], "update": []}
    try:
        for _ in range(steps):
            t0 = time.perf_counter()
            flat = _local_sum(replica, shards)
            t1 = time.perf_counter()
            host_flat = np.require(flat, requirements="CA")
            dist.all_reduce(torch.from_numpy(host_flat))
            total = replica.backend.asarray(host_flat)
            t2 = time.perf_counter()
            _step(replica, total, float(n))
            t3 = time.perf_counter()
            for name, t in zip(phases, (t1 - t0, t2 - t1, t3 - t2)):
                phases[name].append(t)
    finally:
        dist.destroy_process_group()
    return {name: round(1e3 * statistics.median(v[2:]), 2) for name, v in phases.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=256, help="rows per worker")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--short", type=int, default=5)
    parser.add_argument("--long", type=int, default=45)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    import dask.array as da
    from distributed import Client, LocalCluster

    import nnx.dask as nd

    rng = np.random.default_rng(0)
    n = args.rows * args.workers
    X = rng.standard_normal((n, 64)).astype(args.dtype)
    y = rng.integers(0, 10, size=n)
    model_mb = sum(w.nbytes for w in network(args.dtype).get_weights()) / 1e6
    local = local_step_seconds(X[:args.rows], y[:args.rows], args.dtype, 12)
    cluster = LocalCluster(n_workers=args.workers, processes=True, threads_per_worker=1,
                           host="127.0.0.1", dashboard_address=":0")
    client = Client(cluster)
    try:
        Xd = da.from_array(X, chunks=(args.rows, 64)).persist()
        yd = da.from_array(y, chunks=(args.rows,)).persist()
        placement = nd.shard_placement(client, Xd)
        results = {"model_mb": round(model_mb, 2), "workers": args.workers,
                   "rows_per_worker": args.rows, "dtype": args.dtype,
                   "placement_blocks": sorted(len(v) for v in placement.values()),
                   "local_step_ms": round(1e3 * local, 2)}
        from distributed.comm import get_address_host

        from nnx.dask._parallel import _free_port

        workers = sorted(placement)
        port = client.submit(_free_port, workers=[workers[0]], pure=False).result()
        size = sum(int(np.prod(w.shape)) for w in network(args.dtype).get_weights()) + 1
        results["allreduce_ms"] = [round(t, 2) for t in client.gather([
            client.submit(allreduce_ms, rank, len(workers), get_address_host(workers[0]),
                          port, size, args.dtype, 30, workers=[w], pure=False)
            for rank, w in enumerate(workers)])]
        from distributed import futures_of

        trial = network(args.dtype)
        trial.set_optimizer("sgd", lr=0.01)
        shared = client.scatter(trial, workers=workers, broadcast=True, hash=False)
        xf = {f.key: f for f in futures_of(Xd)}
        yf = {f.key: f for f in futures_of(yd)}
        xk = [k for row in Xd.__dask_keys__() for k in row]
        yk = list(yd.__dask_keys__())
        port = client.submit(_free_port, workers=[workers[0]], pure=False).result()
        results["in_worker_phases_ms"] = client.gather([
            client.submit(phases_ms, ("bench", rank), shared,
                          [xf[xk[i]] for i in placement[w]], [yf[yk[i]] for i in placement[w]],
                          len(workers), get_address_host(workers[0]), port, 20,
                          workers=[w], pure=False)
            for rank, w in enumerate(workers)])
        for reduction in ("collective", "client"):
            slopes = []
            for _ in range(args.repeat):
                timings = {}
                for steps in (args.short, args.long):
                    model = network(args.dtype)
                    start = time.perf_counter()
                    nd.fit_parallel(model, Xd, yd, client=client, epochs=steps, lr=0.01,
                                    reduction=reduction)
                    timings[steps] = time.perf_counter() - start
                slopes.append((timings[args.long] - timings[args.short])
                              / (args.long - args.short))
            step = statistics.median(slopes)
            results[f"{reduction}_step_ms"] = round(1e3 * step, 2)
            results[f"{reduction}_overhead_ms"] = round(1e3 * (step - local), 2)
            results[f"{reduction}_step_ms_all"] = [round(1e3 * s, 2) for s in slopes]
        print(json.dumps(results))
    finally:
        client.close()
        cluster.close()


if __name__ == "__main__":
    main()
