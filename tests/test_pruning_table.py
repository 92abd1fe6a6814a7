"""Table 6 and the pruning figures on a fabricated study whose expected values are computed by hand."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from unetscout.cli import main
from unetscout.models.describe import count_parameters
from unetscout.models.spec import ModelSpec
from unetscout.models.unet import build_model
from unetscout.models.widths import UNetWidths
from unetscout.prune.log import LOG_COLUMNS
from unetscout.stats.figures import build_figures
from unetscout.stats.tables import build_tables

START = UNetWidths.doubling(4, 4, 2)


def _spec(widths: UNetWidths) -> ModelSpec:
    return ModelSpec("plain", 1, 2, 32, widths=widths.to_json())


def _patients(run, dice):
    run.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"patient": [f"p{i}" for i in range(len(dice))], "dice": dice}).to_csv(
        run / "patients.tsv", sep="\t", index=False)


def _prune_run(run, test_dice, val_dice, params, patient_dice):
    """A finished prune run: its log (one narrower network a step), done.json and the pick's files."""
    run.mkdir(parents=True)
    widths, rows = START, []
    for step, (test, val, p) in enumerate(zip(test_dice, val_dice, params)):
        layers = widths.layer_widths()
        rows.append({"step": step, "channels": widths.total_channels(),
                     "fraction": widths.total_channels() / START.total_channels(), "params": p, "gflops": 0.1,
                     "loss": 1.0, "val_dice": val, "test_dice": test, "seconds": 1.0, "removed": "",
                     "widths": json.dumps(layers)})
        widths = widths.with_layer("enc3.1", layers["enc3.1"] - 8)
    pd.DataFrame(rows, columns=LOG_COLUMNS).to_csv(run / "log.tsv", sep="\t", index=False)
    best = max(range(len(val_dice)), key=lambda i: val_dice[i])
    (run / "done.json").write_text(json.dumps({"best_val_step": best}))
    pick = START
    for _ in range(best):
        pick = pick.with_layer("enc3.1", pick.layer_widths()["enc3.1"] - 8)
    _spec(pick).save(run / "model.json")
    _patients(run, patient_dice)
    for pct in (75, 50, 25):
        (run / f"at{pct}").mkdir()
        _spec(pick).save(run / f"at{pct}" / "model.json")
    return pick


@pytest.fixture()
def study(tmp_path):
    ds = tmp_path / "results" / "syn"
    (ds / "slices").mkdir(parents=True)
    prune = ds / "prune" / "stamp" / "paper"
    # max test per seed: .6, .5, .9 -> median .6, MAD median(|0|, .1, .3) = .1
    # validation picks (patients' means): .4, .55, .5 -> median .5, MAD median(.1, .05, 0) = .05
    _prune_run(prune / "seed0", [0.5, 0.6, 0.2], [0.3, 0.4, 0.1], [900, 800, 700], [0.3, 0.5])
    _prune_run(prune / "seed1", [0.5, 0.4, 0.1], [0.6, 0.2, 0.1], [900, 800, 700], [0.5, 0.6])
    _prune_run(prune / "seed2", [0.9, 0.8, 0.3], [0.1, 0.1, 0.9], [900, 800, 700], [0.5, 0.5])
    study = ds / "prune_study"
    for seed, dice in (("seed0", [0.2, 0.4]), ("seed1", [0.5, 0.5])):
        _patients(study / "unet25" / "paper" / seed, dice)
        _spec(UNetWidths.doubling(1, 4, 2)).save(study / "unet25" / "paper" / seed / "model.json")
    _patients(study / "retrained_stamp_50" / "paper" / "seed0", [0.6, 0.6])
    _spec(START.with_layer("enc3.1", 16)).save(study / "retrained_stamp_50" / "paper" / "seed0" / "model.json")
    _patients(study / "lunet4" / "paper" / "seed0", [0.7, 0.9])
    ModelSpec("lean", 1, 2, 32, width=4).save(study / "lunet4" / "paper" / "seed0" / "model.json")
    return tmp_path / "results"


def test_table6_medians_and_mads_by_hand(study, tmp_path):
    build_tables(study, tmp_path / "tables", n_resamples=100)
    table = pd.read_csv(tmp_path / "tables" / "table6.csv").set_index("method")
    assert list(table.index) == ["unet25", "stamp_max_test", "stamp_val_pick", "retrained_stamp_50", "lunet4"]
    biased = table.loc["stamp_max_test"]
    assert (biased["dice_median"], biased["dice_mad"], biased["n_seeds"]) == pytest.approx((0.6, 0.1, 3))
    # The max-test steps are 1, 0, 0: the logged params 800, 900, 900.
    assert biased["params_median"] == 900 and biased["biased"]
    pick = table.loc["stamp_val_pick"]
    assert (pick["dice_median"], pick["dice_mad"]) == pytest.approx((0.5, 0.05)) and not pick["biased"]
    # The picks are at steps 1, 0, 2: rebuilt from model.json, the median network is step 1's.
    step1 = START.with_layer("enc3.1", 24)
    assert pick["params_median"] == count_parameters(build_model(_spec(step1)))
    assert pick["channels_pct_median"] == pytest.approx(100 * step1.total_channels() / START.total_channels())
    scaled = table.loc["unet25"]
    assert (scaled["dice_median"], scaled["dice_mad"], scaled["n_seeds"]) == pytest.approx((0.4, 0.1, 2))
    assert scaled["params_median"] == count_parameters(build_model(_spec(UNetWidths.doubling(1, 4, 2))))
    assert table.loc["lunet4", "dice_median"] == pytest.approx(0.8)
    # The retrained share: its channels over the pruned run's starting ones (176 - 16 of 176).
    assert table.loc["retrained_stamp_50", "channels_pct_median"] == pytest.approx(100 * 160 / 176)
    md = (tmp_path / "tables" / "table6.md").read_text()
    assert "STAMP, max test *" in md and "0.6000 (0.1000)" in md


def test_pruning_figures_are_drawn(study, tmp_path):
    written = {p.name for p in build_figures(study, tmp_path / "figures")}
    for figure in ("pruning_dice", "pruning_channels", "pruning_distribution"):
        assert f"{figure}_syn_paper.png" in written
        assert (tmp_path / "figures" / f"{figure}_syn_paper.png").stat().st_size > 1000


def test_a_damaged_log_is_one_line_naming_it(study, tmp_path, capsys):
    log = study / "syn" / "prune" / "stamp" / "paper" / "seed1" / "log.tsv"
    log.write_text(log.read_text().replace("test_dice", "test_score"))
    assert main(["tables", str(study), "--out", str(tmp_path / "tables")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and str(log) in errors[0] and "test_dice" in errors[0]
    assert not (tmp_path / "tables").exists()


def test_a_baseline_folder_with_a_foreign_name_is_refused(study, tmp_path, capsys):
    (study / "syn" / "prune_study" / "unet_wide" / "paper").mkdir(parents=True)
    assert main(["tables", str(study), "--out", str(tmp_path / "tables")]) == 2
    assert "unet_wide" in capsys.readouterr().err
