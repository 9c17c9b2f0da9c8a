"""Fine-tuning the shipped weights on a group's own labelled images: which images tune, which are held out.

A folder in the ``images/ masks/ labels.csv`` layout is prepared like any training source (:mod:`scripts.prepare`):
its patients (``split_group``) are spread over folds, one fold is held out and scored before and after, and the
network is tuned on images of the other patients only. By default only the encoder is tuned: another scanner changes
how images look, which the first layers see, while the decoder and the image head keep the lesion shapes and class
decisions learned from many patients (surgical fine-tuning; Lee et al., ICLR 2023).
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

from torch import nn

__all__ = ["check_output_dir", "tuned_parameters", "tuning_split"]


def tuning_split(
    datalist: dict[str, list[dict]],
    max_images: int | None = None,
    seed: int = 0,
    rehearsal_source: str | None = None,
    images_per_patient: int | None = None,
) -> dict[str, list[dict]]:
    """The tuning images (at most ``max_images`` of the group's own, patient by patient) and the held-out images of a
    prepared datalist.

    Patients are taken in a random order (``seed``) until ``max_images`` are reached, the last one only in part, so a
    small budget stands for a few annotated patients, as a group would annotate them: every image of a patient, or
    ``images_per_patient`` of them drawn at random (the same budget spread over more patients). Every image of
    ``rehearsal_source`` (the data the shipped weights learned from, when the group has it) is tuned on too and none
    is scored: mixed in, it keeps the network from forgetting what it knew while it learns the new scanner.

    Raises:
        ValueError: nothing to tune on or nothing held out to score on.
    """
    rehearsal = [item for item in datalist["all"] if item["source"] == rehearsal_source]
    own = lambda items: [item for item in items if item["source"] != rehearsal_source]  # noqa: E731
    training, held_out = own(datalist["training"]), own(datalist["validation"])
    if max_images is not None or images_per_patient is not None:
        by_group: dict[str, list[dict]] = defaultdict(list)
        for item in training:
            by_group[item["group"] or item["name"]].append(item)
        groups = sorted(by_group)
        draw = random.Random(seed)
        draw.shuffle(groups)
        if images_per_patient is not None:
            by_group = {group: draw.sample(by_group[group], min(images_per_patient, len(by_group[group])))
                        for group in groups}
        training = [item for group in groups for item in by_group[group]][:max_images]
    if not training or not held_out:
        everything = own(datalist["all"])
        patients = len({item["group"] or item["name"] for item in everything})
        raise ValueError(
            f"{len(everything)} usable images of {patients} patients: too few to tune on some patients and "
            "score on others; add images or patients, or hold out a larger share with a smaller --folds (at least 2)"
        )
    return {"training": training + rehearsal, "validation": held_out, "all": datalist["all"]}


def tuned_parameters(network: nn.Module, layers: list[str] | None) -> list[nn.Parameter]:
    """The parameters of ``network`` whose name starts with one of ``layers`` (e.g. ``"encoders"``,
    ``"decoders.3"``), all of them when None; the others are frozen, so they get no gradient and never change.

    Raises:
        ValueError: a layer name matches no parameter.
    """
    in_layer = lambda name, layer: name == layer or name.startswith(layer + ".")  # noqa: E731
    named = dict(network.named_parameters())
    if unknown := [layer for layer in layers or [] if not any(in_layer(name, layer) for name in named)]:
        top = sorted({name.split(".")[0] for name in named})
        raise ValueError(f"tuned_layers {unknown} match no layer of the network; its layers: {', '.join(top)}")
    tuned = []
    for name, parameter in named.items():
        parameter.requires_grad_(layers is None or any(in_layer(name, layer) for layer in layers))
        if parameter.requires_grad:
            tuned.append(parameter)
    return tuned


def check_output_dir(output_dir: str, models_dir: str) -> str:
    """``output_dir``, unless it is the folder of the shipped weights, which fine-tuning must never overwrite."""
    output, models = Path(output_dir).resolve(), Path(models_dir).resolve()
    if output == models or models in output.parents:
        raise ValueError(f"{output_dir}: the shipped weights' folder; choose another --output_dir")
    return output_dir
