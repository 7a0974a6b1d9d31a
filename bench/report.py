"""Run the benchmarks in ``bench/`` and summarise them at a glance.

    python bench/report.py --quick        # from a checkout; or: nox -s bench -- --quick
    nnx bench --quick                     # the same, from a checkout's root

The benchmarks and this script live in the source tree, not in the installed package (nothing
of them ships in the wheel). ``nnx bench`` loads this file by its path (``bench/report.py``,
or ``--bench-dir DIR``) and calls :func:`main` with ``--bench-dir``; so this module imports
nothing of its own folder.

The measuring lives in ``bench/test_bench_*.py`` (pytest-benchmark); :func:`main` runs it
through pytest, which writes its JSON, and then turns that JSON into tables
(:func:`render_report`) and a plot (:func:`plot_core`). The reporting functions take the JSON
as a dict and do no measuring, so they are tested on a small fake one
(``bench/test_bench_report.py``) and can re-render any saved run (``--report-only --out DIR``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

TRAIN_ORDER = ("numpy-matmuls", "numpy-hand", "torch-matmuls", "torch-hand", "torch-autograd",
               "sklearn", "nnx-numpy", "nnx-torch", "cupy-matmuls", "cupy-hand", "nnx-cupy",
               "torch-cuda-matmuls", "torch-hand-cuda", "nnx-torch-cuda")
# The targets.
CEILING_SHARE = 0.90  # nnx's Dense core vs the raw matmuls, for H >= CEILING_FROM_H
CEILING_FROM_H = 256
WIDE_RATIO = 1.10  # nnx step vs the hand-written NumPy (and torch) step
MOONS_RATIO = 1.5
GPU_STEP_RATIO = 1.25  # nnx's CuPy step vs its matmuls, for H >= GPU_STEP_FROM_H (wide)
GPU_STEP_FROM_H = 1024
# The training step's ratio columns; the GPU ones appear only in runs that measured them.
PEERS = ("numpy-hand", "torch-hand", "sklearn", "cupy-hand", "torch-hand-cuda")
CPU_PEERS = PEERS[:3]

JSON_NAME = "bench.json"
REPORT_NAME = "bench.md"
PLOT_NAME = "core_gflops.png"


# -- from JSON to rows ------------------------------------------------------------------------
def _order(value: str, order: tuple[str, ...]) -> int:
    return order.index(value) if value in order else len(order)


def _backend_rank(backend_id: str, nnx_backend: str, device_kind: str) -> tuple:
    """Where a target's rows go: the CPU ones before the GPU ones, each in the order of
    nnx's backend registry (numpy, torch, array_api_strict on the CPU), then by id."""
    try:
        from nnx.backends import BACKENDS
    except ImportError:  # re-rendering a saved run without nnx installed
        BACKENDS = ()
    return (device_kind != "cpu", _order(nnx_backend, tuple(BACKENDS)), backend_id)


def own_matmuls(impl: str) -> str | None:
    """Each nnx training step's own ceiling, the step's matrix products alone on its target:
    ``numpy-matmuls`` for ``nnx-numpy``, ``torch-cuda-matmuls`` for ``nnx-torch-cuda``."""
    return f"{impl.removeprefix('nnx-')}-matmuls" if impl.startswith("nnx-") else None


