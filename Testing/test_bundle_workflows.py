"""The bundle's workflows run through the real configs with overrides, model-zoo style, on a synthetic BUSI folder."""

from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out
from monai.data import MetaTensor
from PIL import Image

from busi_synthetic import make_busi, make_folder_layout

BUNDLE = Path(__file__).resolve().parents[1] / "monai_bundle"
CONFIGS = BUNDLE / "configs"
TINY = {"image_size": [32, 32], "batch_size": 4, "samples_per_epoch": 20, "num_workers": 0}
TRAINING = ["inference.json", "train.json"]


def run_workflow(
    config_files: list[str], workflow_type: str | None = None, run_id: str = "run", **override
) -> ConfigWorkflow:
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / f) for f in config_files],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(BUNDLE),
        run_id=run_id,
        **override,
    )
    workflow.initialize()
    if workflow_type:
        assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()
    return workflow


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("busi")
    return root, make_busi(root)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> dict[str, Path]:
    """Two epochs of training at 32x32 on fold 0 of 5 (then one more, resumed)."""
    root, _ = dataset
    work = tmp_path_factory.mktemp("train")
    paths = {"output_dir": work / "run", "prepared_dir": work / "prepared"}
    override = {
        **TINY, **{k: str(v) for k, v in paths.items()}, "dataset_dir": str(root), "val_interval": 1,
        "averaged_epochs": 2,
    }
    first = run_workflow(TRAINING, "train", max_epochs=2, **override)
    paths["first_epoch"] = first.parser.get_parsed_content("train#trainer").state.epoch
    return {**paths, "override": override}


def test_prepare_reports_and_splits(dataset, trained):
    root, special = dataset
    report = json.loads((trained["prepared_dir"] / "report.json").read_text())["sources"][root.name]
    datalist = json.loads((trained["prepared_dir"] / "datalist.json").read_text())
    skipped = {Path(s["file"]).name: s["reason"] for s in json.loads(
        (trained["prepared_dir"] / "report.json").read_text())["skipped"]}
    assert "cannot be read" in skipped[special["corrupt"].name]
    assert special["wrong_mask_size"].name in skipped
    assert "mask is" in skipped[special["wrong_mask_size"].name]
    fold = {Path(item["image"]).name: item["fold"] for item in datalist["items"]}
    a, b = special["duplicate_a"].name, special["duplicate_b"].name
    assert fold[a] == fold[b]
    assert any({f"benign/{a}", f"benign/{b}"} <= set(group) for group in report["groups"])
    # 10 benign + the duplicate copy; the corrupt image and the one with a wrong-size mask are skipped
    assert report["counts_per_class"] == {"benign": 11, "malignant": 8, "normal": 6}
    assert len(datalist["items"]) == 25 and set(fold.values()) == {0, 1, 2, 3, 4}
    assert report["images_with_several_masks"] == 1
    # the two masks of benign (1) are OR-ed, the RGBA mask is read, classes are 1 / 2
    labels = trained["prepared_dir"] / "labels" / root.name
    label = np.asarray(Image.open(labels / "benign/benign (1).png"))
    assert label[60, 15] == 1 and set(np.unique(label)) == {0, 1}
    rgba_label = np.asarray(Image.open(labels / "benign/benign (2).png"))
    assert rgba_label.max() == 1
    malignant = np.asarray(Image.open(labels / "malignant/malignant (1).png"))
    assert set(np.unique(malignant)) == {0, 2}
    assert not any(p.name.startswith("labels") for p in root.iterdir()), "the dataset folder was written"


