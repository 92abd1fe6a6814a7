"""The width sweep report: joins scores and trained Dice, Spearman, and the falsification check."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from unetscout.errors import UnetscoutError
from unetscout.models.spec import ModelSpec
from unetscout.width.sweep import sweep_report

CAPS = (64, 32, 16, 8, 4)


def _write_run(root, cap, dices, backbone="plain"):
    run = root / f"cap{cap}"
    run.mkdir(parents=True)
    ModelSpec(backbone, in_channels=1, num_classes=2, image_size=32, cap=cap).save(run / "model.json")
    pd.DataFrame({"patient": [f"p{i}" for i in range(len(dices))], "dice": dices}).to_csv(
        run / "patients.tsv", sep="\t", index=False)
    return run / "patients.tsv"


def _write_scores(path, norms):
    pd.DataFrame({"seed": 369, "cap": CAPS, "params": [1000 * c for c in CAPS], "gflops": 0.1,
                  "score": norms, "score_norm": norms}).to_csv(path, sep="\t", index=False)


@pytest.fixture
def sweep(tmp_path):
    # Dice means: cap 64 -> 0.9, 32 -> 0.8, 16 -> 0.7, 8 -> 0.4, 4 -> 0.1 (two patients each).
    dices = {64: [0.9, 0.9], 32: [0.7, 0.9], 16: [0.6, 0.8], 8: [0.4, 0.4], 4: [0.0, 0.2]}
    runs = [_write_run(tmp_path / "runs", cap, d) for cap, d in dices.items()]
    scores = tmp_path / "scores.tsv"
    # Scores ranked 64 > 32 > 8 > 16 > 4: Spearman with the Dice ranks (5,4,3,2,1) vs (5,4,2,3,1):
    # d^2 = 0+0+1+1+0 = 2, rho = 1 - 6*2/(5*24) = 0.9.
    _write_scores(scores, [1.0, 0.8, 0.3, 0.5, 0.0])
    return tmp_path, runs, scores


def _select(tmp_path, cap):
    path = tmp_path / "selection.json"
    path.write_text(json.dumps({"selected_cap": cap}))
    return path


def test_report_table_spearman_and_pick_check(sweep):
    tmp_path, runs, scores = sweep
    summary = sweep_report(runs, scores, _select(tmp_path, 16), tmp_path / "sweep.tsv",
                           tmp_path / "sweep.json", tmp_path / "sweep.png", margin=0.05)
    table = pd.read_csv(tmp_path / "sweep.tsv", sep="\t")
    assert list(table["cap"]) == list(CAPS)
    assert table.set_index("cap").loc[32, "dice_mean"] == pytest.approx(0.8)
    assert table.set_index("cap").loc[32, "dice_sd"] == pytest.approx(0.1414213562, rel=1e-4)  # TSV keeps 6 significant digits
    assert summary["spearman_rho"] == pytest.approx(0.9)
    # next larger than 16 is 32: 0.8 - 0.7 = 0.1 > margin 0.05 -> falsified
    assert summary["next_larger_cap"] == 32
    assert summary["delta_next_larger"] == pytest.approx(0.1)
    assert summary["pick_falsified"] is True
    assert (tmp_path / "sweep.png").stat().st_size > 1000 and (tmp_path / "sweep.pdf").exists()
    assert json.loads((tmp_path / "sweep.json").read_text()) == summary


def test_pick_holds_when_the_next_cap_is_not_clearly_better(sweep):
    tmp_path, runs, scores = sweep
    summary = sweep_report(runs, scores, _select(tmp_path, 32), tmp_path / "s.tsv", tmp_path / "s.json",
                           tmp_path / "s.png", margin=0.15)
    assert summary["delta_next_larger"] == pytest.approx(0.1)
    assert summary["pick_falsified"] is False


def test_largest_cap_has_no_next_larger(sweep):
    tmp_path, runs, scores = sweep
    summary = sweep_report(runs, scores, _select(tmp_path, 64), tmp_path / "s.tsv", tmp_path / "s.json",
                           tmp_path / "s.png")
    assert summary["next_larger_cap"] is None and summary["pick_falsified"] is None


def test_a_missing_cap_is_an_error_naming_the_scores(sweep):
    tmp_path, runs, scores = sweep
    with pytest.raises(UnetscoutError, match=r"scores\.tsv: no trained sweep run for cap\(s\) 64"):
        sweep_report(runs[1:], scores, _select(tmp_path, 16), tmp_path / "s.tsv", tmp_path / "s.json",
                     tmp_path / "s.png")
    assert not (tmp_path / "s.tsv").exists()


def test_a_non_plain_run_is_refused(tmp_path):
    run = _write_run(tmp_path / "runs", 8, [0.5, 0.5], backbone="lean")
    _write_scores(tmp_path / "scores.tsv", [1.0, 0.8, 0.3, 0.5, 0.0])
    with pytest.raises(UnetscoutError, match="model.json: width sweep runs are plain U-Nets"):
        sweep_report([run], tmp_path / "scores.tsv", _select(tmp_path, 8), tmp_path / "s.tsv",
                     tmp_path / "s.json", tmp_path / "s.png")
