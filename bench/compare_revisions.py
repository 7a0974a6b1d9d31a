"""Time nnx's training step in two source trees side by side, interleaved, and print the
ratios (second / first): ``python bench/compare_revisions.py OLD_TREE NEW_TREE [ROUNDS]``.

Each round runs one fresh process per tree (alternating which goes first), each timing
``train_step`` on three networks (moons 2-3-2 float64 with L2; 64-256-256-10 and
64-1024-1024-10 float32, batch 4096) as the best of 5 repeats; the ratios' median and
quartiles over the rounds are printed. Made to compare a revision with the one before a
restructuring (``git worktree add /tmp/old REV``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

STEP = r'''
import json, time
import numpy as np
import nnx

def encode(model, X, y):
    if hasattr(model, "encode"):
        return model.encode(X, y)
    Xd = model._as_X(X, "bench")  # nnx 0.1.0
    return Xd, model._as_y(y, Xd.shape[0], "bench")[0]

def step_time(sizes, n, dtype, reps, l2):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(n, sizes[0])), rng.integers(0, sizes[-1], n)
    layers = [nnx.Dense(a, b, "tanh") for a, b in zip(sizes[:-2], sizes[1:-1])]
    model = nnx.Sequential(layers + [nnx.Dense(sizes[-2], sizes[-1], "softmax")],
                           dtype=dtype, l2=l2, seed=0)
    model.fit(X, y, epochs=1, lr=0.1)
    Xd, Yd = encode(model, X, y)
    for _ in range(3):
        model.train_step(Xd, Yd)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(reps):
            model.train_step(Xd, Yd)
        best = min(best, (time.perf_counter() - start) / reps)
    return best

print(json.dumps({"moons": step_time([2, 3, 2], 200, "float64", 500, 0.01),
                  "wide256": step_time([64, 256, 256, 10], 4096, "float32", 10, 0.0),
                  "wide1024": step_time([64, 1024, 1024, 10], 4096, "float32", 3, 0.0)}))
'''


def run(tree: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
    result = subprocess.run([sys.executable, "-c", STEP], env=env, capture_output=True,
                            text=True, cwd=os.path.abspath(tree), check=True)
    return json.loads(result.stdout)


def main(argv: list[str]) -> int:
    old, new = argv[0], argv[1]
    rounds = int(argv[2]) if len(argv) > 2 else 9
    ratios: dict[str, list[float]] = {}
    for i in range(rounds):
        order = [("old", old), ("new", new)][:: 1 if i % 2 == 0 else -1]
        times = {name: run(tree) for name, tree in order}
        for key in times["old"]:
            ratios.setdefault(key, []).append(times["new"][key] / times["old"][key])
        print(i, {k: round(v[-1], 3) for k, v in ratios.items()}, flush=True)
    for key, values in ratios.items():
        q1, _, q3 = statistics.quantiles(values, n=4)
        print(f"{key}: new/old step time median {statistics.median(values):.3f} "
              f"(quartiles {q1:.3f}-{q3:.3f}) over {len(values)} interleaved rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