def test_training_saves_and_resumes(trained):
    assert trained["first_epoch"] == 2
    assert (trained["output_dir"] / "checkpoint_epoch=2.pt").is_file()
    # the final weights are the mean of the last epochs' weights
    final = torch.load(trained["output_dir"] / "model.pt", weights_only=True)
    epochs = [torch.load(trained["output_dir"] / f"checkpoint_epoch={e}.pt", weights_only=True)["model"] for e in (1, 2)]
    name = next(iter(final))
    assert torch.allclose(final[name], (epochs[0][name] + epochs[1][name]) / 2)
    assert any(trained["output_dir"].glob("events.out.tfevents.*"))
    # started again with a higher max_epochs, training runs only the missing epoch
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / f) for f in TRAINING], meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False, workflow_type="train", bundle_root=str(BUNDLE), max_epochs=3, **trained["override"],
    )
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    epochs_run = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: epochs_run.append(engine.state.epoch))
    workflow.run()
    assert epochs_run == [3]
    assert trainer.state.iteration == 3 * len(workflow.parser.get_parsed_content("train#dataloader"))
    assert (trained["output_dir"] / "checkpoint_epoch=3.pt").is_file()


def test_training_starts_from_initial_weights(trained, tmp_path):
    initial = trained["output_dir"] / "model.pt"
    expected = torch.load(initial, map_location="cpu", weights_only=True)
    override = {**trained["override"], "output_dir": str(tmp_path / "run")}
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / f) for f in TRAINING], meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False, workflow_type="train", bundle_root=str(BUNDLE), max_epochs=2,
        initial_weights=str(initial), **override,
    )
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    network = workflow.parser.get_parsed_content("network")
    weights_at_first_step = []

    @trainer.on(Events.ITERATION_STARTED(once=1))
    def record(engine):
        weights_at_first_step.append({k: v.clone() for k, v in network.state_dict().items()})

    workflow.run()
    # a new run from the given network weights, keeping both epoch checkpoints for weight averaging
    assert trainer.state.epoch == 2
    assert all(torch.equal(weights_at_first_step[0][k], expected[k]) for k in expected)
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint_epoch=*.pt")) == [
        "checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"]

    missing = ConfigWorkflow(
        config_file=[str(CONFIGS / f) for f in TRAINING], meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False, workflow_type="train", bundle_root=str(BUNDLE),
        initial_weights=str(tmp_path / "missing.pt"), **{**override, "output_dir": str(tmp_path / "other")},
    )
    missing.initialize()
    with pytest.raises(RuntimeError) as failure:
        missing.run()
    assert "missing.pt: initial weights not found" in str(failure.value.__cause__)


def test_training_on_every_image_holds_nothing_out(trained, tmp_path):
    """``--fold all``: the weights to ship train on all usable images, with no validation to run."""
    override = {**trained["override"], "output_dir": str(tmp_path / "run"), "averaged_epochs": 1}
    workflow = run_workflow(TRAINING, "train", fold="all", max_epochs=1, **override)
    parser = workflow.parser
    usable = json.loads((trained["prepared_dir"] / "datalist.json").read_text())["items"]
    assert len(parser.get_parsed_content("train#dataset")) == len(usable)
    assert parser.get_parsed_content("fold_datalist")["validation"] == []
    assert parser.get_parsed_content("validate#evaluator").state.epoch == 0
    assert (tmp_path / "run" / "model.pt").is_file()
    defaults = ConfigParser()
    defaults.read_config([str(CONFIGS / f) for f in TRAINING])
    defaults.update({"bundle_root": "bundle", "fold": "all"})
    assert defaults.get_parsed_content("output_dir") == "bundle/runs/all"


