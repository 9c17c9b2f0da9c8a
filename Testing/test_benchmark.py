"""The benchmark in quick mode: every figure is printed and written, and the runtimes agree with eager PyTorch."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "benchmark.py"
sys.path.insert(0, str(SCRIPT.parent))

import benchmark  # noqa: E402

PRINTED = (
    "CPU:",
    "torch threads",
    "GFLOPs per image",
    "weights:",
    "eager, batch 1",
    "eager, batch 8",
    "torchscript, batch 1",
    "torchscript-optimized, batch 8",
    "onnxruntime, batch 1",
    "onnxruntime, batch 8",
    "fastest: batch 1:",
    "end to end, ms per image",
    "throughput / bare eager batch-1 throughput",
    "read, ms per file",
    "preprocess, ms per file",
    "forward, ms per file",
    "postprocess, ms per file",
    "write, ms per file",
    "other, ms per file",
    "warm single-image latency, ms",
    "cold start, ms",
    "import torch, ms",
    "import monai, ms",
    "parse config, build runner, ms",
    "peak RSS, one PNG, MiB",
    "peak RSS, 4 PNGs, MiB",
    "throughput, images/s",
    "waiting for the DataLoader, ms per iteration",
    "data wait share of an iteration",
    "peak RSS, main process, MiB",
    "DataLoader workers' own memory (USS), MiB",
)


def figures(tree: object) -> list[float]:
    """Every number in a JSON tree."""
    if isinstance(tree, dict):
        return [x for value in tree.values() for x in figures(value)]
    if isinstance(tree, list):
        return [x for value in tree for x in figures(value)]
    return [float(tree)] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[str, dict]:
    out = tmp_path_factory.mktemp("benchmark") / "results.json"
    # one thread keeps the run short on a machine busy with other work
    command = [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--json", str(out)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done.stdout, json.loads(out.read_text())


def test_every_figure_is_printed(quick_run):
    stdout, _ = quick_run
    missing = [label for label in PRINTED if label not in stdout]
    assert not missing, f"not printed: {missing}\n{stdout}"


def test_every_figure_is_written(quick_run):
    _, results = quick_run
    assert set(results) == {"machine", "settings", "network", "inference", "start_up", "training", "targets"}
    assert results["settings"]["quick"] and results["settings"]["image_size"] == 64
    for runtime in ("eager", "torchscript", "torchscript-optimized", "onnxruntime"):
        entry = results["network"]["runtimes"][runtime]
        assert entry["batch1"]["median_ms"] > 0 and entry["batch8"]["median_ms"] > 0 and entry["batch8"]["n"] == 3
    inference = results["inference"]
    assert set(inference["stages"]) == {"read", "preprocess", "forward", "postprocess", "write", "other", "files"}
    assert inference["stages"]["files"] == 4 and inference["stages"]["forward"]["n"] == 4
    assert inference["end_to_end_per_image"]["median_ms"] > 0 and inference["warm_latency"]["n"] == 3
    assert 0 < inference["throughput_ratio"]
    start_up = results["start_up"]
    assert start_up["cold_start"]["median_ms"] > 0 and start_up["all_pictures_peak_rss_mib"] > 0
    assert {"import torch", "import monai", "parse config, build runner"} <= set(start_up["cold_start_parts_s"])
    training = results["training"]
    assert training["iterations"] == 3 and training["batch_size"] > 0 and training["images_per_s"] > 0
    assert 0 <= training["data_wait_percent"] <= 100 and 0 <= training["workers_cpu_percent"] <= 100
    assert training["main_peak_rss_mib"] > 0 and training["workers_unique_mib"] >= 0
    assert set(results["targets"]) == set(benchmark.TARGETS)
    assert all(isinstance(target["pass"], bool) for target in results["targets"].values())
    assert all(math.isfinite(x) for x in figures(results))


def test_targets_are_printed_with_a_verdict(quick_run):
    stdout, results = quick_run
    targets = stdout.split("\nTargets\n")[1].splitlines()
    assert len(targets) == len(results["targets"])
    assert all(line.rstrip().endswith(("PASS", "FAIL")) for line in targets)


def test_runtimes_agree_with_eager(quick_run):
    _, results = quick_run
    for name, entry in results["network"]["runtimes"].items():
        assert entry["max_abs_diff"] <= benchmark.TOLERANCE, name
    assert results["targets"]["max_abs_diff"]["pass"]


def test_missing_weights_are_reported(tmp_path, monkeypatch):
    network = benchmark.torch.nn.Linear(2, 2).train()
    monkeypatch.setattr(benchmark, "CHECKPOINT", benchmark.REPO_ROOT / "no_such_folder" / "model.pt")
    assert benchmark.load_weights(network).startswith("random (")
    assert not network.training


def test_measure_reports_median_and_p90():
    calls = []
    stats = benchmark.measure(lambda: calls.append(1) or len(calls), repeats=6, warmup=2)
    assert len(calls) == 8 and stats.results == [3, 4, 5, 6, 7, 8] and len(stats.times) == 6
    summary = stats.to_dict()
    assert summary["n"] == 6 and summary["p90_ms"] >= summary["median_ms"] >= summary["min_ms"] >= 0
    assert benchmark.Stats([0.001, 0.002]).to_dict()["p90_ms"] is None