def core_rows(data: dict[str, Any], stat: str = "min") -> list[dict[str, Any]]:
    """One row per (backend, dtype, hidden size) of the Dense-core benchmark.

    Each row has the nnx and raw-matmul times (the `stat` of the rounds, in seconds), their
    GFLOP/s, ``share`` (raw time / nnx time: the fraction of the ceiling nnx reaches; the
    median over interleaved pairs of calls where the run made them, else the ratio of the two
    separate benchmarks, kept as ``share_separate``) and ``vs_numpy`` (GFLOP/s over NumPy's at
    the same dtype and size; None without NumPy).
    """
    table: dict[tuple, dict[str, Any]] = {}
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if info.get("kind") != "core" or not bench.get("stats"):
            continue
        key = (info["backend"], info["dtype"], int(info["hidden"]))
        row = table.setdefault(key, {
            "backend": info["backend"], "dtype": info["dtype"], "hidden": int(info["hidden"]),
            "batch": int(info["batch"]), "flops": float(info["flops"]),
            "device_kind": info.get("device_kind", "cpu"),
            "nnx_backend": info.get("nnx_backend", info.get("library", "")),
            "device_name": info.get("device_name", ""), "tf32": bool(info.get("tf32", False)),
            "nnx_s": None, "raw_s": None,
        })
        row[f"{info['impl']}_s"] = float(bench["stats"][stat])
        if "paired_share_median" in info:
            row["paired"] = float(info["paired_share_median"])
            row["spread"] = (float(info["paired_share_q1"]), float(info["paired_share_q3"]))
    rows = []
    for row in table.values():
        flops = row["flops"]
        row["nnx_gflops"] = flops / row["nnx_s"] / 1e9 if row["nnx_s"] else None
        row["raw_gflops"] = flops / row["raw_s"] / 1e9 if row["raw_s"] else None
        separate = row["raw_s"] / row["nnx_s"] if row["nnx_s"] and row["raw_s"] else None
        # Interleaved calls where they were made: benchmarks timed one after the other
        # compare two states of a shared machine as much as two pieces of code.
        row["share"] = row.pop("paired", separate)
        row["share_separate"] = separate
        row.setdefault("spread", None)
        rows.append(row)
    numpy_gflops = {(r["dtype"], r["hidden"]): r["nnx_gflops"] for r in rows
                    if r["backend"] == "numpy"}
    for row in rows:
        base = numpy_gflops.get((row["dtype"], row["hidden"]))
        row["vs_numpy"] = row["nnx_gflops"] / base if base and row["nnx_gflops"] else None
    rows.sort(key=lambda r: (r["dtype"], _backend_rank(r["backend"], r["nnx_backend"],
                                                       r["device_kind"]), r["hidden"]))
    return rows