def test_out_of_fold_evaluation_writes_metrics_and_figures(trained, tmp_path):
    """Each image is segmented by its fold's network (here: the same tiny network stands in for every fold)."""
    weights = str(trained["output_dir"] / "model.pt")
    override = {
        "image_size": [32, 32],
        "dataset_dir": trained["override"]["dataset_dir"],
        "prepared_dir": str(trained["prepared_dir"]),
        "fold_weights": [weights] * 5,
        "evaluation#training_log_dir": str(trained["output_dir"]),
        "output_dir": str(tmp_path),
        "evaluation#bootstrap_samples": 200,
    }
    run_workflow([*TRAINING, "evaluate.json"], **override)
    items = json.loads((trained["prepared_dir"] / "datalist.json").read_text())["items"]
    with open(tmp_path / "per_image.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert sorted((r["name"], int(r["fold"])) for r in rows) == sorted((i["name"], i["fold"]) for i in items)
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("lesion_dice", "benign_dice", "malignant_dice", "benign_vs_malignant_accuracy",
                "normal_predicted_empty", "pixel_accuracy", "mean_iou_with_background", "lesion_hd95_px"):
        assert set(summary[key]) == {"mean", "ci95", "n"}
    assert summary["images"] == len(items)
    assert sum(map(sum, summary["confusion_matrix"]["counts"])) == len(items)
    for figure in ("confusion_matrix.png", "examples.png", "training_curves.png"):
        assert (tmp_path / figure).stat().st_size > 1000
    # an evaluation compared with itself through compare.json: every paired difference is zero
    run_workflow(["inference.json", "compare.json"], baseline_dir=str(tmp_path), candidate_dir=str(tmp_path))
    paired = json.loads((tmp_path / f"paired_against_{tmp_path.name}.json").read_text())
    assert paired["images"] == len(items) and paired["lesion_dice"]["difference"] == 0.0


def test_postprocessing_search_scores_every_setting_out_of_fold(trained, tmp_path):
    weights = str(trained["output_dir"] / "model.pt")
    # the shipped settings, each next to another value, so that the defaults' row is written too
    inference = json.loads((CONFIGS / "inference.json").read_text())
    shipped = {"min_confidence": inference["min_lesion_confidence"],
               "image_class_weight": inference["image_class_weight"],
               "max_normal_probability": inference["max_normal_probability"]}
    grid = {key: sorted({value, other}) for (key, value), other in zip(shipped.items(), (0.8, 0.0, 1.0))}
    assert all(len(values) == 2 for values in grid.values()), grid
    workflow = run_workflow(
        [*TRAINING, "evaluate.json", "tune.json"], image_size=[32, 32],
        dataset_dir=trained["override"]["dataset_dir"], prepared_dir=str(trained["prepared_dir"]),
        fold_weights=[weights] * 5, eval_folds=[0, 1], output_dir=str(tmp_path), **{"search#grid": grid},
    )
    with open(tmp_path / "postprocessing_search.csv") as stream:
        rows = list(csv.DictReader(stream))
    tried = {tuple(float(r[k]) for k in grid) for r in rows}
    assert len(rows) == 8 and tried == set(itertools.product(*grid.values()))
    means = [float(r["mean_of_targets"]) for r in rows]
    assert means == sorted(means, reverse=True) and all(0 <= m <= 1 for m in means)
    # the shipped settings are back in place after the search
    settings = workflow.parser.get_parsed_content("postprocessing#transforms#0").settings
    assert settings["min_confidence"] == workflow.parser.get_parsed_content("min_lesion_confidence")

    # what choosing is worth: fold 0's setting is one of the best on fold 1 alone, and the reverse
    with open(tmp_path / "chosen_without_each_fold.csv") as stream:
        chosen = list(csv.DictReader(stream))
    assert [r["fold"] for r in chosen] == [
        "0", "1", "all, each fold's setting chosen on the others", "all, default settings"]
    for fold, other in ((0, 1), (1, 0)):
        run_workflow(
            [*TRAINING, "evaluate.json", "tune.json"], image_size=[32, 32],
            dataset_dir=trained["override"]["dataset_dir"], prepared_dir=str(trained["prepared_dir"]),
            fold_weights=[weights] * 5, eval_folds=[other], output_dir=str(tmp_path / f"fold{other}"),
            **{"search#grid": grid},
        )
        with open(tmp_path / f"fold{other}" / "postprocessing_search.csv") as stream:
            on_other = {tuple(float(r[k]) for k in grid): float(r["mean_of_targets"]) for r in csv.DictReader(stream)}
        assert on_other[tuple(float(chosen[fold][k]) for k in grid)] == max(on_other.values())


def test_inference_segments_folder_and_reports_bad_files(trained, tmp_path, capsys):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (50, 70), dtype=np.uint8)).save(inputs / "grey.png")
    Image.fromarray(rng.integers(0, 255, (61, 43, 3), dtype=np.uint8)).save(inputs / "sub" / "colour.jpg")
    (inputs / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    before = snapshot(inputs)
    out = tmp_path / "out"
    override = {"image_size": [32, 32], "checkpoint": str(trained["output_dir"] / "model.pt"),
                "input_dir": str(inputs), "output_dir": str(out), "progress": "none"}
    with pytest.raises(SystemExit) as failure:
        run_workflow(["inference.json"], **override)
    assert "1 of 3 inputs failed" in str(failure.value) and "broken.png" in str(failure.value)
    for stem, size in (("grey", (50, 70)), ("sub/colour", (61, 43))):
        label = np.asarray(Image.open(out / f"{stem}_seg.png"))
        assert label.shape == size and label.dtype == np.uint8 and set(np.unique(label)) <= {0, 1, 2}
        assert (out / f"{stem}_overlay.jpg").is_file() and (out / f"{stem}_lesions.csv").is_file()
    assert not list(out.rglob("broken*"))
    assert snapshot(inputs) == before
    with pytest.raises(SystemExit, match="must not be the input folder itself"):
        run_workflow(["inference.json"], **{**override, "output_dir": str(inputs)})
    # an output folder inside the input folder is left out of the search, so a second run reads no results
    inside = inputs / "results"
    with pytest.raises(SystemExit, match="1 of 3 inputs failed"):
        run_workflow(["inference.json"], **{**override, "output_dir": str(inside), "overlays": False})
    with pytest.raises(SystemExit, match="1 of 3 inputs failed"):
        run_workflow(["inference.json"], **{**override, "output_dir": str(inside), "overlays": False})
    assert sorted(p.name for p in inside.rglob("*.png")) == ["colour_seg.png", "grey_seg.png"]


def test_aspect_preserving_resize_pads_the_short_side_and_label_maps_keep_the_input_size(trained, tmp_path):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), "image_size": [32, 32], "keep_aspect": True})
    frame = MetaTensor(torch.rand(1, 50, 70) + 0.1)
    image = parser.get_parsed_content("preprocessing")({"image": frame})["image"]
    rows = torch.nonzero(image[0].sum(dim=1)).flatten()
    # 70 columns become 32, 50 rows round(50 * 32 / 70) = 23, centred between zero rows
    assert image.shape == (1, 32, 32) and len(rows) == 23 and int(rows[0]) == 4
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (50, 70), dtype=np.uint8)).save(inputs / "wide.png")
    run_workflow(["inference.json"], image_size=[32, 32], keep_aspect=True, input_dir=str(inputs),
                 output_dir=str(out), checkpoint=str(trained["output_dir"] / "model.pt"), progress="none")
    assert np.asarray(Image.open(out / "wide_seg.png")).shape == (50, 70)


