"""`unetscout evaluate` end to end on tiny slice stores and model folders built in the test."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import unetscout.models.unet as unet_module
from unetscout.data.slice_store import SliceStore
from unetscout.data.slices import FORMAT_VERSION
from unetscout.errors import UnetscoutError
from unetscout.evaluate.cli_args import add_evaluate_parser
from unetscout.evaluate.predict import predict_split, summarise, write_patients_tsv
from unetscout.models.spec import ModelSpec
from unetscout.models.unet import build_model
from unetscout.runs import save_checkpoint
from unetscout.train.validate import patient_dice

LABELS = {"background": 0, "lesion": 1, "texture": 2}
SIZE = 8
SPEC = ModelSpec("lean", in_channels=2, num_classes=3, image_size=SIZE, width=4, stages=2)
NAN = float("nan")


def _write_store(root: Path, cases: list[dict]) -> Path:
    """A slices folder in SliceStore's layout; each case: case, patient, split, label, spacing[, image]."""
    (root / "cases").mkdir(parents=True)
    (root / "slices.json").write_text(json.dumps({
        "format_version": FORMAT_VERSION, "channel_names": ["T1", "T2"], "labels": LABELS, "size": SIZE}))
    rows = []
    for c in cases:
        label = np.asarray(c["label"], dtype=np.uint8)
        image = c.get("image")
        if image is None:
            image = np.random.default_rng(0).normal(size=(label.shape[0], 2, SIZE, SIZE))
        np.save(root / "cases" / f"{c['case']}_image.npy", np.asarray(image, dtype=np.float32))
        np.save(root / "cases" / f"{c['case']}_label.npy", label)
        sx, sy, sz = c.get("spacing", (1.0, 1.0, 1.0))
        rows.append({"case": c["case"], "patient": c["patient"], "split": c["split"], "slices": label.shape[0],
                     "spacing_x": sx, "spacing_y": sy, "spacing_z": sz})
    pd.DataFrame(rows).to_csv(root / "manifest.tsv", sep="\t", index=False)
    return root


def _write_model(folder: Path, spec: ModelSpec, state: dict, checkpoint: str = "best") -> Path:
    """A finished run's folder: model.json, the checkpoint as training writes it, done.json."""
    folder.mkdir(parents=True, exist_ok=True)
    spec.save(folder / "model.json")
    save_checkpoint(folder / f"{checkpoint}.pt", {"model": state, "epoch": 3})
    (folder / "done.json").write_text("{}")
    return folder


def _constant_class_weights(spec: ModelSpec, winner: int) -> dict:
    """All weights zero and every output-head bias favouring `winner`: the net predicts it everywhere."""
    state = build_model(spec).state_dict()
    for key, tensor in state.items():
        tensor.zero_()
        # Heads are the only biases with one entry per class (the width is 4, not 3).
        if key.endswith("bias") and tuple(tensor.shape) == (spec.num_classes,):
            tensor[winner] = 5.0
    return state


def _labels(slices: int, *voxels: tuple[int, int, int, int]) -> np.ndarray:
    """uint8 [S, X, Y] with the given (slice, x, y, class) voxels set."""
    label = np.zeros((slices, SIZE, SIZE), dtype=np.uint8)
    for s, x, y, k in voxels:
        label[s, x, y] = k
    return label


def _same(actual: float, expected: float) -> bool:
    return (math.isnan(actual) and math.isnan(expected)) or actual == pytest.approx(expected)


def _two_patient_store(root: Path) -> Path:
    lesion_block = [(s, x, y, 1) for s in range(3) for x in range(2) for y in range(1)]  # 6 voxels in ES
    return _write_store(root, [
        # P1: ED (2 slices, lesion 4 voxels) and ES (3 slices, lesion 6, texture 3) -> one row.
        {"case": "P1_ED", "patient": "P1", "split": "test",
         "label": _labels(2, (0, 1, 1, 1), (0, 1, 2, 1), (1, 1, 1, 1), (1, 2, 2, 1))},
        {"case": "P1_ES", "patient": "P1", "split": "test",
         "label": _labels(3, *lesion_block, (0, 5, 5, 2), (1, 5, 5, 2), (2, 5, 5, 2))},
        # P2: nothing to find.
        {"case": "P2", "patient": "P2", "split": "test", "label": _labels(2)},
        {"case": "P3", "patient": "P3", "split": "train", "label": _labels(1, (0, 0, 0, 1))},
    ])


