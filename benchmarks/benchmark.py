"""Speed of the BUSI segmentation bundle on this machine, through its public functions.

Printed, and written to a JSON file:

1. the machine: CPU model, cores, torch threads, whether the CPU computes bf16 natively;
2. the bare forward pass of the inference network (of every network, for an ensemble), per image at batch 1, in
   float32 and in the precision the inference config uses (bf16 where the hardware has it), with every torch thread,
   and in the configured precision one forward per core at a time with one thread each (how a folder run uses the
   cores);
3. the bundle inference end to end, as the marginal time per BUSI-sized image (a long run minus a short run,
   divided by the difference in images, so start-up and weight loading cancel out; both after an untimed warm-up
   run), with the default outputs and with label maps only (no overlays), and the work around the network: end to
   end minus the faster of the two bare forward figures in the configured precision, taken in the same round;
   2 and 3 are measured in several rounds (default 3) and printed as the median with the range;
4. ``BUSISegmentationLib.segment_array`` on the 779x583 sample picture, what a 3D Slicer click costs, in seconds per
   call: the first call of a program (it starts the engine process: Python, ``import monai.bundle``, the networks)
   and the later calls that go to the warm engine, next to a call that starts ``python -m monai.bundle run`` for
   itself, as every call did before the engine; in several rounds, each starting from no engine; and what the engine
   adds to a warm call: the warm call minus a run of the same workflow in the benchmark's own process, taken in
   turns with the warm calls;
5. the lesion descriptors (``scripts.descriptors``, what ``measure_lesions`` adds per lesion), in ms per lesion, on
   the lesions the shipped networks find in the sample pictures, at the pictures' size;
6. training throughput, images/s, of one training step (forward, loss, backward, optimiser) at the training
   batch size, in float32 and in bf16.

Everything is built from the bundle configs with overrides, never re-declared. Run it on an otherwise idle machine.

Usage::

    python benchmarks/benchmark.py [--images 60] [--repeats 10] [--rounds 3] [--calls 10] [--quick]
        [--json /tmp/busi_benchmark.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "monai_bundle"
CONFIGS = BUNDLE / "configs"
BUSI_SIZE = (470, 560)  # rows, columns of a typical BUSI image
SLICER_PICTURE = BUNDLE / "sample_data" / "benign (23).png"  # 779x583
TARGETS = {
    "around_network_default_ms": 15.0, "around_network_label_maps_ms": 8.0, "forward_share": 0.8,
    # seconds of a warm segment_array call; a first call at most this many times one that starts its own process
    "warm_segment_array_s": 0.5, "first_call_ratio": 1.1,
    "descriptors_ms": 5.0,  # per lesion, the slowest lesion
}  # fmt: skip


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def parser_for(configs: list[str], **override) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / name) for name in configs])
    parser.update({"bundle_root": str(BUNDLE), "device": "$torch.device('cpu')", **override})
    return parser


def median_ms(step, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def forward_ms(parser: ConfigParser, image_size: list[int], repeats: int) -> dict[str, float]:
    """Bare forward per image at batch 1: float32 and the configured precision with every torch thread, and the
    configured precision the way a folder run uses the cores (one forward per core at a time, one thread each).

    An ensemble (a list of weights files) runs the same network once per file, one after the other: its figures
    are one network's times the number of files."""
    from scripts.predict import checkpoint_paths
    from scripts.network import MixedPrecision

    network = parser.get_parsed_content("network")
    network.eval()
    networks = len(checkpoint_paths(parser.get_parsed_content("checkpoint")))
    image = torch.rand(1, 1, *image_size)
    figures = {}
    for name, runnable in (("float32", MixedPrecision(network.network, None)), ("configured", network)):
        with torch.inference_mode():
            figures[name] = median_ms(lambda: runnable(image), repeats)
    figures["configured_dtype"] = str(network.dtype).replace("torch.", "") if network.dtype else "float32"

    threads = torch.get_num_threads()

    def forwards(count: int) -> None:
        with torch.inference_mode():
            for _ in range(count):
                network(image)

    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:  # the same threads throughout, as in a folder run
            step = lambda: list(pool.map(forwards, [repeats] * threads))  # noqa: E731
            figures["configured_one_per_core"] = median_ms(step, 3, warmup=1) / (repeats * threads)
    finally:
        torch.set_num_threads(threads)
    figures = {name: value * networks if isinstance(value, float) else value for name, value in figures.items()}
    return {**figures, "networks": networks}