def crossover(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Per dtype: the hidden size from which the fastest GPU backend beats the fastest CPU
    backend at every larger measured size (nnx's Dense core, GFLOP/s)."""
    if not any(r["device_kind"] == "gpu" for r in rows):
        return {"all": "no GPU in this run"}
    out = {}
    for dtype in sorted({r["dtype"] for r in rows}):
        best: dict[int, dict[str, float]] = {}
        for r in rows:
            if r["dtype"] == dtype and r["nnx_gflops"]:
                side = best.setdefault(r["hidden"], {})
                side[r["device_kind"]] = max(side.get(r["device_kind"], 0.0), r["nnx_gflops"])
        sizes = sorted(h for h, side in best.items() if {"cpu", "gpu"} <= set(side))
        if not sizes:
            out[dtype] = "no size measured on both a CPU and a GPU backend"
            continue
        wins = [best[h]["gpu"] > best[h]["cpu"] for h in sizes]
        if not wins[-1]:
            out[dtype] = f"the GPU did not beat the CPU at the largest size (H={sizes[-1]})"
            continue
        first = len(wins)
        while first > 0 and wins[first - 1]:
            first -= 1
        out[dtype] = f"H >= {sizes[first]}"
    return out


def train_rows(data: dict[str, Any], stat: str = "min") -> list[dict[str, Any]]:
    """One row per (network, implementation) of the training-step benchmark, with the time
    and its ratio to the hand-written NumPy step, the hand-written torch step and
    scikit-learn's epoch on the same network (None where that peer did not run). A ratio is
    the median over interleaved pairs of steps where the run made them (nnx against its
    peers), else the ratio of the two separately timed benchmarks."""
    rows = []
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if info.get("kind") != "train" or not bench.get("stats"):
            continue
        rows.append({"config": info["config"], "impl": info["impl"], "dtype": info["dtype"],
                     "batch": int(info["batch"]), "sizes": info.get("sizes"),
                     "what": info.get("what", ""), "time_s": float(bench["stats"][stat]),
                     "paired": {key[len("paired_vs_"):-len("_median")]: float(value)
                                for key, value in info.items()
                                if key.startswith("paired_vs_") and key.endswith("_median")}})
    times = {(r["config"], r["impl"]): r["time_s"] for r in rows}
    for row in rows:
        paired = row.pop("paired")
        own = own_matmuls(row["impl"])
        for column, peer in [*((p, p) for p in PEERS), ("matmuls", own)]:
            base = times.get((row["config"], peer))
            row[f"vs_{column}"] = paired.get(peer, row["time_s"] / base if base else None)
    rows.sort(key=lambda r: (_config_key(r["config"]), _order(r["impl"], TRAIN_ORDER)))
    return rows


def _config_key(name: str) -> tuple[int, int]:
    if name == "moons":
        return (0, 0)
    digits = "".join(ch for ch in name.rsplit("H", 1)[-1] if ch.isdigit())
    return (1, int(digits) if digits else 0)


def targets(core: list[dict[str, Any]], train: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """The issue's targets as ``(target, verdict, detail)``; verdict is ``met``, ``MISSED`` or
    ``not measured``."""
    out = []

    big = [r for r in core if r["hidden"] >= CEILING_FROM_H and r["share"] is not None]
    low = [r for r in big if r["share"] < CEILING_SHARE]
    detail = ", ".join(f"{r['backend']} {r['dtype']} H={r['hidden']}: {r['share']:.0%}"
                       for r in low)
    if big:
        worst = min(big, key=lambda r: r["share"])
        detail = detail or (f"lowest: {worst['backend']} {worst['dtype']} H={worst['hidden']} "
                            f"{worst['share']:.0%}")
    out.append((f"Dense core >= {CEILING_SHARE:.0%} of the raw matmul ceiling for "
                f"H >= {CEILING_FROM_H}, every backend",
                _verdict(big, low), detail))

    def ratio_target(title, impl, peer, limit_for):
        rows = [r for r in train if r["impl"] == impl and r[f"vs_{peer}"] is not None]
        bad = [r for r in rows if r[f"vs_{peer}"] > limit_for(r["config"])]
        detail = ", ".join(f"{r['config']}: {r[f'vs_{peer}']:.2f}x "
                           f"(limit {limit_for(r['config']):.2f}x)" for r in rows)
        out.append((title, _verdict(rows, bad), detail))

    ratio_target(f"nnx step <= {WIDE_RATIO:.2f}x hand-written NumPy (wide), "
                 f"<= {MOONS_RATIO:.1f}x (moons)", "nnx-numpy", "numpy-hand",
                 lambda c: MOONS_RATIO if c == "moons" else WIDE_RATIO)
    ratio_target("nnx faster per epoch than scikit-learn MLPClassifier (nnx-numpy)",
                 "nnx-numpy", "sklearn", lambda c: 1.0)
    ratio_target(f"NNX_BACKEND=torch: nnx step <= {WIDE_RATIO:.2f}x hand-written torch step",
                 "nnx-torch", "torch-hand", lambda c: WIDE_RATIO)
    wide_big = [r for r in train if r["config"] != "moons"
                and _config_key(r["config"])[1] >= GPU_STEP_FROM_H]
    gpu = [r for r in wide_big if r["impl"] == "nnx-cupy" and r["vs_matmuls"] is not None]
    bad = [r for r in gpu if r["vs_matmuls"] > GPU_STEP_RATIO]
    out.append((f"NNX_BACKEND=cupy: nnx step <= {GPU_STEP_RATIO:.2f}x its raw cupy.matmul "
                f"calls for H >= {GPU_STEP_FROM_H}", _verdict(gpu, bad),
                ", ".join(f"{r['config']}: {r['vs_matmuls']:.2f}x" for r in gpu)))
    return out


def _verdict(rows: list[Any], bad: list[Any]) -> str:
    if not rows:
        return "not measured"
    return "MISSED" if bad else "met"


# -- rows to text -----------------------------------------------------------------------------
def format_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, fmt)


def _table(header: list[str], body: list[list[str]], left: int) -> str:
    """A Markdown table that also reads as plain text: the first `left` columns (names)
    aligned left, the numbers right."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *body)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) if i < left else str(c).rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i >= left else "-")
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule] + [line(row) for row in body])


def _share(row: dict[str, Any]) -> str:
    """``96%``, or ``96% (93-99)`` with the quartiles of the interleaved pairs."""
    if row["share"] is None:
        return "-"
    if row["spread"] is None:
        return f"{row['share']:.0%}"
    low, high = row["spread"]
    return f"{row['share']:.0%} ({100 * low:.0f}-{100 * high:.0f})"


def format_core_table(rows: list[dict[str, Any]]) -> str:
    header = ["backend", "dtype", "H", "batch", "nnx time", "nnx GFLOP/s", "raw GFLOP/s",
              "% of ceiling", "x NumPy"]
    body = [[r["backend"] + (" (TF32)" if r["tf32"] else ""), r["dtype"], str(r["hidden"]),
             str(r["batch"]), format_time(r["nnx_s"]), _num(r["nnx_gflops"], ".1f"),
             _num(r["raw_gflops"], ".1f"),
             _share(r),
             "-" if r["vs_numpy"] is None else f"{r['vs_numpy']:.2f}x"] for r in rows]
    return _table(header, body, left=2)


def format_train_table(rows: list[dict[str, Any]]) -> str:
    measured = {r["impl"] for r in rows}
    peers = [p for p in PEERS if p in CPU_PEERS or p in measured]
    columns = [*peers, "matmuls"]
    header = ["network", "implementation", "dtype", "batch", "time / step",
              *(f"x {p}" for p in peers), "x own matmuls"]
    body = [[r["config"], r["impl"], r["dtype"], str(r["batch"]), format_time(r["time_s"]),
             *("-" if r[f"vs_{c}"] is None else f"{r[f'vs_{c}']:.2f}" for c in columns)]
            for r in rows]
    return _table(header, body, left=3)


def _machine(data: dict[str, Any]) -> str:
    machine = data.get("machine_info", {})
    cpu = machine.get("cpu", {})
    infos = [b.get("extra_info", {}) for b in data.get("benchmarks", [])]
    devices = sorted({f"{i['backend']}: {i['device_name']}"
                      + (f" (CUDA runtime {i['cuda_runtime']})" if "cuda_runtime" in i else "")
                      for i in infos if i.get("device_kind") == "gpu" and "device_name" in i})
    libraries = sorted({f"{i['library']} {i['library_version']}" for i in infos
                        if "library" in i and "library_version" in i})
    threads = sorted({str(i["blas_threads"]) for i in infos if "blas_threads" in i})
    parts = [f"CPU: {cpu.get('brand_raw', machine.get('machine', '?'))} "
             f"({cpu.get('count', '?')} cores)",
             "GPU: " + ("; ".join(devices) if devices else "none used"),
             "libraries: " + ", ".join(libraries),
             "threads (BLAS/OpenMP pools): " + ("; ".join(threads) if threads else "unknown"),
             f"date: {data.get('datetime', '?')}"]
    return "\n".join(f"- {p}" for p in parts)


def render_report(data: dict[str, Any], stat: str = "min") -> str:
    """The whole report as Markdown: machine, core table, crossover, training table, targets."""
    core, train = core_rows(data, stat), train_rows(data, stat)
    lines = ["# nnx benchmarks", "", _machine(data), "",
             f"Times are the {stat} over rounds (pytest-benchmark); "
             "ratios are time / peer time (below 1: faster). The share of the ceiling and "
             "nnx's ratios to its peers are medians over interleaved pairs of calls (nnx, "
             "peer, peer, nnx, ...), so that a drift of a shared machine's speed between two "
             "benchmarks does not enter them.", ""]
    if core:
        lines += ["## Dense core: x @ W + b and its backward for one H -> H layer",
                  "", "nnx = Dense.logits + Dense.backward(through_activation=False); raw = "
                  "3 xp.matmul + xp.sum on the same arrays (the ceiling). % of ceiling = raw "
                  "time / nnx time, median (and quartiles) over interleaved pairs of calls; "
                  "the GFLOP/s columns come from separate benchmarks and carry the machine's "
                  "drift between them. x NumPy = GFLOP/s over NumPy's nnx GFLOP/s.", "",
                  format_core_table(core), ""]
        for dtype, text in crossover(core).items():
            label = "GPU beats CPU" if dtype == "all" else f"GPU beats CPU ({dtype})"
            lines.append(f"- {label}: {text}")
        lines.append("")
    if train:
        lines += ["## Training step: forward, loss, backward, SGD update", "",
                  "x own matmuls = time over that of the step's matrix products alone on "
                  "the same backend (*-matmuls rows).", "", format_train_table(train), ""]
    lines += ["## Targets", ""]
    for title, verdict, detail in targets(core, train):
        lines.append(f"- **{verdict}**: {title}" + (f" ({detail})" if detail else ""))
    return "\n".join(lines) + "\n"


def plot_core(rows: list[dict[str, Any]], path: str | Path) -> Path | None:
    """GFLOP/s against hidden size, one line per backend and dtype (solid: nnx, dotted: the
    raw matmul ceiling). Returns the path, or None without matplotlib or rows."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if not rows:
        return None
    dtypes = sorted({r["dtype"] for r in rows})
    ranks = {r["backend"]: _backend_rank(r["backend"], r["nnx_backend"], r["device_kind"])
             for r in rows}
    backends = sorted(ranks, key=ranks.__getitem__)
    colours = {b: f"C{i}" for i, b in enumerate(backends)}
    fig, axes = plt.subplots(1, len(dtypes), figsize=(6 * len(dtypes), 4.5), squeeze=False,
                             sharey=True)
    for ax, dtype in zip(axes[0], dtypes):
        for backend in backends:
            mine = sorted((r for r in rows if r["backend"] == backend and r["dtype"] == dtype),
                          key=lambda r: r["hidden"])
            if not mine:
                continue
            hidden = [r["hidden"] for r in mine]
            ax.plot(hidden, [r["nnx_gflops"] or math.nan for r in mine], "o-",
                    color=colours[backend], label=f"{backend} nnx")
            ax.plot(hidden, [r["raw_gflops"] or math.nan for r in mine], ":",
                    color=colours[backend], alpha=0.8, label=f"{backend} raw matmul")
        sizes = sorted({r["hidden"] for r in rows if r["dtype"] == dtype})
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(h) for h in sizes])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_xlabel("hidden size H (layer H -> H)")
        others = sorted({(r["hidden"], r["batch"]) for r in rows
                         if r["dtype"] == dtype and r["batch"] != 4096})
        note = "\nbatch 4096" + (" (" + ", ".join(f"{b} at H={h}" for h, b in others) + ")"
                                 if others else "")
        ax.set_title(f"Dense forward + backward, {dtype}{note}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("GFLOP/s")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# -- running ----------------------------------------------------------------------------------
def _default_bench_dir() -> Path:
    """The folder of this file: the checkout's ``bench/``."""
    return Path(__file__).resolve().parent


def parse_args(argv: list[str] | None, prog: str = "nnx bench") -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run nnx's benchmarks (bench/, pytest-benchmark) and print a summary: "
                    "the Dense core against raw matmuls per backend and size, and the "
                    "training step against hand-written NumPy/torch and scikit-learn.",
        epilog="Arguments after -- go to pytest unchanged.")
    parser.add_argument("--quick", action="store_true",
                        help="a short sweep (core H 16, 256, 1024; wide network H=256).")
    parser.add_argument("--out", default=".benchmarks/nnx-bench", metavar="DIR",
                        help=f"where {JSON_NAME}, {REPORT_NAME} and {PLOT_NAME} go "
                             "(default: %(default)s).")
    parser.add_argument("--backends", metavar="IDS",
                        help="comma-separated target ids of nnx's backend registry, as "
                             "'nnx info' lists them: numpy, torch-cpu, strict-cpu, cupy, ... "
                             "(default: every one the benchmarks time; those not usable here "
                             "are skipped with the reason).")
    parser.add_argument("--hidden", metavar="SIZES", help="core sweep hidden sizes, e.g. "
                                                          "16,256,4096.")
    parser.add_argument("--train-hidden", metavar="SIZES",
                        help="hidden sizes of the wide training network, e.g. 256,1024.")
    parser.add_argument("--only", choices=("core", "train"), help="run one benchmark file.")
    parser.add_argument("--stat", choices=("min", "median", "mean"), default="min",
                        help="which statistic of the rounds the tables use (default: min, the "
                             "least disturbed by other load).")
    parser.add_argument("--max-time", type=float, default=0.5, metavar="SECONDS",
                        help="pytest-benchmark's --benchmark-max-time (default: %(default)s).")
    parser.add_argument("--min-rounds", type=int, default=3,
                        help="pytest-benchmark's --benchmark-min-rounds (default: %(default)s).")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="limit BLAS/OpenMP threads to N (steadier on a shared machine).")
    parser.add_argument("--report-only", action="store_true",
                        help=f"do not measure; re-render DIR/{JSON_NAME}.")
    parser.add_argument("--bench-dir", default=None, metavar="DIR",
                        help="the bench/ folder of an nnx checkout (default: the folder of "
                             "this script).")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    args.pytest_args = extra
    return args