@pytest.mark.parametrize("deep_supervision", [False, True])
def test_constant_prediction_scores_patients_by_hand(tmp_path, deep_supervision):
    spec = SPEC.replace(deep_supervision=deep_supervision)
    model_dir = _write_model(tmp_path / "model", spec, _constant_class_weights(spec, winner=1))
    df = predict_split(model_dir, _two_patient_store(tmp_path / "slices"), split="test", device="cpu",
                       batch_size=2)
    assert df["patient"].tolist() == ["P1", "P2"]   # P3 is in train; P1's two cases make one row
    p1, p2 = (df.set_index("patient").loc[p] for p in ("P1", "P2"))
    assert (p1["n_cases"], p1["n_slices"]) == (2, 5)
    # Lesion predicted on all 5 * 64 = 320 voxels, 10 of them reference lesion: 2*10 / (320 + 10).
    assert p1["dice_lesion"] == pytest.approx(20 / 330)
    assert p1["dice_texture"] == 0.0
    assert p1["dice"] == pytest.approx(10 / 330)
    # Texture: ED has none on either side (skipped), ES has reference texture but no prediction:
    # the penalty, ES's image diagonal ([X, Y, S] = [8, 8, 3] at 1 mm): sqrt(64 + 64 + 9).
    assert p1["hd95_texture"] == pytest.approx(math.sqrt(137))
    assert p1["hd95_texture_note"] == "P1_ES: empty prediction"
    assert p1["hd95_lesion_note"] == "" and p1["hd95_lesion"] > 0
    # P2: lesion predicted but absent (Dice 0; HD95 the diagonal of [8, 8, 2]: sqrt(64 + 64 + 4)),
    # texture absent on both sides (NaN).
    assert p2["dice_lesion"] == 0.0 and math.isnan(p2["dice_texture"]) and p2["dice"] == 0.0
    assert p2["hd95_lesion"] == pytest.approx(math.sqrt(132)) and p2["hd95_lesion_note"] == "empty reference"
    assert math.isnan(p2["hd95_texture"])
    assert p2["hd95_texture_note"] == "both empty"


