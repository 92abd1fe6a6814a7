"""Edges of runs and weights (issue 35, "reliability"): a corrupt ImageNet weights file, the
weights cache checked when the workflow is planned, evaluating an unfinished run, the training
slices' channel names, and our own words for an unreadable checkpoint."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from test_encoder_unet import RESNET50_REVISION, fabricated_imagenet_cache
from test_evaluate import SPEC as EVAL_SPEC
from test_evaluate import _constant_class_weights, _two_patient_store
from test_faults_config import _assert_one_line_error, _default_config, _dry_run
from test_train import SPEC as TRAIN_SPEC
from test_train import make_store, tiny_config
from unetscout.cli import main
from unetscout.errors import UnetscoutError
from unetscout.evaluate.predict import load_model, predict_split
from unetscout.models.spec import ModelSpec
from unetscout.runs import load_checkpoint, save_checkpoint
from unetscout.train import loop
from workflow_helpers import snakemake

RESNET50_REPO = "models--smp-hub--resnet50.imagenet"   # huggingface_hub's folder of smp-hub/resnet50.imagenet


def _last_error_line(capsys) -> tuple[str, str]:
    err = capsys.readouterr().err
    return err.strip().splitlines()[-1], err


# ---------------------------------------------------------------- 1. a corrupt ImageNet weights file

def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.mark.parametrize("corrupt", [
    pytest.param(lambda data: np.random.default_rng(3).bytes(4096), id="random-bytes"),
    pytest.param(_truncated, id="truncated"),
    pytest.param(lambda data: b"", id="empty"),
])
def test_a_corrupt_imagenet_weights_file_is_one_line_naming_it(tmp_path, capsys, monkeypatch, corrupt):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "weights"
    fabricated_imagenet_cache(cache)
    weights = cache / RESNET50_REPO / "snapshots" / RESNET50_REVISION / "model.safetensors"
    weights.write_bytes(corrupt(weights.read_bytes()))
    code = main(["train", str(make_store(tmp_path / "slices")), "--out", str(tmp_path / "run"),
                 "--backbone", "resnet50", "--encoder-weights", "imagenet", "--weights-cache", str(cache),
                 "--preset", "paper", "--device", "cpu", "--set", "batch_size=4"])
    line, err = _last_error_line(capsys)
    assert code == 2 and "Traceback" not in err, err
    assert line.startswith(f"unetscout: error: {weights}: corrupt ImageNet weights of encoder resnet50 ("), line
    # The remedy: the whole repository folder (the file may be a link to a blob the hub would
    # link again), then the project's download command.
    assert line.endswith(f"; delete {cache / RESNET50_REPO} and run "
                         f"`unetscout fetch-weights resnet50 --cache {cache}` again"), line
    assert not (tmp_path / "run").exists()


def test_the_imagenet_weights_file_is_where_the_hub_finds_it(tmp_path):
    """smp pins a commit (resnet50); timm's encoders follow the main branch, whose commit the
    cache's refs/main names: until that ref exists, it is the file an offline load misses."""
    from huggingface_hub import try_to_load_from_cache

    from unetscout.models.encoder_unet import imagenet_weights_file

    cache = tmp_path / "weights"
    assert imagenet_weights_file("resnet50", cache) == (cache / RESNET50_REPO / "snapshots" / RESNET50_REVISION
                                                        / "model.safetensors")
    repo = cache / "models--timm--tf_mobilenetv3_large_100.in1k"
    assert imagenet_weights_file("mobilenetv3_large", cache) == repo / "refs" / "main"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "model.safetensors").write_bytes(b"weights")
    found = imagenet_weights_file("mobilenetv3_large", cache)
    assert found == repo / "snapshots" / commit / "model.safetensors"
    # huggingface_hub's own lookup (what timm's download resolves offline) finds the same file.
    assert Path(try_to_load_from_cache("timm/tf_mobilenetv3_large_100.in1k", "model.safetensors",
                                       cache_dir=cache)) == found


# ---------------------------------------------------------------- 2. the weights cache at `snakemake -n`

def test_a_missing_imagenet_weights_cache_stops_the_dry_run_in_one_line(tmp_path):
    config = _default_config()
    config["backbones"] = ["plain", "resnet50"]
    config["models"]["resnet50"] = {"encoder_weights": "imagenet"}
    result, output = _dry_run(tmp_path, config)
    missing = f"resources/weights/{RESNET50_REPO}/snapshots/{RESNET50_REVISION}/model.safetensors"
    expected = (f"imagenet needs {missing}, which is missing; on a machine with internet run "
                "`unetscout fetch-weights resnet50 --cache resources/weights` (weights_cache) "
                "and copy that folder here")
    _assert_one_line_error(result, output, "models.resnet50.encoder_weights", re.escape(expected))
    # Once the weights are there (as fetch-weights leaves them), the same plan goes through.
    fabricated_imagenet_cache(tmp_path / "wf" / "resources" / "weights")
    again = snakemake(tmp_path / "wf", "-n")
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "train_backbone" in again.stdout


# ---------------------------------------------------------------- 3. evaluating an unfinished run

def _interrupted_run(folder: Path, spec: ModelSpec, state: dict) -> Path:
    """What a killed training leaves: model.json and checkpoints, no done.json."""
    folder.mkdir(parents=True)
    spec.save(folder / "model.json")
    save_checkpoint(folder / "best.pt", {"model": state, "epoch": 1, "val_dice": 0.5, "spec": spec.to_dict()})
    return folder


