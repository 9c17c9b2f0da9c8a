"""Speed and memory of the BUSI segmentation bundle on this machine.

Measured, each as a median (and p90 where there are enough runs) after warm-up runs:

1. the machine: CPU model, cores, threads, library versions, load average at the start;
2. the bare network forward pass per image at batch 1 and batch 8 in PyTorch eager mode, TorchScript and
   ONNX Runtime, and how far their softmax probabilities are from eager mode;
3. the bundle inference per image over synthetic BUSI-sized PNGs (``SegmentationRunner.run()`` built from
   ``configs/inference.json``, start-up excluded), its throughput relative to the bare eager network, and one
   file's time split into read / preprocess / forward / postprocess / write;
4. warm single-image latency through ``run()``, and the cold start of the bundle command line with its parts;
5. CPU training throughput of ``train#trainer`` from ``configs/train.json`` and the share of each step spent
   waiting for the DataLoader;
6. peak resident memory of the bundle command line over all images and of training.

The network, transforms, runner and trainer are built from the bundle configs with overrides, never re-declared.
Every target is printed with PASS or FAIL; all figures also go to a JSON file.

Usage::

    python benchmarks/benchmark.py [--repeats 20] [--warmup 3] [--n-images 100] [--threads N]
                                   [--skip-training] [--quick] [--json /tmp/busi_benchmark.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import monai
import numpy as np
import psutil
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser
from monai.utils import optional_import
from PIL import Image
from scipy import ndimage

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "monai_bundle"
INFERENCE_CONFIG = BUNDLE / "configs" / "inference.json"
TRAIN_CONFIG = BUNDLE / "configs" / "train.json"
CHECKPOINT = BUNDLE / "models" / "model.pt"
if str(BUNDLE) not in sys.path:
    # the configs' ``scripts.*`` components
    sys.path.insert(1, str(BUNDLE))

TOLERANCE = 1e-4  # max |softmax difference| allowed between a runtime and eager PyTorch
MIN_RUNS_FOR_P90 = 5
BUSI_SIZE = (470, 560)  # rows, columns of a typical BUSI picture
BATCH_SIZES = (1, 8)
# stage name -> SegmentationRunner attribute that performs it
RUNNER_STAGES = {"preprocess": "preprocessing", "forward": "inferer", "postprocess": "postprocessing"}
TARGETS = {
    "throughput_ratio": (">=", 0.8),
    "warm_latency_ms": ("<=", 60.0),
    "cold_start_ms": ("<=", 5000.0),
    "data_wait_percent": ("<=", 10.0),
    "max_abs_diff": ("<=", TOLERANCE),
}
# How to measure the start-up parts in a fresh interpreter: it prints perf_counter marks after each part.
START_UP_PARTS = ("import torch", "import monai", "parse config, build runner", "load weights")
START_UP_PROBE = """
import json, sys, time
marks = [time.perf_counter()]
import torch
marks.append(time.perf_counter())
import monai
from monai.bundle import ConfigParser
marks.append(time.perf_counter())
parser = ConfigParser()
parser.read_config(sys.argv[1])
parser.update(json.loads(sys.argv[2]))
parser.get_parsed_content("initialize")
runner = parser.get_parsed_content("runner")
marks.append(time.perf_counter())
runner.load_weights()
marks.append(time.perf_counter())
print(json.dumps(marks))
"""


@dataclass
class Settings:
    """What to measure and how often.

    Args:
        repeats: timed runs of each measurement (training iterations too).
        warmup: untimed runs before them.
        heavy_repeats: timed runs of the measurements that take seconds each (a pass over all pictures, a fresh
            process).
        heavy_warmup: untimed fresh processes before the timed ones (a pass over all pictures always has one).
        n_images: synthetic pictures for the bundle inference.
        threads: torch intra-op threads, also ONNX Runtime's and the subprocesses' ``OMP_NUM_THREADS``.
        image_size: network input side (the bundle's ``image_size``).
        picture_scale: size of the synthetic pictures relative to a BUSI picture (560x470).
        skip_training: leave out the training measurement.
        quick: tiny sizes, to check that the benchmark works.
        json_path: where the figures are written.
    """

    repeats: int
    warmup: int
    heavy_repeats: int
    heavy_warmup: int
    n_images: int
    threads: int
    image_size: int
    picture_scale: float
    skip_training: bool
    quick: bool
    json_path: Path


@dataclass
class Stats:
    """Timed runs of one measurement.

    Args:
        times: seconds of each timed run.
        results: what each timed call returned.
    """

    times: list[float]
    results: list[Any] = field(default_factory=list, repr=False)

    @property
    def median_ms(self) -> float:
        return 1e3 * float(np.median(self.times))

    @property
    def p90_ms(self) -> float | None:
        return 1e3 * float(np.percentile(self.times, 90)) if len(self.times) >= MIN_RUNS_FOR_P90 else None

    def per(self, count: float) -> Stats:
        """The same runs divided by ``count`` (e.g. per image of a batch)."""
        return Stats([t / count for t in self.times])

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "median_ms": round(self.median_ms, 3),
            "p90_ms": None if self.p90_ms is None else round(self.p90_ms, 3),
            "min_ms": round(1e3 * min(self.times), 3),
            "n": len(self.times),
        }


def measure(fn: Callable[[], Any], repeats: int, warmup: int) -> Stats:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed with ``time.perf_counter``.

    Args:
        fn: the work to time; its return values are kept in ``Stats.results``.
        repeats: timed calls (at least one).
        warmup: untimed calls first.
    """
    for _ in range(warmup):
        fn()
    times, results = [], []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        results.append(fn())
        times.append(time.perf_counter() - start)
    return Stats(times, results)


def log(message: str) -> None:
    """Progress on stderr, so that stdout holds only the report."""
    print(f"[benchmark {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or what the platform reports."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """CPU, cores, threads, memory, load and library versions."""
    ort, has_ort = optional_import("onnxruntime")
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "onnxruntime": ort.__version__ if has_ort else "not installed",
    }


def synthetic_scan(
    rng: np.random.Generator, shape: tuple[int, int], lesion: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """A B-mode-like grey picture: correlated speckle, darker with depth, with one dark elliptical lesion.

    Args:
        rng: random generator.
        shape: (rows, columns).
        lesion: whether to draw a lesion.

    Returns:
        the uint8 picture and the boolean lesion mask.
    """
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    speckle = ndimage.gaussian_filter(rng.gamma(4.0, 0.25, shape), 1.2)
    picture = 150 * (1.0 - 0.5 * rows / shape[0]) * speckle / speckle.mean()
    centre = rng.uniform(0.3, 0.7, 2) * shape
    radii = rng.uniform(0.06, 0.2, 2) * shape
    mask = ((rows - centre[0]) / radii[0]) ** 2 + ((cols - centre[1]) / radii[1]) ** 2 <= 1
    mask &= lesion
    picture[mask] *= 0.3
    return np.clip(picture, 0, 255).astype(np.uint8), mask


def picture_shape(rng: np.random.Generator, scale: float) -> tuple[int, int]:
    """A BUSI-like picture size, +-10 % around 560x470 times ``scale``."""
    return tuple(max(32, int(side * scale * rng.uniform(0.9, 1.1))) for side in BUSI_SIZE)


def write_pictures(folder: Path, count: int, scale: float, seed: int = 0) -> list[Path]:
    """Write ``count`` synthetic grey PNGs; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for n in range(count):
        picture, _ = synthetic_scan(rng, picture_shape(rng, scale))
        paths.append(folder / f"scan_{n:04d}.png")
        Image.fromarray(picture, mode="L").save(paths[-1])
    return paths


def write_training_set(folder: Path, count: int, scale: float, seed: int = 1) -> list[dict[str, str]]:
    """Write pictures and prepared 0/1/2 label maps (normal, benign, malignant in turn); returns the datalist."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    items = []
    for n in range(count):
        label = n % 3
        picture, mask = synthetic_scan(rng, picture_shape(rng, scale), lesion=label > 0)
        image_path, label_path = folder / f"case_{n:04d}.png", folder / f"case_{n:04d}_label.png"
        Image.fromarray(picture, mode="L").save(image_path)
        Image.fromarray(mask.astype(np.uint8) * label, mode="L").save(label_path)
        items.append({"image": str(image_path), "label": str(label_path)})
    return items


def inference_parser(settings: Settings, **overrides: Any) -> ConfigParser:
    """``configs/inference.json`` on the CPU at the chosen input size, with ``overrides``, initialised."""
    parser = ConfigParser()
    parser.read_config(str(INFERENCE_CONFIG))
    parser.update(
        {
            "bundle_root": str(BUNDLE),
            "device": "$torch.device('cpu')",
            "image_size": [settings.image_size] * 2,
            "progress": "none",
            **overrides,
        }
    )
    parser.get_parsed_content("initialize")
    return parser


def load_weights(network: torch.nn.Module) -> str:
    """Load ``models/model.pt`` into ``network`` when it can be read and switch to eval mode.

    Returns:
        which weights the network has, for the report.
    """
    try:
        network.load_state_dict(torch.load(CHECKPOINT, map_location="cpu", weights_only=True))
        weights = str(CHECKPOINT.relative_to(REPO_ROOT))
    except FileNotFoundError:
        weights = f"random ({CHECKPOINT.relative_to(REPO_ROOT)} absent)"
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as error:
        weights = f"random ({CHECKPOINT.relative_to(REPO_ROOT)} unreadable: {str(error).splitlines()[0]})"
    network.eval()
    return weights


def in_inference_mode(model: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` called under ``torch.inference_mode()``, so that every runtime is timed alike."""

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(batch)

    return run


def torchscript_runtimes(network: torch.nn.Module, example: torch.Tensor) -> dict[str, Callable]:
    """The network traced with ``torch.jit.trace``, as is and after ``torch.jit.optimize_for_inference``."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(network, example)
        optimised = torch.jit.optimize_for_inference(traced)  # freezes a copy; ``traced`` is unchanged
    return {"torchscript": in_inference_mode(traced), "torchscript-optimized": in_inference_mode(optimised)}


def onnx_runtime(network: torch.nn.Module, example: torch.Tensor, threads: int, folder: Path) -> Callable | str:
    """The network exported to ONNX and run by ONNX Runtime's CPU provider with all graph optimisations.

    Returns:
        a batch -> logits function, or why there is none.
    """
    ort, has_ort = optional_import("onnxruntime")
    if not has_ort:
        return "onnxruntime not installed"
    path = folder / "network.onnx"
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(
            io.StringIO()
        ):
            warnings.simplefilter("ignore")
            # the TorchScript-based exporter needs no onnxscript; the batch axis stays free
            torch.onnx.export(
                network,
                (example,),
                str(path),
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
    except Exception as error:  # an exporter failure must not stop the other measurements
        return f"ONNX export failed: {str(error).splitlines()[0]}"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda batch: torch.from_numpy(session.run(None, {"image": batch.numpy()})[0])


def network_figures(network: torch.nn.Module, example: torch.Tensor) -> dict[str, float]:
    """Parameters (millions) and GFLOPs per image (FLOPs = 2 x multiply-adds, counted by torch)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        network(example)
    return {
        "parameters_m": round(sum(p.numel() for p in network.parameters()) / 1e6, 3),
        "gflops_per_image": round(counter.get_total_flops() / 1e9, 3),
    }


def max_prob_difference(runtime: Callable, reference: torch.Tensor, batch: torch.Tensor) -> float:
    """Largest absolute difference between ``runtime``'s softmax probabilities and ``reference``."""
    return float((runtime(batch).float().softmax(1) - reference).abs().max())


def bench_network(network: torch.nn.Module, settings: Settings, folder: Path) -> dict[str, Any]:
    """Forward time per image of each runtime at each batch size, agreement with eager, the fastest."""
    side = settings.image_size
    generator = torch.Generator().manual_seed(0)
    inputs = {b: torch.rand(b, 1, side, side, generator=generator) for b in BATCH_SIZES}
    runtimes: dict[str, Callable | str] = {"eager": in_inference_mode(network)}
    runtimes.update(torchscript_runtimes(network, inputs[1]))
    runtimes["onnxruntime"] = onnx_runtime(network, inputs[1], settings.threads, folder)
    reference = runtimes["eager"](inputs[max(BATCH_SIZES)]).softmax(1)
    # TorchScript's profiling executor optimises the graph during its first two calls: warm up at least twice
    warmup = max(settings.warmup, 2)
    figures: dict[str, Any] = {**network_figures(network, inputs[1]), "runtimes": {}}
    for name, runtime in runtimes.items():
        if isinstance(runtime, str):
            figures["runtimes"][name] = {"skipped": runtime}
            continue
        log(f"network forward: {name}")
        entry = {
            f"batch{b}": measure(lambda: runtime(inputs[b]), settings.repeats, warmup).per(b).to_dict()
            for b in BATCH_SIZES
        }
        entry["max_abs_diff"] = max_prob_difference(runtime, reference, inputs[max(BATCH_SIZES)])
        figures["runtimes"][name] = entry
    measured = {k: v for k, v in figures["runtimes"].items() if "skipped" not in v}
    figures["fastest"] = {
        f"batch{b}": min(measured, key=lambda k: measured[k][f"batch{b}"]["median_ms"]) for b in BATCH_SIZES
    }
    return figures


def point_runner(runner: Any, input_files: Sequence[Path], output_dir: Path) -> Any:
    """Direct the configured runner at other inputs (its constructor arguments are plain attributes)."""
    runner.input_dir, runner.input_files, runner.output_dir = None, [str(p) for p in input_files], output_dir
    return runner


class StageClock:
    """Times of wrapped callables, by stage name; wrappers time each call with :func:`measure`."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)

    def wrap(self, stage: str, fn: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            stats = measure(lambda: fn(*args, **kwargs), repeats=1, warmup=0)
            self.times[stage] += stats.times
            return stats.results[0]

        return timed


def stage_breakdown(runner: Any, pictures: Sequence[Path], output_dir: Path) -> dict[str, Any]:
    """One file's time in each stage of ``runner.run()``, by wrapping the stages for one run (no code is changed).

    ``read`` runs in the runner's reader thread, overlapped with the other stages; ``other`` is the rest of the
    wall time per file in the main thread (tensor conversions, waiting for the reader, the loop itself).
    """
    module = sys.modules[type(runner).__module__]
    clock = StageClock()
    point_runner(runner, pictures, output_dir)
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(module, "read_image", clock.wrap("read", module.read_image)))
        stack.enter_context(mock.patch.object(module, "write_outputs", clock.wrap("write", module.write_outputs)))
        for stage, attribute in RUNNER_STAGES.items():
            stack.enter_context(mock.patch.object(runner, attribute, clock.wrap(stage, getattr(runner, attribute))))
        wall = measure(runner.run, repeats=1, warmup=0).times[0]
    main_thread = ("preprocess", "forward", "postprocess", "write")
    stages: dict[str, Any] = {name: Stats(clock.times[name]).to_dict() for name in ("read", *main_thread)}
    stages["other"] = Stats([(wall - sum(sum(clock.times[name]) for name in main_thread)) / len(pictures)]).to_dict()
    stages["files"] = len(pictures)
    return stages


def build_runner(settings: Settings, folder: Path) -> tuple[Any, str]:
    """The bundle's ``runner`` from ``configs/inference.json``, with the weights loaded; and which weights."""
    parser = inference_parser(settings, checkpoint=None, input_dir=None, input_files=[], output_dir=str(folder))
    runner = parser.get_parsed_content("runner")
    return runner, load_weights(runner.network)


def bench_inference(runner: Any, settings: Settings, pictures: Sequence[Path], folder: Path) -> dict[str, Any]:
    """Bundle inference per image over all pictures, per stage on a few, and for one picture alone."""
    log(f"bundle inference over {len(pictures)} pictures")
    point_runner(runner, pictures, folder / "all")
    run_all = measure(runner.run, settings.heavy_repeats, warmup=min(settings.warmup, 1))
    figures: dict[str, Any] = {"end_to_end_per_image": run_all.per(len(pictures)).to_dict()}
    figures["stages"] = stage_breakdown(runner, pictures[: min(len(pictures), 10)], folder / "stages")
    log("warm single-image latency")
    point_runner(runner, pictures[:1], folder / "one")
    figures["warm_latency"] = measure(runner.run, settings.repeats, settings.warmup).to_dict()
    return figures


def peak_rss_mib(pid: int | None = None) -> float:
    """Peak resident memory of a live process so far, in MiB (0 when it cannot be read).

    Linux's ``VmHWM`` belongs to the process's current memory map, so unlike ``ru_maxrss`` it does not include
    the memory of the parent that forked it; elsewhere the current RSS is returned.
    """
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).memory_info().rss / 2**20
    return 0.0


def run_process(command: list[str], env: dict[str, str]) -> tuple[str, float]:
    """Run ``command`` from the repository root to its exit, sampling its peak memory every 20 ms.

    Returns:
        its standard output and its peak resident memory in MiB.

    Raises:
        RuntimeError: the command failed; the message ends with its error output.
    """
    peak = 0.0
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=err, text=True)
        while process.poll() is None:
            peak = max(peak, peak_rss_mib(process.pid))
            time.sleep(0.02)
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:4])} ... exited with {process.returncode}:\n{err.read()[-2000:]}")
        return out.read(), peak


def child_env(threads: int) -> dict[str, str]:
    """Environment of the subprocesses: the benchmark's thread count, no progress bars."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}


def bundle_command(output_dir: Path, input_files: Sequence[Path] = (), input_dir: Path | None = None) -> list[str]:
    """The bundle inference command line, as a user runs it from the repository root."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "monai_bundle/configs/inference.json"]
    if input_files:
        command += ["--input_files", repr([str(p) for p in input_files])]
    if input_dir is not None:
        command += ["--input_dir", str(input_dir)]
    command += ["--output_dir", str(output_dir), "--progress", "none"]
    # without weights the command would stop; it then runs with random ones
    return command if CHECKPOINT.is_file() else command + ["--checkpoint", "None"]


def start_up_parts(picture: Path, settings: Settings, folder: Path) -> dict[str, float]:
    """Median time of each part of a cold start, in seconds, from fresh interpreters running ``START_UP_PROBE``.

    The parts are a bare interpreter's start and exit, the probe's marked parts, and the probe's exit beyond a bare
    interpreter's (finalising a process that imported torch and MONAI takes a while).
    """
    env = child_env(settings.threads)
    overrides = {
        "bundle_root": str(BUNDLE),
        "input_files": [str(picture)],
        "output_dir": str(folder),
        "progress": "none",
        "checkpoint": str(CHECKPOINT) if CHECKPOINT.is_file() else None,
    }
    command = [sys.executable, "-c", START_UP_PROBE, str(INFERENCE_CONFIG), json.dumps(overrides)]
    probes = measure(lambda: run_process(command, env), settings.heavy_repeats, 0)
    marks = np.array([json.loads(out.strip().splitlines()[-1]) for out, _ in probes.results])
    bare = float(np.median(measure(lambda: run_process([sys.executable, "-c", "pass"], env), 3, 1).times))
    parts = {"python start and exit": bare}
    parts.update({k: float(v) for k, v in zip(START_UP_PARTS, np.median(np.diff(marks, axis=1), axis=0))})
    parts["exit after the imports"] = float(np.median(np.array(probes.times) - (marks[:, -1] - marks[:, 0]))) - bare
    return parts


def bench_start_up(pictures: Sequence[Path], settings: Settings, folder: Path) -> dict[str, Any]:
    """Cold start of the bundle command line on one picture, its parts, and the command over all pictures."""
    env = child_env(settings.threads)
    log("cold start of the bundle command line")
    cold = measure(
        lambda: run_process(bundle_command(folder / "cold", pictures[:1]), env),
        settings.heavy_repeats,
        settings.heavy_warmup,
    )
    parts = start_up_parts(pictures[0], settings, folder / "probe")
    parts["rest: command-line set-up, segment and write"] = float(np.median(cold.times)) - sum(parts.values())
    log(f"bundle command line over {len(pictures)} pictures")
    command = bundle_command(folder / "all", input_dir=pictures[0].parent)
    all_pictures = measure(lambda: run_process(command, env), repeats=1, warmup=0)
    return {
        "cold_start": cold.to_dict(),
        "cold_start_parts_s": {k: round(v, 3) for k, v in parts.items()},
        "cold_start_peak_rss_mib": round(max(rss for _, rss in cold.results), 1),
        "all_pictures_wall_s": round(all_pictures.times[0], 3),
        "all_pictures_peak_rss_mib": round(all_pictures.results[0][1], 1),
        "weights": str(CHECKPOINT.relative_to(REPO_ROOT)) if CHECKPOINT.is_file() else "random (--checkpoint None)",
    }


class IterationProbe:
    """Per training iteration: time waiting for the DataLoader, time in the step, batch size and CPU times.

    The step is everything from ``ITERATION_STARTED`` to the last ``ITERATION_COMPLETED`` handler: moving the batch,
    forward, loss, backward, optimiser step, postprocessing and the training metric. CPU times of this process and
    of its DataLoader workers are read after each iteration (a few /proc reads).
    """

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.steps: list[float] = []
        self.images: list[int] = []
        self.cpu: list[tuple[float, float]] = []  # (main process, workers) CPU seconds, at start and per iteration
        self._started = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._sample)
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._start)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._fetched)
        engine.add_event_handler(Events.ITERATION_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._stepped)

    def _start(self, engine: Engine) -> None:
        self._started = time.perf_counter()

    def _fetched(self, engine: Engine) -> None:
        self.waits.append(time.perf_counter() - self._started)
        self.images.append(len(engine.state.batch["image"]))

    def _stepped(self, engine: Engine) -> None:
        self.steps.append(time.perf_counter() - self._started)
        self._sample(engine)

    def _sample(self, engine: Engine) -> None:
        main = psutil.Process()
        workers = main.children(recursive=True)
        self.cpu.append((sum(main.cpu_times()[:2]), sum(sum(w.cpu_times()[:2]) for w in workers)))

    def summary(self, warmup: int) -> dict[str, Any]:
        """Figures over the iterations after the first ``warmup``."""
        waits, steps, images = self.waits[warmup:], self.steps[warmup:], self.images[warmup:]
        (main0, workers0), (main1, workers1) = self.cpu[warmup], self.cpu[-1]
        main_cpu, workers_cpu = main1 - main0, workers1 - workers0
        return {
            "iterations": len(steps),
            "batch_size": int(np.median(images)),
            "images_per_s": round(sum(images) / (sum(waits) + sum(steps)), 3),
            "data_wait": Stats(waits).to_dict(),
            "step": Stats(steps).to_dict(),
            "data_wait_percent": round(100 * sum(waits) / (sum(waits) + sum(steps)), 2),
            "workers_cpu_percent": round(100 * workers_cpu / max(1e-9, main_cpu + workers_cpu), 2),
        }


def bench_training(
    settings: Settings, datalist: list[dict[str, str]], folder: str, start_method: str
) -> dict[str, Any]:
    """Training throughput of ``train#trainer`` from ``configs/train.json`` (run in a fresh process).

    The trainer runs ``warmup + repeats`` iterations of one epoch, with the config's DataLoader (its workers doing
    the random augmentation of cached images), loss, optimiser, postprocessing and training metric; the handlers
    (validation, logging, checkpoints) are left out.

    Args:
        settings: sizes and repeats.
        datalist: training items, ``{"image": path, "label": path}``.
        folder: for the trainer's outputs.
        start_method: how the DataLoader starts its workers: the platform's default, as in a real training run
            (a spawned process would otherwise spawn them too).
    """
    multiprocessing.set_start_method(start_method, force=True)
    torch.set_num_threads(settings.threads)
    parser = ConfigParser()
    parser.read_config(str(TRAIN_CONFIG))
    parser.update(
        {
            "bundle_root": str(BUNDLE),
            "output_dir": folder,
            "ckpt_dir": folder,
            "device": "$torch.device('cpu')",
            "image_size": [settings.image_size] * 2,
            "datalist": {"training": datalist, "validation": [], "test": []},
            "max_epochs": 1,
            "train#handlers": [],
            "train#dataset#progress": False,
            "train#trainer#epoch_length": settings.warmup + settings.repeats,
        }
    )
    trainer = parser.get_parsed_content("train#trainer")
    probe = IterationProbe()
    probe.attach(trainer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.run()
    workers = psutil.Process().children(recursive=True)
    return {
        **probe.summary(settings.warmup),
        "main_peak_rss_mib": round(peak_rss_mib(), 1),
        # unique pages only: a forked worker shares most of its memory with the main process
        "workers_unique_mib": round(sum(w.memory_full_info().uss for w in workers) / 2**20, 1),
        "num_workers": parser.get_parsed_content("num_workers"),
    }


def bench_training_in_fresh_process(settings: Settings, folder: Path) -> dict[str, Any]:
    """Write a training set as large as the iterations need; time training in a spawned process.

    A fresh process makes its peak resident memory that of training alone.
    """
    batch_size = ConfigParser.load_config_file(str(TRAIN_CONFIG))["batch_size"]
    # one epoch covers all iterations, as in a real run (about 39 iterations per epoch on BUSI)
    count = (settings.warmup + settings.repeats) * batch_size
    log(f"training: writing {count} synthetic cases")
    datalist = write_training_set(folder / "data", count, settings.picture_scale)
    log("training: caching and timing in a fresh process")
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        start_method = multiprocessing.get_start_method()
        return pool.submit(bench_training, settings, datalist, str(folder / "run"), start_method).result()


def check_targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target's measured value, limit and verdict (only those whose figure was measured)."""
    measured = {
        "max_abs_diff": max(
            (r["max_abs_diff"] for r in results["network"]["runtimes"].values() if "max_abs_diff" in r), default=None
        ),
        "throughput_ratio": results["inference"].get("throughput_ratio"),
        "warm_latency_ms": results["inference"]["warm_latency"]["median_ms"],
        "cold_start_ms": results["start_up"]["cold_start"]["median_ms"],
        "data_wait_percent": results.get("training", {}).get("data_wait_percent"),
    }
    targets = {}
    for name, (sign, limit) in TARGETS.items():
        value = measured[name]
        if value is not None:
            passed = value >= limit if sign == ">=" else value <= limit
            targets[name] = {"value": value, "target": f"{sign} {limit:g}", "pass": bool(passed)}
    return targets


def verdict(results: dict[str, Any], name: str) -> str:
    """``'<= 60  PASS'`` for a measured target, '' otherwise."""
    target = results["targets"].get(name)
    return f"{target['target']:>8}  {'PASS' if target['pass'] else 'FAIL'}" if target else ""


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def stats_row(label: str, stats: dict[str, Any], note: str = "") -> str:
    """A table row: label, median and p90 in ms, number of runs, a note."""
    return f"  {label:<52}{fmt(stats['median_ms'], 2):>10}{fmt(stats['p90_ms'], 2):>10}{stats['n']:>5}  {note}"


def value_row(label: str, value: str, note: str = "") -> str:
    """A table row with one value in the median column."""
    return f"  {label:<52}{value:>10}{'':>15}  {note}"


def header(title: str) -> list[str]:
    return ["", title, f"  {'':<52}{'median':>10}{'p90':>10}{'n':>5}"]


def report_machine(results: dict[str, Any]) -> list[str]:
    m, s, n = results["machine"], results["settings"], results["network"]
    return [
        f"BUSI bundle benchmark{' (quick mode: tiny sizes, not representative)' if s['quick'] else ''}",
        f"  CPU: {m['cpu']}; {m['logical_cores']} logical / {m['physical_cores']} physical cores; "
        f"{m['memory_gib']} GiB; load average at start {m['load_average_1min']}",
        f"  torch threads {m['torch_threads']}; python {m['python']}, torch {m['torch']}, monai {m['monai']}, "
        f"onnxruntime {m['onnxruntime']}",
        f"  network: input 1x{s['image_size']}x{s['image_size']}, {n['parameters_m']} M parameters, "
        f"{n['gflops_per_image']} GFLOPs per image (FLOPs = 2 x multiply-adds)",
        f"  weights: {results['inference']['weights']}",
        f"  runs: {s['repeats']} timed after {s['warmup']} warm-up; passes over all pictures: {s['heavy_repeats']} "
        f"after {min(s['warmup'], 1)}; fresh processes: {s['heavy_repeats']} after {s['heavy_warmup']}",
    ]


def report_network(results: dict[str, Any]) -> list[str]:
    network = results["network"]
    lines = header("Network forward, ms per image (inference mode; max |softmax - eager| on a batch of 8)")
    for name, entry in network["runtimes"].items():
        if "skipped" in entry:
            lines.append(value_row(name, "-", entry["skipped"]))
            continue
        diff = entry["max_abs_diff"]
        note = f"max diff {diff:.1e} {'PASS' if diff <= TOLERANCE else 'FAIL'}"
        lines += [stats_row(f"{name}, batch {b}", entry[f"batch{b}"], note if b == 1 else "") for b in BATCH_SIZES]
    fastest = []
    for b in BATCH_SIZES:
        key = f"batch{b}"
        name = network["fastest"][key]
        speed_up = network["runtimes"]["eager"][key]["median_ms"] / network["runtimes"][name][key]["median_ms"]
        fastest.append(f"batch {b}: {name} ({speed_up:.2f}x eager)")
    return lines + ["  fastest: " + "; ".join(fastest)]


def report_inference(results: dict[str, Any]) -> list[str]:
    inference, stages, n_images = results["inference"], results["inference"]["stages"], results["settings"]["n_images"]
    lines = header(f"Bundle inference: SegmentationRunner.run() from configs/inference.json, {n_images} PNGs")
    lines.append(stats_row("end to end, ms per image", inference["end_to_end_per_image"]))
    ratio = f"{inference['throughput_ratio']:.2f}"
    lines.append(value_row("throughput / bare eager batch-1 throughput", ratio, verdict(results, "throughput_ratio")))
    for name in ("read", "preprocess", "forward", "postprocess", "write", "other"):
        note = "in the reader thread, overlapped" if name == "read" else ""
        lines.append(stats_row(f"  {name}, ms per file ({stages['files']} files)", stages[name], note))
    warm = verdict(results, "warm_latency_ms")
    lines.append(stats_row("warm single-image latency, ms", inference["warm_latency"], warm))
    return lines


def report_start_up(results: dict[str, Any]) -> list[str]:
    start, n_images = results["start_up"], results["settings"]["n_images"]
    lines = header("Start-up: python -m monai.bundle run on one PNG, fresh process, start to exit")
    lines.append(stats_row("cold start, ms", start["cold_start"], verdict(results, "cold_start_ms")))
    lines += [value_row(f"  {part}, ms", fmt(1e3 * s, 0)) for part, s in start["cold_start_parts_s"].items()]
    lines.append(value_row("peak RSS, one PNG, MiB", fmt(start["cold_start_peak_rss_mib"])))
    lines.append(value_row(f"peak RSS, {n_images} PNGs, MiB", fmt(start["all_pictures_peak_rss_mib"])))
    lines.append(value_row(f"wall time, {n_images} PNGs with start-up, s", fmt(start["all_pictures_wall_s"], 2)))
    return lines


def report_training(results: dict[str, Any]) -> list[str]:
    if "training" not in results:
        return ["", "Training: skipped"]
    t = results["training"]
    lines = header(
        f"Training: train#trainer from configs/train.json, batch {t['batch_size']}, {t['num_workers']} DataLoader "
        f"workers, {t['iterations']} iterations"
    )
    share = f"{t['data_wait_percent']:.1f} %"
    lines += [
        value_row("throughput, images/s", fmt(t["images_per_s"], 2)),
        stats_row("waiting for the DataLoader, ms per iteration", t["data_wait"]),
        stats_row("step (forward, loss, backward, optimiser, metric), ms", t["step"]),
        value_row("data wait share of an iteration", share, verdict(results, "data_wait_percent")),
        value_row("DataLoader workers' share of the CPU time", f"{t['workers_cpu_percent']:.1f} %"),
        value_row("peak RSS, main process, MiB", fmt(t["main_peak_rss_mib"])),
        value_row("DataLoader workers' own memory (USS), MiB", fmt(t["workers_unique_mib"])),
    ]
    return lines


def report(results: dict[str, Any]) -> str:
    """The human-readable table."""
    lines = report_machine(results) + report_network(results) + report_inference(results)
    lines += report_start_up(results) + report_training(results) + ["", "Targets"]
    for name, target in results["targets"].items():
        passed = "PASS" if target["pass"] else "FAIL"
        lines.append(f"  {name:<52}{target['value']:>10.4g}{target['target']:>15}  {passed}")
    return "\n".join(lines)


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Command-line flags; ``--quick`` changes the defaults only, explicit flags still apply."""
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--repeats", type=int, help="timed runs per measurement (default 20, quick 3)")
    cli.add_argument("--warmup", type=int, help="untimed runs first (default 3, quick 1)")
    cli.add_argument("--n-images", type=int, help="synthetic PNGs for the bundle inference (default 100, quick 4)")
    cli.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch and ONNX Runtime threads")
    cli.add_argument("--skip-training", action="store_true", help="leave out the training measurement")
    cli.add_argument("--quick", action="store_true", help="tiny sizes (64x64 input, small pictures) for testing")
    default_json = Path(tempfile.gettempdir()) / "busi_benchmark.json"
    cli.add_argument("--json", type=Path, default=default_json, help=f"figures as JSON (default {default_json})")
    args = cli.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    return Settings(
        repeats=repeats,
        warmup=warmup,
        heavy_repeats=min(repeats, 1 if args.quick else 3),
        heavy_warmup=min(warmup, 0 if args.quick else 1),
        n_images=args.n_images or (4 if args.quick else 100),
        threads=args.threads,
        image_size=64 if args.quick else 256,
        picture_scale=0.25 if args.quick else 1.0,
        skip_training=args.skip_training,
        quick=args.quick,
        json_path=args.json,
    )


def run_benchmark(settings: Settings) -> dict[str, Any]:
    """Every measurement, in a temporary folder; returns the figures."""
    torch.set_num_threads(settings.threads)
    results: dict[str, Any] = {
        "machine": machine_info(),
        "settings": {**asdict(settings), "json_path": str(settings.json_path)},
    }
    with tempfile.TemporaryDirectory(prefix="busi_benchmark_") as tmp:
        work = Path(tmp)
        log(f"writing {settings.n_images} synthetic pictures")
        pictures = write_pictures(work / "pictures", settings.n_images, settings.picture_scale)
        runner, weights = build_runner(settings, work / "inference")
        results["network"] = bench_network(runner.network, settings, work)
        results["inference"] = {"weights": weights, **bench_inference(runner, settings, pictures, work / "inference")}
        eager, bundle = results["network"]["runtimes"]["eager"], results["inference"]["end_to_end_per_image"]
        results["inference"]["throughput_ratio"] = round(eager["batch1"]["median_ms"] / bundle["median_ms"], 3)
        results["start_up"] = bench_start_up(pictures, settings, work / "start_up")
        if not settings.skip_training:
            results["training"] = bench_training_in_fresh_process(settings, work / "training")
    results["targets"] = check_targets(results)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    results = run_benchmark(settings)
    print(report(results), flush=True)
    settings.json_path.parent.mkdir(parents=True, exist_ok=True)
    settings.json_path.write_text(json.dumps(results, indent=2))
    log(f"figures written to {settings.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