class _LabelEcho(nn.Module):
    """Predicts exactly the class map stored in input channel 0 (to place predictions by hand)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.num_classes = spec.num_classes
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        classes = x[:, 0].round().long().clamp(0, self.num_classes - 1)
        return nn.functional.one_hot(classes, self.num_classes).permute(0, 3, 1, 2).float() * self.scale


def _echo_case(case, patient, pred, ref, spacing):
    image = np.zeros((pred.shape[0], 2, SIZE, SIZE), dtype=np.float32)
    image[:, 0] = pred
    return {"case": case, "patient": patient, "split": "test", "label": ref, "image": image, "spacing": spacing}


def test_stack_axes_follow_spacing_xyz(tmp_path, monkeypatch):
    monkeypatch.setattr(unet_module, "build_model", _LabelEcho)
    model_dir = _write_model(tmp_path / "model", SPEC, _LabelEcho(SPEC).state_dict())
    spacing = (0.5, 2.0, 4.0)
    # lesion: prediction one slice above the reference -> 4 mm (z spacing).
    # texture: prediction 2 voxels along x from the reference -> 1 mm (x spacing; y would give 4).
    pred = _labels(2, (1, 3, 3, 1), (0, 4, 6, 2))
    ref = _labels(2, (0, 3, 3, 1), (0, 6, 6, 2))
    store = _write_store(tmp_path / "slices", [_echo_case("A", "A", pred, ref, spacing)])
    row = predict_split(model_dir, store, device="cpu").iloc[0]
    assert row["hd95_lesion"] == pytest.approx(4.0)
    assert row["hd95_texture"] == pytest.approx(1.0)
    assert row["dice_lesion"] == 0.0 and row["dice_texture"] == 0.0


def test_patient_hd95_is_the_mean_over_its_cases(tmp_path, monkeypatch):
    monkeypatch.setattr(unet_module, "build_model", _LabelEcho)
    model_dir = _write_model(tmp_path / "model", SPEC, _LabelEcho(SPEC).state_dict())
    same = _labels(1, (0, 2, 2, 1), (0, 2, 3, 1), (0, 3, 3, 1))
    store = _write_store(tmp_path / "slices", [
        # ED: prediction 3 voxels along y from the reference (3 mm, Dice 0); ES: perfect
        # (0 mm, Dice 1, 3 voxels).
        _echo_case("P_ED", "P", _labels(1, (0, 2, 5, 1)), _labels(1, (0, 2, 2, 1)), (1.0, 1.0, 5.0)),
        _echo_case("P_ES", "P", same, same, (1.0, 1.0, 5.0)),
    ])
    row = predict_split(model_dir, store, device="cpu").iloc[0]
    assert row["hd95_lesion"] == pytest.approx(1.5)
    # Summed counts: TP 3, FP 1, FN 1 -> 6 / 8, not the mean of the cases' Dice (0.5).
    assert row["dice_lesion"] == pytest.approx(0.75)
    assert (row["n_cases"], row["n_slices"]) == (2, 2)


def test_validation_and_evaluation_give_the_hand_computed_patient_dice(tmp_path, monkeypatch):
    """Training's best-epoch Dice (`patient_dice`) and `unetscout evaluate` share one definition."""
    monkeypatch.setattr(unet_module, "build_model", _LabelEcho)
    model_dir = _write_model(tmp_path / "model", SPEC, _LabelEcho(SPEC).state_dict())
    store = _write_store(tmp_path / "slices", [
        # P1, case ED (1 slice): lesion TP 1 (1,1), FP 1 (2,2), FN 1 (1,2); texture TP 1 (5,5), FP 1 (5,6).
        _echo_case("P1_ED", "P1", _labels(1, (0, 1, 1, 1), (0, 2, 2, 1), (0, 5, 5, 2), (0, 5, 6, 2)),
                   _labels(1, (0, 1, 1, 1), (0, 1, 2, 1), (0, 5, 5, 2)), (1.0, 1.0, 1.0)),
        # P1, case ES (2 slices): lesion TP 2, FN 1 at (1,3,4), predicted texture there (texture FP 1).
        _echo_case("P1_ES", "P1", _labels(2, (0, 3, 3, 1), (1, 3, 3, 1), (1, 3, 4, 2)),
                   _labels(2, (0, 3, 3, 1), (1, 3, 3, 1), (1, 3, 4, 1)), (1.0, 1.0, 1.0)),
        # P2 (2 slices): lesion TP 2, FP 1 (1,6,6), FN 1 (0,2,3); texture on neither side.
        _echo_case("P2", "P2", _labels(2, (0, 2, 2, 1), (1, 2, 2, 1), (1, 6, 6, 1)),
                   _labels(2, (0, 2, 2, 1), (0, 2, 3, 1), (1, 2, 2, 1)), (1.0, 1.0, 1.0)),
        # P3: empty on both sides, every class NaN: skipped by the mean over patients.
        _echo_case("P3", "P3", _labels(1), _labels(1), (1.0, 1.0, 1.0)),
    ])
    # P1 sums its two cases: lesion TP 3, FP 1, FN 2 -> 6/9; texture TP 1, FP 2, FN 0 -> 2/4.
    # (The mean of the cases' Dice would be lesion (2/4 + 4/5) / 2, texture (2/3 + 0) / 2.)
    expected_class = {"P1": (6 / 9, 2 / 4), "P2": (4 / 6, NAN)}
    expected = {"P1": (6 / 9 + 2 / 4) / 2, "P2": 4 / 6, "P3": NAN}
    expected_dataset = 5 / 8   # (7/12 + 8/12) / 2: P3 skipped, not counted as 0

    dataset, per_patient = patient_dice(_LabelEcho(SPEC), SliceStore(store), "test", torch.device("cpu"),
                                        batch_size=1)
    df = predict_split(model_dir, store, split="test", device="cpu", batch_size=1).set_index("patient")
    assert sorted(per_patient) == df.index.tolist() == ["P1", "P2", "P3"]
    for patient, value in expected.items():
        assert _same(per_patient[patient], value) and _same(df.loc[patient, "dice"], value), patient
    # Not merely close: both paths run the same code, so they agree to the last bit.
    assert np.array_equal([per_patient[p] for p in expected], df.loc[list(expected), "dice"].to_numpy(),
                          equal_nan=True)
    for patient, (lesion, texture) in expected_class.items():
        assert _same(df.loc[patient, "dice_lesion"], lesion) and _same(df.loc[patient, "dice_texture"], texture)
    assert dataset == pytest.approx(expected_dataset)
    assert f"dice: {expected_dataset:.4f} +- " in summarise(df.reset_index())   # evaluate's mean, P3 skipped