def test_parallel_workers_give_the_results_of_one_worker(trained, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(5)
    for index in range(7):
        Image.fromarray(rng.integers(0, 255, (40 + index, 50), dtype=np.uint8)).save(inputs / f"scan{index}.png")
    (inputs / "scan9.png").write_bytes(b"not a picture")
    Image.open(inputs / "scan0.png").save(inputs / "scan0.jpg")  # found first: scan0.png may not overwrite it
    threads = torch.get_num_threads()
    label_maps, written = {}, {}
    for workers in (1, 3):
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / "inference.json"))
        parser.update({"bundle_root": str(BUNDLE), "image_size": [32, 32], "mixed_precision": False,
                       "checkpoint": str(trained["output_dir"] / "model.pt"), "input_dir": str(inputs),
                       "output_dir": str(tmp_path / f"out{workers}"), "progress": "lines", "workers": workers})
        runner = parser.get_parsed_content("runner")
        with pytest.raises(SystemExit, match="2 of 9 inputs failed"):
            runner.run()
        assert torch.get_num_threads() == threads
        lines = capsys.readouterr().out.splitlines()
        assert [line for line in lines if line.startswith("PROGRESS")] == [f"PROGRESS {k} 9" for k in range(1, 10)]
        clash, unreadable = sorted(line for line in lines if line.startswith("ERROR"))
        assert clash == f"ERROR {inputs / 'scan0.png'}: its outputs would overwrite those of {inputs / 'scan0.jpg'}"
        assert unreadable.startswith(f"ERROR {inputs / 'scan9.png'}: cannot be read as an image")
        out = tmp_path / f"out{workers}"
        label_maps[workers] = [np.asarray(Image.open(p)) for p in sorted(out.glob("*_seg.png"))]
        written[workers] = sorted(p.name for p in out.iterdir())
    assert written[1] == written[3] and len(label_maps[3]) == 7
    for one, several in zip(label_maps[1], label_maps[3]):
        assert (one == several).mean() > 0.99


