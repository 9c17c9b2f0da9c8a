"""The benchmark in quick mode: every figure is printed and written, through the bundle's public functions."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "benchmark.py"

PRINTED = (
    "CPU:",
    "bare forward, batch 1, ms per image: float32",
    "one per core at a time, as a folder run does:",
    "networks per image:",
    "end to end, default outputs, ms per image:",
    "end to end, label maps only, ms per image:",
    "around the network",
    "target around_network_default_ms 15.0:",
    "target around_network_label_maps_ms 8.0:",
    "target forward_share 0.8:",
    "segment_array, 779x583 picture, s per call: first call",
    "a process per call as before the engine",
    "the engine adds to a warm call",
    "target warm_segment_array_s 0.5:",
    "target first_call_ratio 1.1:",
    "lesion descriptors, ms per lesion: median",
    "target descriptors_ms 5.0:",
    "training step, images/s: float32",
)


def test_quick_benchmark_prints_and_writes_every_figure(tmp_path):
    figures = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(figures)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for line in PRINTED:
        assert line in done.stdout, line
    # every network the inference runs is timed: the weights files that inference.json's checkpoint names
    checkpoint = json.loads((REPO_ROOT / "monai_bundle" / "configs" / "inference.json").read_text())["checkpoint"]
    networks = 1 if isinstance(checkpoint, str) else len(checkpoint)
    assert f"networks per image: {networks}" in done.stdout
    report = json.loads(figures.read_text())
    assert len(report["rounds"]) == 2  # --quick runs two rounds; the printed figures are their medians
    for figures in report["rounds"]:
        forward = figures["forward_ms"]
        assert forward["networks"] == networks
        assert forward["float32"] > 0 and forward["configured"] > 0 and forward["configured_one_per_core"] > 0
        bare = min(forward["configured"], forward["configured_one_per_core"])  # the same round's network time
        for key in ("default", "label_maps"):
            assert figures[f"end_to_end_{key}_ms"] > 0
            assert math.isclose(figures[f"around_network_{key}_ms"], figures[f"end_to_end_{key}_ms"] - bare)
    for key in ("default", "label_maps"):
        assert math.isclose(
            report[f"around_network_{key}_ms"],
            sum(figures[f"around_network_{key}_ms"] for figures in report["rounds"]) / 2,
        )
    assert report["training_images_per_s"]["float32"] > 0
    assert report["descriptors_ms"]["lesions"] > 0 and 0 < report["descriptors_ms"]["median"] <= report[
        "descriptors_ms"]["slowest"]
    assert set(report["targets"]) == {
        "around_network_default_ms", "around_network_label_maps_ms", "forward_share", "warm_segment_array_s",
        "first_call_ratio", "descriptors_ms",
    }  # fmt: skip
    # --quick: two rounds of three segment_array calls, the first of each round cold
    calls = report["segment_array"]
    assert len(calls["own_process_s"]) == len(calls["first_call_s"]) == 2
    assert len(calls["warm_s"]) == len(calls["engine_adds_s"]) == 4
    assert math.isclose(report["first_call_ratio"], report["segment_array_first_call_s"]
                        / report["segment_array_own_process_s"])  # fmt: skip
