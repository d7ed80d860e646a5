"""The scaling benchmark end to end on CPU processes, and the arithmetic of its report."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import TINY_DENSIFICATION

from splatfacto_dist.benchmarking import bench_report

SCHEDULE = ["--machine.device-type", "cpu", *TINY_DENSIFICATION]


def test_bench_trains_every_job_and_writes_json_table_and_plot(tmp_path, scene):
    out = tmp_path / "bench"
    cmd = [
        sys.executable,
        "-m",
        "splatfacto_dist.benchmarking.bench",
        "--data",
        str(scene),
        "--budget",
        "96",
        "--eval-every",
        "32",
        "--gpus",
        "1",
        "2",
        "--no-stock",
        "--profile-every",
        "4",
        "--progress-every",
        "5",
        "--out",
        str(out),
        *SCHEDULE,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[bench] start dist-2gpu" in proc.stdout and "% Done" not in proc.stdout
    jobs = {j["name"]: j for j in json.loads((out / "results.json").read_text())["jobs"]}
    for name, steps in (("dist-1gpu", 96), ("dist-2gpu", 48)):
        r = jobs[name]["result"]
        assert r["returncode"] == 0 and r["steps"] == steps
        assert 0 < r["loop_s"] < r["wall_s"] and r["images_per_s"] == 96 / r["loop_s"]
        assert r["gaussians"] > 0 and 5 < r["psnr"] < 60
        images = [point[1] for point in jobs[name]["curve"]]
        assert images[-1] == 96 and len(images) == 3  # after 32 and 64 images, and at the end
        timed = [p for p in bench_report.PHASES if p != "range wait"]  # that one: pixel ranges only
        assert all(r[f"phase_{p}"] >= 0 for p in timed) and r["phase_step"] > r["phase_render+loss"]
        assert "phase_range wait" not in r  # replicated: no ranges, no wait for them
    assert jobs["dist-2gpu"]["result"]["phase_all-reduce"] > 0
    stages = {k: v for k, v in jobs["dist-2gpu"]["result"].items() if k.startswith("startup:")}
    assert list(stages) == [f"startup:{s}" for s in ("command line", "process group", "setup", "images", "first step")]
    assert abs(sum(stages.values()) - jobs["dist-2gpu"]["result"]["startup_s"]) < 0.5
    table = (out / "results.md").read_text()
    assert (
        "| dist-2gpu | 2 | 1 | 48 |" in table
        and "Per-step breakdown" in table
        and "Start-up of the slowest rank" in table
    )
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _job(name: str, method: str, gpus: int, loop_s: float, wall_s: float, psnr: float, curve: list) -> dict:
    return {
        "name": name,
        "method": method,
        "n_gpus": gpus,
        "batch": 1,
        "gpus": list(range(gpus)),
        "curve": curve,
        "result": {"loop_s": loop_s, "wall_s": wall_s, "psnr": psnr},
    }


def test_report_speedups_and_time_to_psnr_are_measured_against_stock(tmp_path):
    stock = _job("stock-1gpu", "splatfacto", 1, 200.0, 240.0, 25.0, [[100.0, 15000, 24.0], [240.0, 30000, 25.0]])
    fast = _job("dist-4gpu", "splatfacto-dist", 4, 50.0, 70.0, 24.95, [[40.0, 15000, 24.5], [60.0, 22500, 24.91]])
    low = _job("dist-2gpu", "splatfacto-dist", 2, 100.0, 130.0, 24.7, [[130.0, 30000, 24.7]])
    bench_report.derive([stock, fast, low])
    assert fast["result"]["loop_speedup"] == 4.0 and fast["result"]["wall_speedup"] == 240.0 / 70.0
    assert fast["result"]["time_to_psnr_s"] == 60.0  # first evaluation within 0.1 dB of stock's final PSNR
    assert "time_to_psnr_s" not in low["result"]
    assert abs(low["result"]["psnr_vs_stock_db"] + 0.3) < 1e-9


def test_report_merges_results_of_several_runs(tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    stock = _job("stock-1gpu", "splatfacto", 1, 200.0, 240.0, 25.0, [[240.0, 30000, 25.0]])
    old = _job("dist-4gpu", "splatfacto-dist", 4, 80.0, 99.0, 24.0, [])
    new = _job("dist-4gpu", "splatfacto-dist", 4, 50.0, 70.0, 25.0, [[70.0, 30000, 25.0]])
    bench_report.save(first, [stock, old], {"torch": "x"})
    bench_report.save(second, [new], {"gsplat": "y"})
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "splatfacto_dist.benchmarking.bench_report",
            str(tmp_path / "out"),
            str(first),
            str(second),
            "--title",
            "merged",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| dist-4gpu | 4 | 1 | - | - | 50.0 |" in table and "80.0" not in table
    assert "torch x" in table and "gsplat y" in table


def test_bench_rejects_bad_input_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "splatfacto_dist.benchmarking.bench", "--data", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].endswith("does not exist")
    both = ["--data", str(tmp_path), "--stock-only", "--no-stock"]
    proc = subprocess.run(
        [sys.executable, "-m", "splatfacto_dist.benchmarking.bench", *both], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].endswith("leave nothing to run")
    cpu = ["--data", str(tmp_path), "--stock-only", "--machine.device-type", "cpu"]
    proc = subprocess.run(
        [sys.executable, "-m", "splatfacto_dist.benchmarking.bench", *cpu], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "stock splatfacto needs CUDA" in proc.stderr.strip().splitlines()[-1]


def test_several_seeds_are_compared_against_the_mean_of_stock(tmp_path):
    stock = [
        _job(f"stock-1gpu-s{s}", "splatfacto", 1, 200.0, 240.0, psnr, [[240.0, 30000, psnr]])
        for s, psnr in ((1, 25.0), (2, 24.0))
    ]
    dist = [
        _job(f"dist-4gpu-s{s}", "splatfacto-dist", 4, loop, loop + 20, psnr, [[loop + 20, 30000, psnr]])
        for s, loop, psnr in ((1, 40.0, 24.6), (2, 60.0, 24.2))
    ]
    base = bench_report.derive(stock + dist)
    assert base["psnr"] == 24.5 and base["loop_s"] == 200.0
    assert abs(dist[0]["result"]["psnr_vs_stock_db"] - 0.1) < 1e-9 and dist[1]["result"]["loop_speedup"] == 200.0 / 60.0
    assert "time_to_psnr_s" in dist[0]["result"] and "time_to_psnr_s" not in dist[1]["result"]  # target 24.4 dB
    table = bench_report.markdown(stock + dist, {}, "seeds")
    assert (
        "| splatfacto-dist 4 GPU x 1 | 2 | 50.0 ± 10.0 | 70.0 ± 10.0 | 4.00x | 3.43x | 24.40 ± 0.20 | -0.10 |" in table
    )
    bench_report.plot(stock + dist, tmp_path / "seeds.png", "seeds")
    assert (tmp_path / "seeds.png").stat().st_size > 1000


def test_every_job_runs_once_per_seed_with_that_seed():
    import argparse
    from pathlib import Path

    from splatfacto_dist.benchmarking.bench import Job, _command

    args = argparse.Namespace(
        budget=100, eval_every=50, profile_every=53, dataparser=["colmap"], data="scene", layout="replicated"
    )
    for job in (Job("stock-1gpu-s7", "splatfacto", 1, seed=7), Job("dist-2gpu-s7", "splatfacto-dist", 2, seed=7)):
        cmd = _command(job, args, [], Path("out"))
        assert cmd[cmd.index("--machine.seed") + 1] == "7"
        assert cmd[cmd.index("--pipeline.datamanager.train-cameras-sampling-seed") + 1] == "7"


def test_rank_records_give_the_slowest_ranks_start_up_stages(tmp_path):
    from splatfacto_dist.benchmarking.bench import summarize_ranks
    from splatfacto_dist.reporting.records import read_rank_records, write_rank_record

    write_rank_record(tmp_path, 1, {"startup_s": 12.5, "peak_host_mb": 120.0, "peak_gpu_mb": 40.0})
    write_rank_record(tmp_path, 1, {"startup_stages": {"imports": 5.0, "command line": 0.5, "setup": 7.0}})
    stages = {"imports": 4.0, "command line": 1.0, "setup": 5.0}
    write_rank_record(
        tmp_path, 0, {"startup_s": 10.0, "startup_stages": stages, "peak_host_mb": 100.0, "peak_gpu_mb": 50.0}
    )
    records = read_rank_records(tmp_path)
    assert [r["rank"] for r in records] == [0, 1]  # in rank order, a second write completing the first
    assert summarize_ranks(records) == {
        "startup_s": 12.5,
        "startup:imports": 5.0,
        "startup:command line": 0.5,
        "startup:setup": 7.0,
        "peak_host_mb": 120.0,
        "peak_mem_mb": 50.0,
    }
    assert read_rank_records(tmp_path / "elsewhere") == []


def test_layout_reaches_every_dist_job_and_replicated_passes_nothing():
    import argparse
    from pathlib import Path

    from splatfacto_dist.benchmarking.bench import Job, _command

    args = argparse.Namespace(budget=100, eval_every=50, profile_every=53, dataparser=["colmap"], data="scene")
    dist, stock = Job("dist-2gpu", "splatfacto-dist", 2), Job("stock-1gpu", "splatfacto", 1)
    args.layout = "sharded"
    cmd = _command(dist, args, [], Path("out"))
    assert cmd[cmd.index("--pipeline.model.gaussian-layout") + 1] == "sharded"
    assert "--pipeline.model.gaussian-layout" not in _command(stock, args, [], Path("out"))
    args.layout = "replicated"
    assert not any("gaussian-layout" in token for token in _command(dist, args, [], Path("out")))


def test_report_shows_the_fullest_and_emptiest_ranks_gpu_memory(tmp_path):
    from splatfacto_dist.benchmarking.bench import rank_gpu_memory

    records = [{"rank": 0, "peak_gpu_mb": 702.0}, {"rank": 1, "peak_gpu_mb": 610.0}, {"rank": 2, "peak_gpu_mb": None}]
    assert rank_gpu_memory(records) == [702.0, 610.0]
    sharded = _job("dist-2gpu", "splatfacto-dist", 2, 50.0, 70.0, 25.0, [])
    sharded["rank_peak_gpu_mb"] = [702.0, 610.0]
    sharded["result"]["peak_mem_mb"] = 702.0
    old = _job("dist-1gpu", "splatfacto-dist", 1, 90.0, 110.0, 25.0, [])
    old["result"]["peak_mem_mb"] = 640.0  # a results.json from before the per-rank list
    table = bench_report.markdown([old, sharded], {"layout": "sharded"}, "memory")
    assert "| 702 / 610 |" in table and "| 640 |" in table and "Gaussian layout sharded" in table


def test_stock_only_writes_its_report_and_exits_0(tmp_path, monkeypatch, capsys):
    """`--stock-only` (issue 42): no splatfacto-dist job, so the plot has no GPU counts of its own;
    the report (results.json, results.md, scaling.png) is still written and the run succeeds. The
    training is replaced by the results a stock job leaves."""
    from splatfacto_dist.benchmarking import bench

    ran = []

    def finished(jobs, args, extra, total_gpus, environment):
        for job in jobs:
            ran.append(job.name)
            job.result = {"wall_s": 240.0, "returncode": 0.0, "steps": 96, "loop_s": 200.0, "psnr": 25.0}
            job.curve = [[100.0, 48, 24.0], [240.0, 96, 25.0]]

    monkeypatch.setattr(bench, "run_jobs", finished)
    monkeypatch.setattr(bench, "_visible_gpus", lambda: 1)
    monkeypatch.setattr(bench, "_environment", lambda args: {"budget_images": str(args.budget)})
    out = tmp_path / "bench"
    bench.main(["--data", str(tmp_path), "--stock-only", "--budget", "96", "--out", str(out)])  # no SystemExit
    assert ran == ["stock-1gpu"]
    assert [j["name"] for j in json.loads((out / "results.json").read_text())["jobs"]] == ["stock-1gpu"]
    assert "| stock-1gpu | 1 | 1 | 96 |" in (out / "results.md").read_text() and "stock-1gpu" in capsys.readouterr().out
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a stock-only results.json redrawn by bench_report alone exits 0 too
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "splatfacto_dist.benchmarking.bench_report",
            str(tmp_path / "redrawn"),
            str(out / "results.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "redrawn" / "scaling.png").stat().st_size > 1000


def test_every_caller_builds_todays_training_command_line_with_one_builder():
    """The benchmark's jobs, the capacity benchmark's runs and the tests' runs are built by
    `launching.command.train_argv`; each still gives the command line it gave before it."""
    import argparse
    import importlib.util
    from pathlib import Path

    from conftest import train_command as test_command

    from splatfacto_dist.benchmarking.bench import Job, _command
    from splatfacto_dist.launching.command import CLI, train_argv

    assert train_argv(["launch"], "m", ["--a", "1"], ["colmap", "--b", "2"], Path("d")) == [
        "launch", "m", "--a", "1", "colmap", "--b", "2", "--data", "d",
    ]  # fmt: skip
    python = sys.executable
    args = argparse.Namespace(
        budget=100, eval_every=50, profile_every=53, dataparser=["nerfstudio-data", "--x", "1"], data="scene"
    )
    args.layout = "sharded"
    common = [
        "--vis", "tensorboard", "--output-dir", "out", "--timestamp", "JOB", "--experiment-name", "bench",
        "--logging.steps-per-log", "10", "--steps-per-eval-image", "0", "--steps-per-save", "1000000",
        "--max-num-iterations", "100", "--steps-per-eval-all-images", "50", "--machine.seed", "7",
        "--pipeline.datamanager.train-cameras-sampling-seed", "7",
    ]  # fmt: skip
    data = ["nerfstudio-data", "--x", "1", "--data", "scene"]
    stock = _command(Job("stock-1gpu", "splatfacto", 1, seed=7), args, ["--e"], Path("out"))
    assert stock == [
        python, "-m", "splatfacto_dist.benchmarking.bench_stock", "splatfacto",
        *[("stock-1gpu" if a == "JOB" else a) for a in common], *data,
    ]  # fmt: skip
    dist = _command(Job("dist-2gpu", "splatfacto-dist", 2, 3, seed=7), args, ["--e"], Path("out"))
    assert dist == [
        python, "-m", "splatfacto_dist.cli", "splatfacto-dist", *[("dist-2gpu" if a == "JOB" else a) for a in common],
        "--machine.num-devices", "2", "--pipeline.datamanager.cameras-per-rank", "3", "--eval-all-images-at-end",
        "True", "--profile-phases-every", "53", "--pipeline.model.gaussian-layout", "sharded", "--e", *data,
    ]  # fmt: skip

    spec = importlib.util.spec_from_file_location("capacity", Path(__file__).parents[1] / "benchmarks" / "capacity.py")
    capacity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(capacity)
    options = argparse.Namespace(out=Path("o"), images=300, device="cuda")
    assert capacity.train_command("sharded-2gpu-8", "sharded", 2, Path("s"), options, ["--e"]) == [
        python, "-m", "splatfacto_dist.cli", "splatfacto-dist", "--vis", "tensorboard", "--output-dir", "o/runs",
        "--experiment-name", "capacity", "--timestamp", "sharded-2gpu-8", "--max-num-iterations", "300",
        "--steps-per-eval-image", "0", "--steps-per-eval-batch", "0", "--steps-per-eval-all-images", "0",
        "--steps-per-save", "1000000", "--logging.steps-per-log", "10", "--profile-phases-every", "5",
        "--pipeline.model.stop-split-at", "0", "--pipeline.model.num-downscales", "0",
        "--pipeline.model.sh-degree-interval", "37", "--machine.num-devices", "2", "--machine.device-type", "cuda",
        "--pipeline.model.gaussian-layout", "sharded", "--e", "colmap", "--downscale-factor", "1", "--data", "s",
    ]  # fmt: skip

    from conftest import TINY

    assert tuple(CLI) == (python, "-m", "splatfacto_dist.cli")
    assert test_command(Path("o"), Path("s"), 2, ["--a"]) == [
        *CLI, "splatfacto-dist", *TINY, "--machine.num-devices", "2", "--output-dir", "o", "--timestamp", "run",
        "--a", "colmap", "--data", "s",
    ]  # fmt: skip
    assert test_command(Path("o"), Path("s"), None, (), "nerfstudio-data", launcher=()) == [
        "splatfacto-dist", *TINY, "--output-dir", "o", "--timestamp", "run", "nerfstudio-data", "--data", "s",
    ]  # fmt: skip