def test_evaluate_refuses_an_unfinished_run_unless_allowed_and_then_says_so(tmp_path, capsys):
    run = _interrupted_run(tmp_path / "run", EVAL_SPEC, _constant_class_weights(EVAL_SPEC, winner=1))
    store = _two_patient_store(tmp_path / "slices")
    out = tmp_path / "eval" / "patients.tsv"
    command = ["evaluate", str(run), str(store), "--out", str(out), "--device", "cpu"]
    assert main(command) == 2
    line, err = _last_error_line(capsys)
    assert line == (f"unetscout: error: {run}: unfinished run (no done.json: its training was interrupted or is "
                    "still running); rerun its job to finish it, or pass --allow-unfinished to score its best.pt "
                    "anyway"), err
    assert not out.exists()

    assert main([*command, "--allow-unfinished"]) == 0
    printed = capsys.readouterr()
    table = pd.read_csv(out, sep="\t", dtype=str, keep_default_na=False)
    assert table["unfinished"].tolist() == ["true", "true"]
    # The scores are those of the weights as they are: lesion everywhere, P1's 10 reference lesion
    # voxels of 5 * 64 predicted -> 2 * 10 / (320 + 10); P2 has no lesion -> 0.
    assert [float(v) for v in table["dice_lesion"]] == pytest.approx([20 / 330, 0.0])
    assert "(an unfinished run)" in printed.out and "is unfinished" in printed.err

    # Finished (done.json written last), the same folder scores the same, with no such column.
    (run / "done.json").write_text(json.dumps({"best_epoch": 1}))
    finished = predict_split(run, store, device="cpu")
    assert "unfinished" not in finished.columns
    assert finished["dice_lesion"].tolist() == pytest.approx([20 / 330, 0.0])


def test_a_prune_runs_pick_and_snapshots_are_finished_with_its_done_json(tmp_path):
    """The workflow scores a prune run's pick (its root) and the retrained baselines read its
    at75/ at50/ at25/ snapshots; the snapshots have no done.json of their own: the run's, which
    lists them, marks them finished."""
    from test_prune import run_prune

    slices = make_store(tmp_path / "slices")
    out = run_prune(slices, tmp_path / "prune", "widest_block")
    assert json.loads((out / "done.json").read_text())["snapshots"] == ["at75", "at50", "at25"]
    assert not (out / "at50" / "done.json").exists()
    for folder in (out, out / "at50"):
        scored = predict_split(folder, slices, device="cpu")
        assert "unfinished" not in scored.columns and scored["patient"].tolist() == ["p4"]
    # While the prune run is unfinished, its pick and its snapshots are refused alike.
    (out / "done.json").rename(tmp_path / "done.json")
    for folder in (out, out / "at50"):
        with pytest.raises(UnetscoutError, match=rf"^{re.escape(str(folder))}: unfinished run"):
            predict_split(folder, slices, device="cpu")


# ---------------------------------------------------------------- 4. channel names

def test_model_json_records_the_training_channels_and_evaluate_checks_them(tmp_path):
    slices = make_store(tmp_path / "slices")                      # channels a, b
    out = loop.train(slices, tmp_path / "run", TRAIN_SPEC, tiny_config(epochs="1", iterations_per_epoch="1"),
                     device="cpu")
    written = json.loads((out / "model.json").read_text())
    assert written["channel_names"] == ["a", "b"]
    # Beside the spec, not in it: the run's identity (done.json's model) is the spec alone.
    identity_model = json.loads((out / "done.json").read_text())["model"]
    assert "channel_names" not in identity_model
    assert ModelSpec.load(out / "model.json").to_dict() == identity_model
    assert predict_split(out, slices, device="cpu")["patient"].tolist() == ["p4"]

    swapped = tmp_path / "swapped"
    shutil.copytree(slices, swapped)
    meta = json.loads((swapped / "slices.json").read_text())
    (swapped / "slices.json").write_text(json.dumps({**meta, "channel_names": ["b", "a"]}))
    with pytest.raises(UnetscoutError) as err:
        predict_split(out, swapped, device="cpu")
    assert str(err.value) == f"{out / 'model.json'}: model was trained on channels a, b but {swapped} has b, a"

    # A model.json of an older run records no names: accepted as before.
    (out / "model.json").write_text(json.dumps({k: v for k, v in written.items() if k != "channel_names"}))
    assert predict_split(out, swapped, device="cpu")["patient"].tolist() == ["p4"]


# ---------------------------------------------------------------- 5. our words for unreadable checkpoints

def _forbidden_global(path: Path) -> None:
    # A function is pickled as a reference to importable code: weights_only unpickling refuses it.
    torch.save({"format_version": 1, "model": {}, "hook": os.getcwd}, path)


def _truncated_checkpoint(path: Path) -> None:
    save_checkpoint(path, {"model": {"w": torch.ones(64)}})
    path.write_bytes(_truncated(path.read_bytes()))


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(5).bytes(4096))


@pytest.mark.parametrize("make", [
    pytest.param(_forbidden_global, id="forbidden-global"),
    pytest.param(_truncated_checkpoint, id="truncated"),
    pytest.param(_random_bytes, id="random-bytes"),
])
def test_an_unreadable_checkpoint_is_one_line_in_our_words(tmp_path, make):
    run = tmp_path / "run"
    run.mkdir()
    EVAL_SPEC.save(run / "model.json")
    make(run / "best.pt")
    for read in (load_checkpoint, lambda path: load_model(path.parent, "best")):   # runs' reader, evaluate's
        with pytest.raises(UnetscoutError) as err:
            read(run / "best.pt")
        message = str(err.value)
        assert message.startswith(f"{run / 'best.pt'}: unreadable checkpoint (not a file torch can load: "), message
        assert message.endswith("); delete it and rerun the job that wrote it"), message
        assert "weights_only" not in message and "issue" not in message and "\n" not in message
    if make is _forbidden_global:
        assert "(posix.getcwd)" in message