def test_a_list_of_checkpoints_segments_with_their_average(trained, tmp_path):
    """An ensemble is a list of weights: one copy of the network per file, probabilities averaged."""
    first = tmp_path / "epoch1.pt"
    torch.save(torch.load(trained["output_dir"] / "checkpoint_epoch=1.pt", weights_only=True)["model"], first)
    last = str(trained["output_dir"] / "model.pt")
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), "image_size": [32, 32], "mixed_precision": False,
                   "checkpoint": [last, str(first)], "output_dir": str(tmp_path / "out")})
    runner = parser.get_parsed_content("runner")
    frames = [np.random.default_rng(3).integers(0, 255, (40, 52)).astype(np.float32)]
    averaged = runner.probabilities(frames)[0]["pred"]
    assert isinstance(runner.network, torch.nn.ModuleList) and len(runner.network) == 2
    singles = []
    for weights in (last, str(first)):
        runner.use_checkpoint(weights)
        singles.append(runner.probabilities(frames)[0]["pred"])
        assert not isinstance(runner.network, torch.nn.ModuleList)
    assert not torch.allclose(singles[0], singles[1])
    # one network gives its 6 channels; two add their disagreement: the mean total variation distance of each
    # one's pixel-class probabilities from their average (for two, half the summed absolute difference of the pair)
    assert singles[0].shape[0] == 6 and averaged.shape[0] == 7
    assert torch.allclose(averaged[:6], (singles[0] + singles[1]) / 2, atol=1e-6)
    disagreement = (singles[0][:3] - singles[1][:3]).abs().sum(0) / 4
    assert torch.allclose(averaged[6], disagreement, atol=1e-6)
    runner.use_checkpoint([last, str(tmp_path / "missing.pt")])
    with pytest.raises(FileNotFoundError, match="missing.pt: model weights not found"):
        runner.probabilities(frames)


def test_inference_replaces_earlier_results_of_the_same_input(trained, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "scan_seg_f0000.png").write_bytes(b"from an earlier two-frame run")
    (out / "scan_overlay.jpg").write_bytes(b"earlier")
    (out / "other_seg.png").write_bytes(b"another input's result")
    image = tmp_path / "scan.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (40, 50), dtype=np.uint8)).save(image)
    run_workflow(["inference.json"], image_size=[32, 32], checkpoint=str(trained["output_dir"] / "model.pt"),
                 input_files=[str(image)], output_dir=str(out), progress="none", overlays=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "other_seg.png", "scan_lesions.csv", "scan_lesions.json", "scan_seg.png"]


