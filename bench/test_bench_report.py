"""The report code of ``bench/report.py`` (``nnx bench``) on a small fake pytest-benchmark JSON.

Nothing is measured. The fake JSON is written out by hand, with round times, and every
expected figure below (GFLOP/s, shares, ratios, verdicts, table cells) was worked out by hand
from those times and is written as a literal: the tests compare the report with that
arithmetic, not with values the report code produced.

``report.py`` is loaded by its path, as ``nnx bench`` loads it.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("nnx_bench_report", BENCH_DIR / "report.py")
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)

# Matmul FLOPs of the Dense core at batch 4096 (6 * batch * H * H), written out:
FLOPS_H16 = 6_291_456  # 6 * 4096 * 16 * 16
FLOPS_H256 = 1_610_612_736  # 6 * 4096 * 256 * 256


def _core(backend, nnx_backend, hidden, impl, seconds, flops, kind="cpu"):
    """One core benchmark; its median and mean are twice its min."""
    return {
        "name": f"test_dense_core[H{hidden}-{backend}-{impl}-float32]",
        "stats": {"min": seconds, "median": 2 * seconds, "mean": 2 * seconds},
        "extra_info": {"kind": "core", "backend": backend, "nnx_backend": nnx_backend,
                       "dtype": "float32", "hidden": hidden, "batch": 4096, "impl": impl,
                       "flops": flops, "device_kind": kind,
                       "device_name": "Fake GPU" if kind == "gpu" else "cpu", "tf32": False,
                       "library": nnx_backend, "library_version": "1.0",
                       **({"cuda_runtime": "13000"} if kind == "gpu" else {})},
    }


def _train(config, impl, seconds, **paired):
    info = {"kind": "train", "config": config, "impl": impl, "dtype": "float32",
            "batch": 4096, "sizes": [64, 256, 256, 10]}
    info.update({f"paired_vs_{peer}_median": value for peer, value in paired.items()})
    return {"name": f"test_step[{config}-{impl}]",
            "stats": {"min": seconds, "median": seconds, "mean": seconds}, "extra_info": info}


def fake_json(with_gpu: bool = False) -> dict:
    """Out of order on purpose: the report sorts the rows."""
    benches = [
        _core("torch-cpu", "torch", 256, "nnx", 0.5, FLOPS_H256),
        _core("torch-cpu", "torch", 256, "raw", 0.4, FLOPS_H256),
        _core("strict-cpu", "array_api_strict", 16, "nnx", 2e-3, FLOPS_H16),
        _core("strict-cpu", "array_api_strict", 16, "raw", 1e-3, FLOPS_H16),
        _core("numpy", "numpy", 256, "nnx", 1.0, FLOPS_H256),
        _core("numpy", "numpy", 256, "raw", 0.8, FLOPS_H256),
        _core("numpy", "numpy", 16, "nnx", 1e-3, FLOPS_H16),
        _core("numpy", "numpy", 16, "raw", 5e-4, FLOPS_H16),
        _train("wide-H256", "nnx-torch", 0.0078),
        _train("wide-H256", "sklearn", 0.021),
        _train("wide-H256", "numpy-hand", 0.010),
        _train("wide-H256", "nnx-numpy", 0.0105),
        _train("wide-H256", "torch-hand", 0.0075),
        _train("moons", "nnx-numpy", 2e-4),
        _train("moons", "numpy-hand", 1e-4),
        _train("moons", "sklearn", 1e-3),
    ]
    if with_gpu:
        benches += [_core("cupy", "cupy", 256, "nnx", 0.01, FLOPS_H256, "gpu"),
                    _core("cupy", "cupy", 256, "raw", 0.01, FLOPS_H256, "gpu"),
                    _core("cupy", "cupy", 16, "nnx", 2e-3, FLOPS_H16, "gpu"),
                    _core("cupy", "cupy", 16, "raw", 2e-3, FLOPS_H16, "gpu")]
    return {"benchmarks": benches, "datetime": "2026-01-01T00:00:00",
            "machine_info": {"cpu": {"brand_raw": "Fake CPU", "count": 2}}}


def _cells(line: str) -> str:
    """A table line with its padding collapsed: ``| a | b |``."""
    return " ".join(line.split())


# -- the Dense core --------------------------------------------------------------------------
def test_core_rows_gflops_share_and_speedup():
    rows = {(r["backend"], r["hidden"]): r for r in report.core_rows(fake_json())}
    numpy256, torch256, numpy16, strict16 = (rows["numpy", 256], rows["torch-cpu", 256],
                                             rows["numpy", 16], rows["strict-cpu", 16])
    # numpy H=256: 1 s for 1.610612736 GFLOP; the raw matmuls 0.8 s.
    assert numpy256["nnx_s"] == 1.0 and numpy256["raw_s"] == 0.8
    assert numpy256["nnx_gflops"] == pytest.approx(1.610612736)
    assert numpy256["raw_gflops"] == pytest.approx(2.01326592)
    assert numpy256["share"] == pytest.approx(0.8)  # 0.8 s / 1 s
    assert numpy256["vs_numpy"] == pytest.approx(1.0)
    # torch H=256: 0.5 s (twice NumPy's speed), raw 0.4 s.
    assert torch256["nnx_gflops"] == pytest.approx(3.221225472)
    assert torch256["share"] == pytest.approx(0.8)  # 0.4 s / 0.5 s
    assert torch256["vs_numpy"] == pytest.approx(2.0)
    # H=16: numpy 1 ms (6.291456 GFLOP/s), raw 0.5 ms; strict 2 ms, raw 1 ms.
    assert numpy16["nnx_gflops"] == pytest.approx(6.291456)
    assert numpy16["share"] == pytest.approx(0.5)
    assert strict16["nnx_gflops"] == pytest.approx(3.145728)
    assert strict16["vs_numpy"] == pytest.approx(0.5)
    assert numpy16["spread"] is None and numpy16["share_separate"] == pytest.approx(0.5)


def test_core_rows_order_cpu_targets_first_in_registry_order():
    rows = report.core_rows(fake_json(with_gpu=True))
    assert [(r["backend"], r["hidden"]) for r in rows] == [
        ("numpy", 16), ("numpy", 256), ("torch-cpu", 256), ("strict-cpu", 16),
        ("cupy", 16), ("cupy", 256)]


def test_core_rows_use_the_requested_statistic():
    # The fake medians are twice the minima: numpy H=256 took 2 s, its raw matmuls 1.6 s.
    numpy256 = next(r for r in report.core_rows(fake_json(), "median")
                    if r["backend"] == "numpy" and r["hidden"] == 256)
    assert numpy256["nnx_s"] == 2.0 and numpy256["raw_s"] == 1.6
    assert numpy256["nnx_gflops"] == pytest.approx(0.805306368)


def test_crossover_without_and_with_a_gpu():
    assert report.crossover(report.core_rows(fake_json())) == {"all": "no GPU in this run"}
    # H=16: the fake GPU's 3.1 GFLOP/s lose to NumPy's 6.3; H=256: its 161 win over torch's 3.2.
    rows = report.core_rows(fake_json(with_gpu=True))
    assert report.crossover(rows) == {"float32": "H >= 256"}


def test_core_table_cells():
    lines = [_cells(line) for line in report.format_core_table(
        report.core_rows(fake_json())).splitlines()]
    assert lines[0] == ("| backend | dtype | H | batch | nnx time | nnx GFLOP/s | raw GFLOP/s "
                        "| % of ceiling | x NumPy |")
    assert lines[2:] == [
        "| numpy | float32 | 16 | 4096 | 1 ms | 6.3 | 12.6 | 50% | 1.00x |",
        "| numpy | float32 | 256 | 4096 | 1 s | 1.6 | 2.0 | 80% | 1.00x |",
        "| torch-cpu | float32 | 256 | 4096 | 500 ms | 3.2 | 4.0 | 80% | 2.00x |",
        "| strict-cpu | float32 | 16 | 4096 | 2 ms | 3.1 | 6.3 | 50% | 0.50x |",
    ]


# -- the training step -----------------------------------------------------------------------
def test_train_rows_ratios():
    rows = {(r["config"], r["impl"]): r for r in report.train_rows(fake_json())}
    moons, wide_numpy, wide_torch = (rows["moons", "nnx-numpy"], rows["wide-H256", "nnx-numpy"],
                                     rows["wide-H256", "nnx-torch"])
    assert moons["vs_numpy-hand"] == pytest.approx(2.0)  # 0.2 ms / 0.1 ms
    assert moons["vs_sklearn"] == pytest.approx(0.2)  # 0.2 ms / 1 ms
    assert moons["vs_torch-hand"] is None  # no torch-hand in the moons runs
    assert wide_numpy["vs_numpy-hand"] == pytest.approx(1.05)  # 10.5 ms / 10 ms
    assert wide_numpy["vs_torch-hand"] == pytest.approx(1.4)  # 10.5 ms / 7.5 ms
    assert wide_numpy["vs_sklearn"] == pytest.approx(0.5)  # 10.5 ms / 21 ms
    assert wide_torch["vs_torch-hand"] == pytest.approx(1.04)  # 7.8 ms / 7.5 ms
    assert wide_numpy["vs_matmuls"] is None  # no numpy-matmuls in this run
    assert [(r["config"], r["impl"]) for r in report.train_rows(fake_json())] == [
        ("moons", "numpy-hand"), ("moons", "sklearn"), ("moons", "nnx-numpy"),
        ("wide-H256", "numpy-hand"), ("wide-H256", "torch-hand"), ("wide-H256", "sklearn"),
        ("wide-H256", "nnx-numpy"), ("wide-H256", "nnx-torch")]


def test_train_table_cells():
    lines = [_cells(line) for line in report.format_train_table(
        report.train_rows(fake_json())).splitlines()]
    assert lines[0] == ("| network | implementation | dtype | batch | time / step | x numpy-hand "
                        "| x torch-hand | x sklearn | x own matmuls |")
    assert "| wide-H256 | nnx-numpy | float32 | 4096 | 10.5 ms | 1.05 | 1.40 | 0.50 | - |" in lines
    assert "| wide-H256 | nnx-torch | float32 | 4096 | 7.8 ms | 0.78 | 1.04 | 0.37 | - |" in lines
    assert "| moons | nnx-numpy | float32 | 4096 | 200 µs | 2.00 | - | 0.20 | - |" in lines


def test_own_matmuls_of_every_nnx_step():
    assert report.own_matmuls("nnx-numpy") == "numpy-matmuls"
    assert report.own_matmuls("nnx-torch-cuda") == "torch-cuda-matmuls"
    assert report.own_matmuls("nnx-jax") == "jax-matmuls"  # a target added to the registry
    assert report.own_matmuls("numpy-hand") is None
    data = fake_json()
    data["benchmarks"] += [_train("wide-H256", "jax-matmuls", 0.004),
                           _train("wide-H256", "nnx-jax", 0.005)]
    rows = {(r["config"], r["impl"]): r for r in report.train_rows(data)}
    assert rows["wide-H256", "nnx-jax"]["vs_matmuls"] == pytest.approx(1.25)  # 5 ms / 4 ms


# -- the targets -----------------------------------------------------------------------------
def test_targets_verdicts():
    data = fake_json()
    verdicts = report.targets(report.core_rows(data), report.train_rows(data))
    assert verdicts == [
        ("Dense core >= 90% of the raw matmul ceiling for H >= 256, every backend", "MISSED",
         "numpy float32 H=256: 80%, torch-cpu float32 H=256: 80%"),
        ("nnx step <= 1.10x hand-written NumPy (wide), <= 1.5x (moons)", "MISSED",
         "moons: 2.00x (limit 1.50x), wide-H256: 1.05x (limit 1.10x)"),
        ("nnx faster per epoch than scikit-learn MLPClassifier (nnx-numpy)", "met",
         "moons: 0.20x (limit 1.00x), wide-H256: 0.50x (limit 1.00x)"),
        ("NNX_BACKEND=torch: nnx step <= 1.10x hand-written torch step", "met",
         "wide-H256: 1.04x (limit 1.10x)"),
        ("NNX_BACKEND=cupy: nnx step <= 1.25x its raw cupy.matmul calls for H >= 1024",
         "not measured", ""),
    ]
    assert {verdict for _, verdict, _ in report.targets([], [])} == {"not measured"}


def test_interleaved_ratios_take_precedence_over_separate_benchmarks():
    data = fake_json()
    for b in data["benchmarks"]:
        info = b["extra_info"]
        if info["kind"] == "core" and info["impl"] == "nnx" and info["hidden"] == 256:
            info.update(paired_share_median=0.97, paired_share_q1=0.96, paired_share_q3=0.99)
    data["benchmarks"].append(_train("moons", "nnx-torch", 3e-4, **{"torch-hand": 0.9}))
    data["benchmarks"].append(_train("moons", "torch-hand", 1e-4))  # separately: 3.0x
    core = {(r["backend"], r["hidden"]): r for r in report.core_rows(data)}
    assert core["numpy", 256]["share"] == 0.97
    assert core["numpy", 256]["share_separate"] == pytest.approx(0.8)
    assert core["numpy", 256]["spread"] == (0.96, 0.99)
    assert core["torch-cpu", 256]["share"] == 0.97
    assert core["numpy", 16]["share"] == pytest.approx(0.5)  # no pairs: the separate ratio
    train = {(r["config"], r["impl"]): r for r in report.train_rows(data)}
    assert train["moons", "nnx-torch"]["vs_torch-hand"] == 0.9
    assert train["moons", "nnx-torch"]["vs_numpy-hand"] == pytest.approx(3.0)  # not paired
    verdicts = report.targets(report.core_rows(data), report.train_rows(data))
    assert [v for _, v, _ in verdicts][0] == "met"
    assert verdicts[3][2] == "moons: 0.90x (limit 1.10x), wide-H256: 1.04x (limit 1.10x)"
    table = [_cells(line) for line in report.format_core_table(
        report.core_rows(data)).splitlines()]
    assert "| numpy | float32 | 256 | 4096 | 1 s | 1.6 | 2.0 | 97% (96-99) | 1.00x |" in table
    assert "| numpy | float32 | 16 | 4096 | 1 ms | 6.3 | 12.6 | 50% | 1.00x |" in table


def test_gpu_peer_columns_appear_only_when_measured():
    header = report.format_train_table(report.train_rows(fake_json())).splitlines()[0]
    assert "x cupy-hand" not in header and "x sklearn" in header
    data = fake_json()
    data["benchmarks"] += [_train("wide-H256", "cupy-hand", 0.002),
                           _train("wide-H256", "nnx-cupy", 0.0021, **{"cupy-hand": 1.04})]
    rows = {(r["config"], r["impl"]): r for r in report.train_rows(data)}
    assert rows["wide-H256", "nnx-cupy"]["vs_cupy-hand"] == 1.04
    assert rows["wide-H256", "nnx-cupy"]["vs_numpy-hand"] == pytest.approx(0.21)  # 2.1 / 10
    header = report.format_train_table(report.train_rows(data)).splitlines()[0]
    assert "x cupy-hand" in header and "x torch-hand-cuda" not in header


def test_the_cupy_step_is_measured_against_its_own_matmuls():
    data = fake_json()
    data["benchmarks"] += [_train("wide-H1024", "cupy-matmuls", 0.010),
                           _train("wide-H1024", "nnx-cupy", 0.014),
                           _train("wide-H2048", "cupy-matmuls", 0.030),
                           _train("wide-H2048", "nnx-cupy", 0.045, **{"cupy-matmuls": 1.2})]
    rows = {(r["config"], r["impl"]): r for r in report.train_rows(data)}
    assert rows["wide-H1024", "nnx-cupy"]["vs_matmuls"] == pytest.approx(1.4)  # 14 / 10
    assert rows["wide-H2048", "nnx-cupy"]["vs_matmuls"] == 1.2  # paired, not 45 / 30
    assert report.targets([], report.train_rows(data))[-1] == (
        "NNX_BACKEND=cupy: nnx step <= 1.25x its raw cupy.matmul calls for H >= 1024",
        "MISSED", "wide-H1024: 1.40x, wide-H2048: 1.20x")
    assert "x own matmuls" in report.format_train_table(report.train_rows(data))


# -- the whole report ------------------------------------------------------------------------
def test_format_time():
    assert report.format_time(1.0) == "1 s"
    assert report.format_time(0.0105) == "10.5 ms"
    assert report.format_time(2e-4) == "200 µs"
    assert report.format_time(5e-9) == "5 ns"
    assert report.format_time(None) == "-"


def test_render_report():
    text = report.render_report(fake_json(with_gpu=True))
    assert text.startswith("# nnx benchmarks\n\n- CPU: Fake CPU (2 cores)\n"
                           "- GPU: cupy: Fake GPU (CUDA runtime 13000)\n")
    assert "- date: 2026-01-01T00:00:00\n" in text
    assert "- GPU beats CPU (float32): H >= 256\n" in text
    assert "## Training step" in text and "## Targets" in text
    assert ("- **MISSED**: Dense core >= 90% of the raw matmul ceiling for H >= 256, every "
            "backend (numpy float32 H=256: 80%, torch-cpu float32 H=256: 80%)") in text
    assert "no GPU in this run" in report.render_report(fake_json())


def test_main_report_only_writes_report_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    (tmp_path / "bench.json").write_text(json.dumps(fake_json(with_gpu=True)))
    assert report.main(["--report-only", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "GPU beats CPU (float32): H >= 256" in out
    written = (tmp_path / "bench.md").read_text(encoding="utf-8")
    assert written.startswith("# nnx benchmarks\n") and written in out
    assert (tmp_path / "core_gflops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_main_without_json_or_bench_dir(tmp_path, capsys):
    assert report.main(["--report-only", "--out", str(tmp_path)]) == 2
    assert f"{tmp_path / 'bench.json'} was not written" in capsys.readouterr().err
    assert report.main(["--out", str(tmp_path), "--bench-dir", str(tmp_path)]) == 2
    assert f"no benchmarks at {tmp_path}" in capsys.readouterr().err


def test_pytest_arguments_pass_options_through(tmp_path):
    args = report.parse_args(["--quick", "--backends", "numpy", "--only", "core", "--", "-x"])
    assert report.pytest_arguments(args, tmp_path, tmp_path / "b.json") == [
        str(tmp_path / "test_bench_core.py"), "-q", "-p", "no:cacheprovider",
        "--benchmark-only", f"--benchmark-json={tmp_path / 'b.json'}",
        "--benchmark-max-time=0.5", "--benchmark-min-rounds=3",
        "--benchmark-columns=min,median,rounds,iterations", "--benchmark-sort=name",
        "--bench-quick", "--bench-backends=numpy", "-x"]


def test_the_default_bench_dir_is_this_folder():
    assert report._default_bench_dir() == BENCH_DIR


# -- run as nnx bench and as a script --------------------------------------------------------
def test_nnx_bench_runs_this_report_from_a_checkout(tmp_path, capsys):
    from nnx import cli

    (tmp_path / "bench.json").write_text(json.dumps(fake_json()))
    assert cli.main(["bench", "--bench-dir", str(BENCH_DIR), "--report-only",
                     "--out", str(tmp_path)]) == 0
    assert "| torch-cpu" in capsys.readouterr().out


def test_nnx_bench_outside_a_checkout_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    from nnx import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nnx: error: 'nnx bench' runs the benchmarks of an nnx source "
                          "checkout") and err.count("\n") == 1


def test_report_py_runs_as_a_script(tmp_path):
    (tmp_path / "bench.json").write_text(json.dumps(fake_json()))
    result = subprocess.run([sys.executable, str(BENCH_DIR / "report.py"), "--report-only",
                             "--out", str(tmp_path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "# nnx benchmarks" in result.stdout
    help_text = subprocess.run([sys.executable, str(BENCH_DIR / "report.py"), "--help"],
                               capture_output=True, text=True, timeout=120).stdout
    assert help_text.startswith("usage: python bench/report.py")
