"""Training as a user runs it: a run shorter than the averaged epochs, a run killed while it saves a checkpoint, the
training config given alone, deep supervision, the aspect-preserving resize. A tiny network on a synthetic BUSI
folder, so that each run takes seconds."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

from busi_synthetic import make_busi

BUNDLE = Path(__file__).resolve().parents[1] / "monai_bundle"
CONFIGS = BUNDLE / "configs"
TRAINING = ["inference.json", "train.json"]
TINY = {
    "image_size": [32, 32], "batch_size": 4, "samples_per_epoch": 8, "num_workers": 0,
    "network_def#channels": [4, 8, 8, 16, 16],
}
MERGED_COMMAND = "--config_file \"['configs/inference.json','configs/train.json']\""


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("busi")
    make_busi(root)
    return {**TINY, "dataset_dir": str(root), "prepared_dir": str(tmp_path_factory.mktemp("prepared"))}


def train(output_dir: Path, max_epochs: int, settings: dict) -> list[int]:
    """Run the training workflow into ``output_dir``; returns the epochs it trained."""
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / f) for f in TRAINING], meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False, workflow_type="train", bundle_root=str(BUNDLE), output_dir=str(output_dir),
        max_epochs=max_epochs, **settings,
    )
    workflow.initialize()
    epochs = []
    trainer = workflow.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: epochs.append(engine.state.epoch))
    workflow.run()
    workflow.finalize()
    return epochs


def network_weights(path: Path) -> dict[str, torch.Tensor]:
    weights = torch.load(path, map_location="cpu", weights_only=True)
    return weights.get("model", weights)


def test_a_run_shorter_than_the_averaged_epochs_averages_the_epochs_it_has(settings, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="scripts.training")
    # averaged_epochs is 10: the one epoch there is is averaged
    assert train(tmp_path, max_epochs=1, settings=settings) == [1]
    averaged, epoch = network_weights(tmp_path / "model.pt"), network_weights(tmp_path / "checkpoint_epoch=1.pt")
    assert averaged.keys() == epoch.keys()
    assert all(torch.equal(averaged[name], epoch[name]) for name in epoch)
    assert "averaged the weights of epochs 1-1" in caplog.text


def test_a_run_killed_while_saving_resumes_from_the_last_checkpoint_that_loads(
    settings, tmp_path, monkeypatch, caplog
):
    assert train(tmp_path, max_epochs=2, settings=settings) == [1, 2]
    complete = (tmp_path / "checkpoint_epoch=2.pt").read_bytes()

    def killed_half_way(obj, file, *args, **kwargs):
        # torch.save is given an open file (an atomic saver's temporary file) or the checkpoint's own path
        half = complete[: len(complete) // 2]
        if isinstance(file, (str, os.PathLike)):
            Path(file).write_bytes(half)
        else:
            file.write(half)
        raise OSError("killed while writing")

    # the checkpoint of epoch 3 is never there in part: written to a temporary file, renamed only when complete
    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", killed_half_way)
        with pytest.raises(RuntimeError):
            train(tmp_path, max_epochs=3, settings=settings)
    saved = ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt", "model.pt"]
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == saved
    assert (tmp_path / "checkpoint_epoch=2.pt").read_bytes() == complete

    # started again after a truncated checkpoint (a disk that filled up, an older saver), it skips it and goes on
    # from the one before: epoch 2 is trained again, then epoch 3
    (tmp_path / "checkpoint_epoch=2.pt").write_bytes(complete[: len(complete) // 2])
    caplog.set_level(logging.INFO, logger="scripts.training")
    assert train(tmp_path, max_epochs=3, settings=settings) == [2, 3]
    assert f"skipping {tmp_path / 'checkpoint_epoch=2.pt'}: it does not load" in caplog.text
    assert f"from {tmp_path / 'checkpoint_epoch=1.pt'}" in caplog.text
    for epoch in (2, 3):
        trainer = torch.load(tmp_path / f"checkpoint_epoch={epoch}.pt", weights_only=True)["trainer"]
        assert trainer["iteration"] == epoch * trainer["epoch_length"]


@pytest.mark.parametrize("workflow_type", ["train", None])
def test_the_training_config_alone_names_the_command_to_run(workflow_type):
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"), logging_file=False, workflow_type=workflow_type,
        meta_file=str(CONFIGS / "metadata.json"),
    )
    with pytest.raises(SystemExit, match="configs/train.json adds training to configs/inference.json") as stopped:
        workflow.initialize()
    assert str(stopped.value).endswith(MERGED_COMMAND)


def test_the_training_command_with_the_training_config_alone_prints_one_line():
    """The Model Zoo habit: ``run training --config_file configs/train.json`` from the bundle folder."""
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.json"]
    done = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"configs/train.json adds training to configs/inference.json: run it with {MERGED_COMMAND}")


def test_deep_supervision_trains_extra_levels_and_infers_as_before(settings, tmp_path):
    from scripts.network import ResidualUNetWithImageHead, SegmentationAndImageLoss, auxiliary_outputs, split_outputs

    network = ResidualUNetWithImageHead(channels=(4, 8, 8, 16, 16), deep_supervision=2)
    image, labels = torch.rand(2, 1, 32, 32), torch.zeros(2, 1, 32, 32)
    labels[0, 0, 8:20, 8:20] = 2
    # training: pixel and image logits, then one triplet of pixel logits per supervised level, at the output's size
    outputs = network.train()(image)
    assert outputs.shape == (2, 12, 32, 32) and len(auxiliary_outputs(outputs)) == 2
    loss = SegmentationAndImageLoss()
    assert loss(outputs, labels) > loss(outputs[:, :6], labels)
    loss(outputs, labels).backward()
    assert all(head.weight.grad.abs().sum() > 0 for head in network.auxiliary_heads)
    # inference: the usual six channels
    network.eval()
    with torch.no_grad():
        inferred = network(image)
    assert inferred.shape == (2, 6, 32, 32) and auxiliary_outputs(inferred) == ()
    assert split_outputs(inferred)[1].shape == (2, 3)
    with pytest.raises(ValueError, match="deep_supervision must be 0 to 3"):
        ResidualUNetWithImageHead(deep_supervision=4)
    # the training workflow runs with it, and its weights load into the network it names
    assert train(tmp_path, max_epochs=1, settings={**settings, "deep_supervision": 2}) == [1]
    weights = network_weights(tmp_path / "model.pt")
    assert any(key.startswith("auxiliary_heads.1.") for key in weights)
    ResidualUNetWithImageHead(channels=(4, 8, 8, 16, 16), deep_supervision=2).load_state_dict(weights)


def test_training_with_the_aspect_preserving_resize(settings, tmp_path):
    # the padded frames go through the random transforms and the loss like the squashed ones
    assert train(tmp_path, max_epochs=1, settings={**settings, "keep_aspect": True}) == [1]
    assert (tmp_path / "model.pt").is_file()