def end_to_end_ms(images: int, size: tuple[int, int], image_size: list[int], overlays: bool) -> float:
    """Marginal time per image of the inference workflow: (long run - short run) / extra images."""
    rng = np.random.default_rng(0)
    short = max(2, images // 10)
    with tempfile.TemporaryDirectory() as folder:
        inputs = Path(folder) / "in"
        inputs.mkdir()
        for index in range(images):
            picture = rng.gamma(4.0, 30.0, size).clip(0, 255).astype(np.uint8)
            Image.fromarray(picture).save(inputs / f"scan{index:04d}.png")

        def seconds(count: int, name: str) -> float:
            files = sorted(str(p) for p in inputs.iterdir())[:count]
            parser = parser_for(
                ["inference.json"], input_files=files, output_dir=str(Path(folder) / name),
                progress="none", overlays=overlays, image_size=image_size,
            )
            runner = parser.get_parsed_content("runner")
            runner.load_weights()
            started = time.perf_counter()
            runner.run()
            return time.perf_counter() - started

        seconds(short, "warm-up")  # one-time costs (kernel selection, lazy imports) must not fall on the short run
        return (seconds(images, "long") - seconds(short, "short")) / (images - short) * 1000


def segment_array_seconds(rounds: int, calls: int) -> dict:
    """Seconds per ``segment_array`` call on the 779x583 sample, on the CPU: in each round a call in a process of
    its own (``monai.bundle run``, as before the engine), then ``calls`` calls from no engine: the first starts it,
    the others go to it warm, each followed by the same workflow run in this process (its difference to the warm
    call is what the engine adds: files, process, polling)."""
    sys.path.insert(0, str(REPO_ROOT / "BUSISegmentation"))
    from BUSISegmentationLib import build_command, read_result, segment_array, stop_engine, write_input

    picture = np.asarray(Image.open(SLICER_PICTURE))[np.newaxis]
    figures: dict[str, list[float]] = {"own_process_s": [], "first_call_s": [], "warm_s": [], "engine_adds_s": []}
    with tempfile.TemporaryDirectory() as folder:
        input_file = write_input(picture, None, (0.0, 0.0, 0.0), None, Path(folder) / "input" / "image.nrrd")
        output = Path(folder) / "output"
        in_process = parser_for(
            ["inference.json"], input_files=[str(input_file)], output_dir=str(output), formats=["nifti"],
            overlays=False, progress="none",
        ).get_parsed_content("runner")
        in_process.run()  # weights and one-time costs
        for _ in range(rounds):
            started = time.perf_counter()
            write_input(picture, None, (0.0, 0.0, 0.0), None, input_file)
            subprocess.run(build_command(sys.executable, BUNDLE, input_file, output, "cpu"), check=True,
                           capture_output=True)  # fmt: skip
            read_result(output, "image")
            figures["own_process_s"].append(time.perf_counter() - started)
            stop_engine()
            for call in range(calls):
                started = time.perf_counter()
                segment_array(picture, spacing=None, device="cpu")
                seconds = time.perf_counter() - started
                if not call:
                    figures["first_call_s"].append(seconds)
                    continue
                figures["warm_s"].append(seconds)
                started = time.perf_counter()
                in_process.run()
                figures["engine_adds_s"].append(seconds - (time.perf_counter() - started))
            stop_engine()
    return figures


def training_images_per_second(image_size: list[int], repeats: int) -> dict[str, float]:
    """One training step at the training batch size, float32 and bf16 (where supported)."""
    from scripts.network import mixed_precision_dtype

    figures = {}
    for name, enabled in (("float32", False), ("bf16", True)):
        if enabled and mixed_precision_dtype("cpu") is None:
            figures[name] = float("nan")
            continue
        parser = parser_for(["inference.json", "train.json"], mixed_precision=enabled)
        network, loss, optimizer = (parser.get_parsed_content(k) for k in ("network", "loss", "optimizer"))
        batch_size = parser.get_parsed_content("batch_size")
        images = torch.rand(batch_size, 1, *image_size)
        labels = torch.randint(0, 3, (batch_size, 1, *image_size)).float()
        network.train()

        def step() -> None:
            optimizer.zero_grad()
            loss(network(images), labels).backward()
            optimizer.step()

        figures[name] = batch_size / median_ms(step, max(2, repeats // 3), warmup=1) * 1000
    return figures


def descriptor_ms(repeats: int) -> dict:
    """Milliseconds per lesion of the lesion descriptors, each lesion's median over ``repeats`` runs, for every lesion
    the shipped networks find in the sample pictures (a lesion's mask cut from the lesion map, then the
    descriptors, as ``measure_lesions`` does)."""
    from scipy import ndimage

    from scripts.descriptors import describe_lesion
    from scripts.reader import read_image

    runner = parser_for(["inference.json"]).get_parsed_content("runner")
    per_lesion = []
    for path in sorted((BUNDLE / "sample_data").glob("*.png")):
        image = read_image(path)
        grey = image.frames[0]
        numbers, count = ndimage.label(runner.segment(image).labels[0] > 0)
        for k in range(1, count + 1):
            per_lesion.append(median_ms(lambda: describe_lesion(numbers == k, grey, (0.1, 0.1)), repeats))
    return {"lesions": len(per_lesion), "median": statistics.median(per_lesion), "slowest": max(per_lesion)}


def measure_round(image_size: list[int], size: tuple[int, int], images: int, repeats: int) -> dict:
    """One round: the bare forward, then both end-to-end runs right after it, so that the work around the network
    is the difference of figures taken seconds apart (a shared machine's speed drifts over minutes)."""
    forward = forward_ms(parser_for(["inference.json"], image_size=image_size), image_size, repeats)
    # the work around the network is measured against the faster of the two ways of running the network
    bare = min(forward["configured"], forward["configured_one_per_core"])
    figures: dict = {"forward_ms": forward}
    for key, overlays in (("default", True), ("label_maps", False)):
        total = end_to_end_ms(images, size, image_size, overlays)
        figures[f"end_to_end_{key}_ms"], figures[f"around_network_{key}_ms"] = total, total - bare
        figures[f"forward_share_{key}"] = bare / total
    return figures


def per_round(rounds: list[dict], *keys: str) -> list[float]:
    """One figure of every round, found by its keys (e.g. "forward_ms", "float32")."""
    values = []
    for figures in rounds:
        for key in keys:
            figures = figures[key]
        values.append(figures)
    return values


def median_of(rounds: list[dict], *keys: str) -> float:
    return statistics.median(per_round(rounds, *keys))


def median_range(values: list[float], digits: int = 1) -> str:
    """The median, and the range when there are several values."""
    text = f"{statistics.median(values):.{digits}f}"
    return text if len(values) == 1 else f"{text} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def spread(rounds: list[dict], *keys: str, digits: int = 1) -> str:
    """The median over the rounds, and their range when there are several."""
    return median_range(per_round(rounds, *keys), digits)


def main(argv: list[str] | None = None) -> dict:
    options = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    options.add_argument("--images", type=int, default=60, help="BUSI-sized pictures for the end-to-end runs")
    options.add_argument("--repeats", type=int, default=10, help="timed runs of each forward / training step")
    options.add_argument("--rounds", type=int, default=3, help="rounds of forward and end-to-end runs; medians")
    options.add_argument("--calls", type=int, default=10, help="segment_array calls per round, the first one cold")
    options.add_argument("--quick", action="store_true", help="tiny sizes to check that it works; not representative")
    options.add_argument("--json", type=Path, default=Path("/tmp/busi_benchmark.json"), help="where figures go")
    args = options.parse_args(argv)
    image_size, size, images, repeats = [256, 256], BUSI_SIZE, args.images, args.repeats
    if args.quick:
        image_size, size, images, repeats = [64, 64], (BUSI_SIZE[0] // 4, BUSI_SIZE[1] // 4), 20, 2
        args.rounds, args.calls = min(args.rounds, 2), min(args.calls, 3)
    sys.path.insert(0, str(BUNDLE))  # the bundle's scripts, as its configs' "initialize" does
    from scripts.network import mixed_precision_dtype

    report: dict = {
        "cpu": cpu_model(), "cores": torch.get_num_threads(), "torch": torch.__version__,
        "cpu_bf16": mixed_precision_dtype("cpu") is not None, "network_input": image_size, "picture_size": size,
    }
    print(f"CPU: {report['cpu']}; torch threads {report['cores']}; native bf16: {report['cpu_bf16']}")
    rounds = [measure_round(image_size, size, images, repeats) for _ in range(args.rounds)]
    report["rounds"] = rounds
    report["forward_ms"] = forward = {
        name: median_of(rounds, "forward_ms", name) if isinstance(value, float) else value
        for name, value in rounds[0]["forward_ms"].items()
    }
    print(f"bare forward, batch 1, ms per image: float32 {spread(rounds, 'forward_ms', 'float32')}, "
          f"inference precision ({forward['configured_dtype']}) {spread(rounds, 'forward_ms', 'configured')}; "
          f"one per core at a time, as a folder run does: {spread(rounds, 'forward_ms', 'configured_one_per_core')}; "
          f"networks per image: {forward['networks']}")
    for label, key in (("default outputs", "default"), ("label maps only", "label_maps")):
        for name in (f"end_to_end_{key}_ms", f"around_network_{key}_ms", f"forward_share_{key}"):
            report[name] = median_of(rounds, name)
        print(f"end to end, {label}, ms per image: {spread(rounds, f'end_to_end_{key}_ms')}; "
              f"around the network {spread(rounds, f'around_network_{key}_ms')}; "
              f"forward / end to end {spread(rounds, f'forward_share_{key}', digits=2)}")
    calls = report["segment_array"] = segment_array_seconds(args.rounds, args.calls)
    for name in ("own_process_s", "first_call_s", "warm_s", "engine_adds_s"):
        report[f"segment_array_{name}"] = statistics.median(calls[name])
    report["first_call_ratio"] = report["segment_array_first_call_s"] / report["segment_array_own_process_s"]
    print(f"segment_array, 779x583 picture, s per call: first call {median_range(calls['first_call_s'], 2)}, "
          f"warm {median_range(calls['warm_s'], 2)} ({len(calls['warm_s'])} calls); a process per call as before "
          f"the engine {median_range(calls['own_process_s'], 2)}; "
          f"first call / process per call {report['first_call_ratio']:.2f}; the engine adds to a warm call "
          f"{median_range(calls['engine_adds_s'], 2)}")
    descriptors = report["descriptors_ms"] = descriptor_ms(max(repeats, 20))
    print(f"lesion descriptors, ms per lesion: median {descriptors['median']:.2f}, "
          f"slowest {descriptors['slowest']:.2f} ({descriptors['lesions']} lesions of the sample pictures)")
    checks = {
        "around_network_default_ms": report["around_network_default_ms"] <= TARGETS["around_network_default_ms"],
        "around_network_label_maps_ms": report["around_network_label_maps_ms"]
        <= TARGETS["around_network_label_maps_ms"],
        "forward_share": report["forward_share_default"] >= TARGETS["forward_share"],
        "warm_segment_array_s": report["segment_array_warm_s"] <= TARGETS["warm_segment_array_s"],
        "first_call_ratio": report["first_call_ratio"] <= TARGETS["first_call_ratio"],
        "descriptors_ms": descriptors["slowest"] <= TARGETS["descriptors_ms"],
    }
    for name, passed in checks.items():
        print(f"target {name} {TARGETS[name]}: {'PASS' if passed else 'FAIL'}")
    report["targets"] = {name: {"target": TARGETS[name], "passed": passed} for name, passed in checks.items()}
    training = training_images_per_second(image_size, repeats)
    report["training_images_per_s"] = training
    print(f"training step, images/s: float32 {training['float32']:.1f}, bf16 {training['bf16']:.1f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"figures written to {args.json}")
    return report


if __name__ == "__main__":
    main()
