"""The report code of ``nnx bench`` on a tiny fake pytest-benchmark JSON (no measuring)."""

from __future__ import annotations

import json

import pytest

from nnx import bench


def _core(backend, dtype, hidden, impl, seconds, kind="cpu", batch=4096):
    return {
        "name": f"test_dense_core[{backend}-{impl}-{dtype}-H{hidden}]",
        "stats": {"min": seconds, "median": seconds * 2, "mean": seconds * 2},
        "extra_info": {"kind": "core", "backend": backend, "dtype": dtype, "hidden": hidden,
                       "batch": batch, "impl": impl, "flops": 6 * batch * hidden * hidden,
                       "device_kind": kind, "device_name": "Fake GPU" if kind == "gpu" else "cpu",
                       "tf32": False, "library": backend, "library_version": "1.0",
                       **({"cuda_runtime": 13000} if kind == "gpu" else {})},
    }


def _train(config, impl, seconds):
    return {
        "name": f"test_step[{config}-{impl}]",
        "stats": {"min": seconds, "median": seconds, "mean": seconds},
        "extra_info": {"kind": "train", "config": config, "impl": impl, "dtype": "float32",
                       "batch": 4096, "sizes": [64, 256, 256, 10]},
    }


def fake_json(with_gpu: bool = False) -> dict:
    flops_256 = 6 * 4096 * 256 * 256  # 1.61e9: 1 s is 1.61 GFLOP/s
    benches = [
        _core("numpy", "float32", 16, "nnx", 1e-3), _core("numpy", "float32", 16, "raw", 5e-4),
        _core("numpy", "float32", 256, "nnx", 1.0), _core("numpy", "float32", 256, "raw", 0.95),
        _core("torch-cpu", "float32", 256, "nnx", 0.5),
        _core("torch-cpu", "float32", 256, "raw", 0.4),
        _train("moons", "numpy-hand", 1e-4), _train("moons", "nnx-numpy", 2e-4),
        _train("moons", "sklearn", 1e-3),
        _train("wide-H256", "numpy-hand", 0.010), _train("wide-H256", "nnx-numpy", 0.0105),
        _train("wide-H256", "torch-hand", 0.008), _train("wide-H256", "nnx-torch", 0.0085),
        _train("wide-H256", "sklearn", 0.02),
    ]
    if with_gpu:
        benches += [_core("cupy", "float32", 16, "nnx", 2e-3, "gpu"),
                    _core("cupy", "float32", 16, "raw", 2e-3, "gpu"),
                    _core("cupy", "float32", 256, "nnx", 0.01, "gpu"),
                    _core("cupy", "float32", 256, "raw", 0.01, "gpu")]
    assert flops_256 == benches[2]["extra_info"]["flops"]
    return {"benchmarks": benches, "datetime": "2026-01-01T00:00:00",
            "machine_info": {"cpu": {"brand_raw": "Fake CPU", "count": 2}}}


def test_core_rows_share_gflops_and_speedup():
    rows = bench.core_rows(fake_json())
    assert [(r["backend"], r["hidden"]) for r in rows] == [
        ("numpy", 16), ("numpy", 256), ("torch-cpu", 256)]
    numpy256, torch256 = rows[1], rows[2]
    assert numpy256["share"] == pytest.approx(0.95)
    assert numpy256["nnx_gflops"] == pytest.approx(6 * 4096 * 256 * 256 / 1e9)
    assert numpy256["vs_numpy"] == pytest.approx(1.0)
    assert torch256["share"] == pytest.approx(0.8)
    assert torch256["vs_numpy"] == pytest.approx(2.0)


def test_core_rows_uses_the_requested_statistic():
    by_min = bench.core_rows(fake_json(), "min")[1]
    by_median = bench.core_rows(fake_json(), "median")[1]
    assert by_median["nnx_s"] == pytest.approx(2 * by_min["nnx_s"])


def test_crossover_without_and_with_a_gpu():
    assert bench.crossover(bench.core_rows(fake_json())) == {"all": "no GPU in this run"}
    # The fake GPU loses at H=16 (2 ms vs 1 ms) and wins at H=256 (10 ms vs 0.5 s).
    assert bench.crossover(bench.core_rows(fake_json(with_gpu=True))) == {"float32": "H >= 256"}


def test_train_rows_ratios():
    rows = {(r["config"], r["impl"]): r for r in bench.train_rows(fake_json())}
    assert rows["moons", "nnx-numpy"]["vs_numpy-hand"] == pytest.approx(2.0)
    assert rows["moons", "nnx-numpy"]["vs_torch-hand"] is None
    assert rows["wide-H256", "nnx-torch"]["vs_torch-hand"] == pytest.approx(0.0085 / 0.008)
    assert rows["wide-H256", "nnx-numpy"]["vs_sklearn"] == pytest.approx(0.525)
    assert list(rows)[0][0] == "moons"


def test_targets_verdicts():
    data = fake_json()
    verdicts = bench.targets(bench.core_rows(data), bench.train_rows(data))
    assert [v for _, v, _ in verdicts] == ["MISSED", "MISSED", "met", "met", "not measured"]
    assert "torch-cpu float32 H=256: 80%" in verdicts[0][2]
    assert "moons: 2.00x (limit 1.50x)" in verdicts[1][2]
    empty = bench.targets([], [])
    assert {v for _, v, _ in empty} == {"not measured"}