def test_inference_with_no_input_fails(trained, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no supported image"):
        run_workflow(["inference.json"], input_dir=str(tmp_path / "empty"), output_dir=str(tmp_path / "out"),
                     checkpoint=str(trained["output_dir"] / "model.pt"))


def test_inference_command_line_from_repo_root(trained, tmp_path):
    """The documented command, as a user types it, from the repository root."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "monai_bundle/configs/inference.json",
               "--input_dir", "monai_bundle/sample_data", "--output_dir", str(out), "--progress", "none"]
    done = subprocess.run(command, cwd=BUNDLE.parent, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for sample in (BUNDLE / "sample_data").glob("*.png"):
        label = Image.open(out / f"{sample.stem}_seg.png")
        assert label.size == Image.open(sample).size


def test_multi_gpu_training_runs_under_torchrun_on_cpu(dataset, trained, tmp_path):
    """Two processes, gloo backend, DistributedDataParallel."""
    root, _ = dataset
    configs = f"['{CONFIGS / 'inference.json'}','{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
               "-m", "monai.bundle", "run", "--config_file", configs, "--meta_file", str(CONFIGS / "metadata.json"),
               "--logging_file", str(CONFIGS / "logging.conf"), "--bundle_root", str(BUNDLE),
               "--dataset_dir", str(root), "--prepared_dir", str(trained["prepared_dir"]),
               "--output_dir", str(tmp_path / "run"), "--averaged_epochs", "1",
               "--max_epochs", "1", "--val_interval", "1", "--image_size", "[32,32]", "--batch_size", "4",
               "--num_workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert (tmp_path / "run" / "checkpoint_epoch=1.pt").is_file()
    assert (tmp_path / "run" / "model.pt").is_file()


def test_configs_declare_each_definition_once():
    """inference.json holds the network, preprocessing and labels; the other configs only add what is theirs."""
    inference = json.loads((CONFIGS / "inference.json").read_text())
    shared = {"network_def", "network", "deterministic_transforms", "preprocessing", "image_size", "bundle_root"}
    assert shared <= set(inference)
    for overlay in ("train.json", "finetune.json", "evaluate.json", "tune.json", "compare.json", "multi_gpu_train.json"):
        config = json.loads((CONFIGS / overlay).read_text())
        assert not shared & set(config) - {"network"}, overlay
        assert "initialize" not in config or overlay == "multi_gpu_train.json", overlay
    # training and validation take the shared preprocessing, not a copy
    train = json.loads((CONFIGS / "train.json").read_text())
    for part in ("train", "validate"):
        assert "@deterministic_transforms" in train[part]["preprocessing"]["transforms"]
    # the metadata names the network's output channels after the label vocabulary
    from scripts.labels import load_vocabulary

    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    channels = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    vocabulary = load_vocabulary()
    assert [channels[str(label.value)] for label in vocabulary.labels] == ["background", "benign", "malignant"]
    assert [channels[str(3 + label.value)] for label in vocabulary.labels] == [
        f"image {name}" for name in vocabulary.class_names]
    assert metadata["network_data_format"]["inputs"]["image"]["spatial_shape"] == inference["image_size"]


@pytest.mark.parametrize("ensemble", [False, True], ids=["one network", "ensemble"])
def test_inference_config_serves_tools_that_load_bundles_by_their_properties(trained, tmp_path, ensemble):
    """MONAI's inference properties (dataset, evaluator, ...) run the same weights, preprocessing, inferer and
    postprocessing as the bundle's own runner, for one network and for a list of weights files."""
    image = BUNDLE / "sample_data" / "benign (23).png"
    checkpoint = str(trained["output_dir"] / "model.pt")
    if ensemble:
        first = tmp_path / "epoch1.pt"
        torch.save(torch.load(trained["output_dir"] / "checkpoint_epoch=1.pt", weights_only=True)["model"], first)
        checkpoint = [checkpoint, str(first)]
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"), meta_file=str(CONFIGS / "metadata.json"), logging_file=False,
        workflow_type="infer", bundle_root=str(BUNDLE), input_files=[str(image)], image_size=[32, 32],
        checkpoint=checkpoint, output_dir=str(tmp_path / "out"),
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    evaluator = workflow.evaluator
    evaluator.run()
    from_evaluator = np.asarray(evaluator.state.output[0]["pred"])[0]
    runner = workflow.parser.get_parsed_content("runner")
    from scripts.reader import read_image

    assert np.array_equal(runner.segment(read_image(image)).labels[0], from_evaluator)
    assert from_evaluator.shape == np.asarray(Image.open(image)).shape[:2]


def test_average_config_averages_epoch_weights(tmp_path):
    for epoch in (1, 2, 3):
        bias = torch.tensor([epoch, -epoch], dtype=torch.float32)
        weights = {"conv.weight": torch.full((2, 2), float(epoch)), "conv.bias": bias}
        torch.save({"model": weights, "optimizer": {}}, tmp_path / f"checkpoint_epoch={epoch}.pt")
    output = tmp_path / "models" / "model.pt"
    run_workflow(TRAINING, run_id="average", output_dir=str(tmp_path), first_epoch=2, last_epoch=3,
                 averaged_weights=str(output))
    averaged = torch.load(output, weights_only=True)
    assert torch.equal(averaged["conv.weight"], torch.full((2, 2), 2.5))
    assert torch.equal(averaged["conv.bias"], torch.tensor([2.5, -2.5]))
    assert [p.name for p in output.parent.iterdir()] == ["model.pt"]

    with pytest.raises(RuntimeError) as failure:
        run_workflow(TRAINING, run_id="average", output_dir=str(tmp_path), first_epoch=3, last_epoch=4,
                     averaged_weights=str(output))
    assert "no checkpoint for epochs [4]" in str(failure.value.__cause__)


def test_bundle_verification_and_export(tmp_path):
    """verify_metadata (offline schema), verify_net_in_out and ckpt_export, as model-zoo CI runs them."""
    from scripts.predict import half_precision

    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(BUNDLE / "docs" / "metadata_schema.json"))
    verify_net_in_out(net_id="network_def", meta_file=str(CONFIGS / "metadata.json"),
                      config_file=str(CONFIGS / "inference.json"), bundle_root=str(BUNDLE))
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    network = parser.get_parsed_content("network_def")
    # weights stored as models/ stores them, in float16: the export is float32, as the network that loads them
    torch.save(half_precision(network.state_dict()), tmp_path / "model.pt")
    network.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    ckpt_export(net_id="network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(tmp_path / "model.pt"),
                meta_file=str(CONFIGS / "metadata.json"), config_file=str(CONFIGS / "inference.json"),
                bundle_root=str(BUNDLE))
    exported = torch.jit.load(str(tmp_path / "model.ts"))
    network.eval()
    image = torch.rand(1, 1, 256, 256)
    with torch.inference_mode():
        assert torch.allclose(exported(image), network(image), atol=1e-4)