def test_checkpoint_that_does_not_match_the_spec_names_the_file(tmp_path):
    other = build_model(SPEC.replace(width=8)).state_dict()
    model_dir = _write_model(tmp_path / "model", SPEC, other)
    store = _two_patient_store(tmp_path / "slices")
    with pytest.raises(UnetscoutError) as err:
        predict_split(model_dir, store, device="cpu")
    message = str(err.value)
    assert message.startswith(f"{model_dir / 'best.pt'}: weights do not match")
    assert "\n" not in message


def test_non_finite_predictions_name_the_checkpoint(tmp_path):
    state = build_model(SPEC).state_dict()
    for key, tensor in state.items():
        if key.endswith("bias") and tuple(tensor.shape) == (SPEC.num_classes,):
            tensor.fill_(float("nan"))
    model_dir = _write_model(tmp_path / "model", SPEC, state, checkpoint="last")
    with pytest.raises(UnetscoutError, match=r"last\.pt: .*non-finite"):
        predict_split(model_dir, _two_patient_store(tmp_path / "slices"), checkpoint="last", device="cpu")


@pytest.mark.parametrize("change, problem", [
    ({"in_channels": 1}, "input channels 1"),
    ({"num_classes": 4}, "classes 4"),
    ({"image_size": 16}, "image size 16"),
])
def test_model_that_does_not_fit_the_slices_names_model_json(tmp_path, change, problem):
    spec = SPEC.replace(**change)
    model_dir = _write_model(tmp_path / "model", spec, build_model(spec).state_dict())
    with pytest.raises(UnetscoutError, match=f"model.json: model has {problem}"):
        predict_split(model_dir, _two_patient_store(tmp_path / "slices"), device="cpu")


def test_missing_or_foreign_checkpoint(tmp_path):
    model_dir = _write_model(tmp_path / "model", SPEC, build_model(SPEC).state_dict())
    store = _two_patient_store(tmp_path / "slices")
    with pytest.raises(UnetscoutError, match=r"last\.pt: checkpoint not found"):
        predict_split(model_dir, store, checkpoint="last", device="cpu")
    torch.save(build_model(SPEC).state_dict(), model_dir / "best.pt")   # a bare state_dict
    with pytest.raises(UnetscoutError, match=r"best\.pt: not a unetscout checkpoint"):
        predict_split(model_dir, store, device="cpu")


def test_cli_writes_tsv_and_prints_means(tmp_path, capsys):
    model_dir = _write_model(tmp_path / "model", SPEC, _constant_class_weights(SPEC, winner=1))
    store = _two_patient_store(tmp_path / "slices")
    out = tmp_path / "eval" / "patients.tsv"
    parser = argparse.ArgumentParser()
    add_evaluate_parser(parser.add_subparsers())
    args = parser.parse_args(["evaluate", str(model_dir), str(store), "--out", str(out), "--device", "cpu"])
    args.func(args)
    table = pd.read_csv(out, sep="\t", keep_default_na=False, na_values=["NaN"])
    assert list(table.columns) == ["patient", "n_cases", "n_slices", "dice", "dice_lesion", "dice_texture",
                                   "hd95_lesion", "hd95_texture", "hd95_lesion_note", "hd95_texture_note"]
    assert table["dice_lesion"].tolist() == pytest.approx([20 / 330, 0.0])
    assert math.isnan(table.loc[1, "dice_texture"])
    assert table.loc[1, "hd95_lesion_note"] == "empty reference"
    assert sorted(p.name for p in out.parent.iterdir()) == ["patients.tsv"]   # no partial files left
    printed = capsys.readouterr().out
    # Mean over the two patients of dice_lesion: (20/330 + 0) / 2.
    assert f"dice_lesion: {10 / 330:.4f} +- " in printed


def test_write_patients_tsv_round_trips(tmp_path):
    df = pd.DataFrame({"patient": ["007", "010"], "dice": [0.5, float("nan")], "hd95_a_note": ["", "both empty"]})
    write_patients_tsv(df, tmp_path / "p.tsv")
    back = pd.read_csv(tmp_path / "p.tsv", sep="\t", dtype={"patient": str}, keep_default_na=False,
                       na_values=["NaN"])
    assert back["patient"].tolist() == ["007", "010"]
    assert back["dice"][0] == 0.5 and math.isnan(back["dice"][1])
    assert back["hd95_a_note"].tolist() == ["", "both empty"]


def test_device_names():
    from unetscout.evaluate.predict import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UnetscoutError, match="unknown device 'bogus'"):
        resolve_device("bogus")
    if not torch.cuda.is_available():
        with pytest.raises(UnetscoutError, match="no CUDA GPU is available"):
            resolve_device("cuda")