def pytest_arguments(args: argparse.Namespace, bench_dir: Path, json_path: Path) -> list[str]:
    """The pytest command line that measures what `args` asks for."""
    files = {"core": ["test_bench_core.py"], "train": ["test_bench_train.py"]}.get(
        args.only, ["test_bench_core.py", "test_bench_train.py"])
    cmd = [str(bench_dir / name) for name in files]
    cmd += ["-q", "-p", "no:cacheprovider", "--benchmark-only", f"--benchmark-json={json_path}",
            f"--benchmark-max-time={args.max_time}", f"--benchmark-min-rounds={args.min_rounds}",
            "--benchmark-columns=min,median,rounds,iterations", "--benchmark-sort=name"]
    if args.quick:
        cmd.append("--bench-quick")
    for option, value in (("--bench-backends", args.backends), ("--bench-hidden", args.hidden),
                          ("--bench-train-hidden", args.train_hidden),
                          ("--bench-threads", args.threads)):
        if value is not None:
            cmd.append(f"{option}={value}")
    return cmd + args.pytest_args


def main(argv: list[str] | None = None, prog: str = "nnx bench") -> int:
    """Measure (unless ``--report-only``), then print and write the report and plot.

    Returns pytest's exit status (0 when every benchmark ran and checked its answer).
    """
    args = parse_args(argv, prog)
    out = Path(args.out)
    json_path = out / JSON_NAME
    status = 0
    if not args.report_only:
        bench_dir = Path(args.bench_dir) if args.bench_dir else _default_bench_dir()
        if not (bench_dir / "conftest.py").is_file():
            print(f"{prog}: no benchmarks at {bench_dir}; they live in the bench/ folder of "
                  "an nnx source checkout. Run from one, or pass --bench-dir.", file=sys.stderr)
            return 2
        try:
            import pytest
        except ImportError:
            print(f"{prog}: pytest is not installed; install the benchmark extras with "
                  "pip install -e '.[bench]' in the checkout.", file=sys.stderr)
            return 2
        out.mkdir(parents=True, exist_ok=True)
        status = int(pytest.main(pytest_arguments(args, bench_dir, json_path)))
    if not json_path.is_file():
        print(f"{prog}: {json_path} was not written (pytest exit status {status}).",
              file=sys.stderr)
        return status or 2
    data = json.loads(json_path.read_text())
    report = render_report(data, args.stat)
    plot = plot_core(core_rows(data, args.stat), out / PLOT_NAME)
    (out / REPORT_NAME).write_text(report, encoding="utf-8")
    print()
    print(report)
    print(f"Wrote {json_path}, {out / REPORT_NAME}"
          + (f" and {plot}" if plot else " (no plot: matplotlib missing or no core results)"))
    return status


if __name__ == "__main__":
    raise SystemExit(main(prog="python bench/report.py"))
