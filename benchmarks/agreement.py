"""How far the inference's shortcuts move its label maps, measured on labelled BUSI images.

Two comparisons, pixel by pixel over every image, with the shipped weights:

- lesions found at network resolution and only the lesion map resized to the frame (the inference's postprocessing)
  against the probabilities resized to the frame and lesions found there (the slower path it replaced);
- the network in bf16 against float32 (both through the inference's postprocessing);
- the weights rounded to float16, as ``models/`` stores them, against the weights as given (both in the inference's
  precision): run it with ``--checkpoint`` naming float32 weights (a training run's ``model.pt``), since rounding
  weights that are already float16 changes nothing.

Usage::

    python benchmarks/agreement.py [--fold 0] [--images N] [--checkpoint A.pt B.pt ...]

The images are those of one cross-validation fold of the prepared dataset (``runs/prepared``).
"""

from __future__ import annotations

import argparse
import sys
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "monai_bundle"


def main(argv: list[str] | None = None) -> dict:
    options = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    options.add_argument("--fold", type=int, default=0, help="the fold whose images are compared")
    options.add_argument("--images", type=int, default=0, help="at most this many images (0: all of the fold)")
    options.add_argument("--checkpoint", nargs="+", help="weights files in place of the shipped ones (an ensemble)")
    args = options.parse_args(argv)
    sys.path.insert(0, str(BUNDLE))
    from scripts.postprocess import FindLesionsd, MeasureLesionsd
    from scripts.predict import half_precision
    from scripts.reader import read_image

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / n) for n in ("inference.json", "train.json")])
    parser.update({"bundle_root": str(BUNDLE), "device": "$torch.device('cpu')", "fold": args.fold})
    if args.checkpoint:
        parser["checkpoint"] = args.checkpoint
    runner = parser.get_parsed_content("runner")
    finder: FindLesionsd = parser.get_parsed_content("postprocessing#transforms#0")
    items = parser.get_parsed_content("fold_datalist")["validation"]
    items = items[: args.images] if args.images else items
    # the replaced path: probabilities brought to the frame's size, lesions found there
    full_size = Compose([
        Invertd(keys="pred", transform=parser.get_parsed_content("preprocessing"), orig_keys="image",
                nearest_interp=False),
        FindLesionsd(keys="pred", **finder.settings),
        MeasureLesionsd(keys="pred"),
    ])
    # a second runner with its own networks, whose weights are rounded to float16; made last, because parsing it
    # anew gives later look-ups its objects, and inverting a resize needs the preprocessing that made it
    half_runner = parser.get_parsed_content("runner", lazy=False)
    runner.load_weights()
    half_runner.load_weights()
    # the precision is switched on every network the inference runs (each member of an ensemble)
    networks = list(runner.network) if isinstance(runner.network, torch.nn.ModuleList) else [runner.network]
    half_networks = [half_runner.network] if len(networks) == 1 else list(half_runner.network)
    for network in half_networks:
        network.load_state_dict(half_precision(network.state_dict()))
        network.dtype = parser.get_parsed_content("network_dtype")
    counts = {"shortcut": [0, 0], "bf16": [0, 0], "float16 weights": [0, 0]}
    for item in items:
        frame = read_image(item["image"]).frames[:1]
        for network in networks:
            network.dtype = parser.get_parsed_content("network_dtype")
        predicted = runner.probabilities(frame)[0]
        half = np.asarray(half_runner.postprocessing(half_runner.probabilities(frame)[0])["pred"])[0]
        # each path gets its own copy: inverting the resize consumes the image's record of it
        fast = np.asarray(runner.postprocessing(deepcopy(predicted))["pred"])[0]
        slow_input = deepcopy(predicted)
        slow = np.asarray(full_size({**slow_input, "pred": MetaTensor(slow_input["pred"])})["pred"])[0]
        for network in networks:
            network.dtype = None
        float32 = np.asarray(runner.postprocessing(dict(runner.probabilities(frame)[0]))["pred"])[0]
        for name, other in (("shortcut", slow), ("bf16", float32), ("float16 weights", half)):
            counts[name][0] += int((fast == other).sum())
            counts[name][1] += fast.size
    report = {name: agree / total for name, (agree, total) in counts.items()}
    print(f"{len(items)} images of fold {args.fold}, {counts['shortcut'][1]} pixels")
    print(f"label maps equal, network-resolution lesions vs full-size probabilities: {report['shortcut']:.4%}")
    print(f"label maps equal, bf16 network vs float32 network: {report['bf16']:.4%}")
    print(f"label maps equal, weights rounded to float16 vs as given: {report['float16 weights']:.4%}")
    return report


if __name__ == "__main__":
    main()