def test_render_report_and_format_time():
    text = bench.render_report(fake_json())
    assert "| numpy" in text and "95%" in text and "no GPU in this run" in text
    assert "wide-H256" in text and "**MISSED**" in text and "Fake CPU" in text
    assert bench.format_time(0.0105) == "10.5 ms"
    assert bench.format_time(2e-4) == "200 µs"
    assert bench.format_time(None) == "-"


def test_main_report_only_writes_report_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    (tmp_path / bench.JSON_NAME).write_text(json.dumps(fake_json(with_gpu=True)))
    assert bench.main(["--report-only", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "GPU beats CPU (float32): H >= 256" in out
    assert "GPU: cupy: Fake GPU (CUDA runtime 13000)" in out
    assert (tmp_path / bench.REPORT_NAME).read_text(encoding="utf-8").startswith("# nnx")
    assert (tmp_path / bench.PLOT_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_main_without_json_or_bench_dir(tmp_path):
    assert bench.main(["--report-only", "--out", str(tmp_path)]) == 2
    assert bench.main(["--out", str(tmp_path), "--bench-dir", str(tmp_path)]) == 2


def test_pytest_arguments_pass_options_through(tmp_path):
    args = bench.parse_args(["--quick", "--backends", "numpy", "--only", "core", "--", "-x"])
    cmd = bench.pytest_arguments(args, tmp_path, tmp_path / "b.json")
    assert cmd[0].endswith("test_bench_core.py")
    assert "--bench-quick" in cmd and "--bench-backends=numpy" in cmd and cmd[-1] == "-x"
    assert f"--benchmark-json={tmp_path / 'b.json'}" in cmd


def test_interleaved_ratios_take_precedence_over_separate_benchmarks():
    data = fake_json()
    for b in data["benchmarks"]:
        info = b["extra_info"]
        if info["kind"] == "core" and info["impl"] == "nnx" and info["hidden"] == 256:
            info.update(paired_share_median=0.97, paired_share_q1=0.955, paired_share_q3=0.99)
        if info.get("impl") == "nnx-numpy" and info.get("config") == "moons":
            info["paired_vs_numpy-hand_median"] = 1.2  # the separate runs said 2.0
    core = {(r["backend"], r["hidden"]): r for r in bench.core_rows(data)}
    assert core["numpy", 256]["share"] == pytest.approx(0.97)
    assert core["numpy", 256]["share_separate"] == pytest.approx(0.95)
    assert core["torch-cpu", 256]["share"] == pytest.approx(0.97)
    assert core["numpy", 16]["share"] == pytest.approx(0.5)  # no pairs: the separate ratio
    train = {(r["config"], r["impl"]): r for r in bench.train_rows(data)}
    assert train["moons", "nnx-numpy"]["vs_numpy-hand"] == pytest.approx(1.2)
    assert train["moons", "nnx-numpy"]["vs_sklearn"] == pytest.approx(0.2)
    verdicts = bench.targets(bench.core_rows(data), bench.train_rows(data))
    assert verdicts[0][1] == "met" and verdicts[1][1] == "met"
    table = bench.format_core_table(bench.core_rows(data))
    row16 = next(line for line in table.splitlines() if line.startswith("| numpy ")
                 and "| 16 |" in line.replace("  ", " ").replace("  ", " "))
    assert "97% (96-99)" in table and " 50% |" in row16 and "(" not in row16


def test_gpu_peer_columns_appear_only_when_measured():
    cpu = bench.format_train_table(bench.train_rows(fake_json()))
    assert "x cupy-hand" not in cpu.splitlines()[0] and "x sklearn" in cpu.splitlines()[0]
    data = fake_json()
    data["benchmarks"] += [_train("wide-H256", "cupy-hand", 0.002),
                           _train("wide-H256", "nnx-cupy", 0.0021)]
    data["benchmarks"][-1]["extra_info"]["paired_vs_cupy-hand_median"] = 1.04
    rows = {(r["config"], r["impl"]): r for r in bench.train_rows(data)}
    assert rows["wide-H256", "nnx-cupy"]["vs_cupy-hand"] == pytest.approx(1.04)
    assert rows["wide-H256", "nnx-cupy"]["vs_numpy-hand"] == pytest.approx(0.21)
    table = bench.format_train_table(bench.train_rows(data))
    assert "x cupy-hand" in table.splitlines()[0] and "x torch-hand-cuda" not in table


def test_the_cupy_step_is_measured_against_its_own_matmuls():
    data = fake_json()
    data["benchmarks"] += [_train("wide-H1024", "cupy-matmuls", 0.010),
                           _train("wide-H1024", "nnx-cupy", 0.014),
                           _train("wide-H2048", "cupy-matmuls", 0.030),
                           _train("wide-H2048", "nnx-cupy", 0.045)]
    data["benchmarks"][-1]["extra_info"]["paired_vs_cupy-matmuls_median"] = 1.2
    rows = {(r["config"], r["impl"]): r for r in bench.train_rows(data)}
    assert rows["wide-H1024", "nnx-cupy"]["vs_matmuls"] == pytest.approx(1.4)  # separate
    assert rows["wide-H2048", "nnx-cupy"]["vs_matmuls"] == pytest.approx(1.2)  # paired
    assert rows["wide-H256", "nnx-numpy"]["vs_matmuls"] is None
    title, verdict, detail = bench.targets([], bench.train_rows(data))[-1]
    assert "cupy" in title and verdict == "MISSED"
    assert detail == "wide-H1024: 1.40x, wide-H2048: 1.20x"
    assert "x own matmuls" in bench.format_train_table(bench.train_rows(data))