def test_shipped_weights_are_the_ones_inference_loads_in_half_precision():
    """models/ holds only the weights files the inference config uses, each a float16 state dict that loads into
    the float32 network unchanged."""
    from scripts.predict import checkpoint_paths, load_networks

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), "device": "$torch.device('cpu')", "mixed_precision": False})
    weights = checkpoint_paths(parser.get_parsed_content("checkpoint"))
    assert sorted(p.name for p in (BUNDLE / "models").iterdir()) == sorted(path.name for path in weights)
    loaded_networks = load_networks(parser.get_parsed_content("network"), [str(path) for path in weights])
    # one weights file gives the network itself, several an nn.ModuleList of copies
    networks = loaded_networks if isinstance(loaded_networks, torch.nn.ModuleList) else [loaded_networks]
    assert len(networks) == len(weights)
    for network, path in zip(networks, weights):
        stored = torch.load(path, map_location="cpu", weights_only=True)
        assert {value.dtype for value in stored.values()} == {torch.float16}
        loaded = network.state_dict()
        assert all(loaded[name].dtype == torch.float32 and torch.equal(loaded[name], stored[name].float())
                   for name in stored)


def test_half_precision_weights_keep_the_network_output(tmp_path):
    from scripts.predict import load_networks, save_half_precision

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"device": "$torch.device('cpu')", "mixed_precision": False,
                   "network_def#channels": [4, 8, 8, 16, 16]})
    network = parser.get_parsed_content("network")
    torch.save(network.state_dict(), tmp_path / "float32.pt")
    save_half_precision(tmp_path / "float32.pt", tmp_path / "float16.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["float16.pt", "float32.pt"]
    image = torch.rand(2, 1, 64, 64)
    network.eval()
    with torch.inference_mode():
        expected = network(image)
        halved = load_networks(network, str(tmp_path / "float16.pt"))(image)
    assert halved.dtype == torch.float32
    assert torch.allclose(halved, expected, atol=1e-2) and not torch.equal(halved, expected)
    too_large = {"weight": torch.tensor([1.0, 1e6])}
    torch.save(too_large, tmp_path / "too_large.pt")
    with pytest.raises(ValueError, match="weights too large for float16: weight"):
        save_half_precision(tmp_path / "too_large.pt", tmp_path / "out.pt")


def test_progress_reporters_follow_the_line_contract(capsys):
    from scripts.progress import make_progress

    lines = make_progress("lines")
    lines.start(2, "file")
    lines.advance()
    lines.error("scan.png: cannot be read")
    lines.advance()
    lines.finish()
    assert capsys.readouterr().out.splitlines() == ["PROGRESS 1 2", "ERROR scan.png: cannot be read", "PROGRESS 2 2"]
    make_progress("bar").finish()  # nothing started (the only input could not be read): nothing to close
    with pytest.raises(ValueError, match="progress must be one of"):
        make_progress("dots")


def test_fine_tuning_scores_held_out_patients_before_and_after(tmp_path):
    """``run finetune`` on a clinic's folder: the shipped model's network tuned on some patients, the others scored
    by the shipped model and by the tuned network; the shipped weights are never the output."""
    patients = {f"P{k}": ["normal", "benign" if k % 2 else "malignant", "benign", "normal"] for k in range(6)}
    folder = make_folder_layout(tmp_path / "clinic", patients)
    shipped = {p: p.read_bytes() for p in (BUNDLE / "models").glob("*.pt")}
    override = {
        **TINY, "dataset_dir": str(folder), "output_dir": str(tmp_path / "tuned"), "folds": 3, "finetune_images": 5,
        "max_epochs": 2, "samples_per_epoch": 8, "averaged_epochs": 2,
    }
    workflow = run_workflow([*TRAINING, "finetune.json"], run_id="finetune", **override)
    tuned = tmp_path / "tuned"
    split = workflow.parser.get_parsed_content("fold_datalist")
    held_out = {item["group"] for item in split["validation"]}
    assert len(split["training"]) == 5 and not held_out & {item["group"] for item in split["training"]}
    for part in ("held_out_before", "held_out_after"):
        rows = list(csv.DictReader(open(tuned / part / "per_image.csv")))
        assert sorted(r["name"] for r in rows) == sorted(item["name"] for item in split["validation"])
    paired = json.loads((tuned / "held_out_after" / "paired_against_held_out_before.json").read_text())
    assert paired["images"] == len(split["validation"]) and "lesion_image_missed" in paired
    initial, final = (torch.load(p, weights_only=True) for p in (BUNDLE / "models" / "model.pt", tuned / "model.pt"))
    # only the encoder is tuned (finetune.json's tuned_layers); the decoder and the image head are the shipped ones
    changed = {k.split(".")[0] for k in initial if not torch.equal(initial[k].float(), final[k])}
    assert changed == {"encoders"}, changed
    assert {p: p.read_bytes() for p in (BUNDLE / "models").glob("*.pt")} == shipped
    # the shipped weights' folder is refused as output; too few patients to hold some out is said plainly
    for bad, message in (
        ({"output_dir": str(BUNDLE / "models")}, "the shipped weights' folder"),
        ({"dataset_dir": str(make_folder_layout(tmp_path / "one", {"P0": ["benign", "normal"]}))}, "too few"),
        ({"tuned_layers": ["encoder"]}, "match no layer of the network; its layers: bottleneck, decoders, encoders"),
    ):
        workflow = ConfigWorkflow(
            config_file=[str(CONFIGS / f) for f in (*TRAINING, "finetune.json")], meta_file=str(CONFIGS / "metadata.json"),
            logging_file=False, workflow_type=None, bundle_root=str(BUNDLE), run_id="finetune",
            **{**override, "output_dir": str(tmp_path / "other"), **bad},
        )
        workflow.initialize()
        with pytest.raises(RuntimeError) as failure:
            workflow.run()
        assert message in str(failure.value.__cause__)
