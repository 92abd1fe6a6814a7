"""Tables 1-5 on a fabricated results tree whose expected values are computed by hand."""

from __future__ import annotations

import argparse
import json
import math

import pandas as pd
import pytest

from unetscout.errors import UnetscoutError
from unetscout.stats.cli_args import add_tables_parser
from unetscout.stats.tables import build_tables

PATIENTS = ["p1", "p2", "p3", "p4"]
MISSING = "—"


def _tsv(path, dice, hd95=None):
    path.mkdir(parents=True, exist_ok=True)
    columns = {"patient": PATIENTS[: len(dice)], "dice": dice, "dice_lesion": dice}
    if hd95 is not None:
        columns["hd95_lesion"] = hd95
        columns["hd95_lesion_note"] = ["" if h == h else "empty prediction" for h in hd95]
    pd.DataFrame(columns).to_csv(path / "patients.tsv", sep="\t", index=False, na_rep="NaN")


def _summary(path, method, epochs, seconds):
    (path / "search").mkdir(parents=True, exist_ok=True)
    (path / "search" / "search_summary.json").write_text(json.dumps(
        {"method": method, "epochs_run": epochs, "search_seconds": seconds, "genotype": {}}))


@pytest.fixture()
def results(tmp_path):
    root = tmp_path / "results"
    ds = root / "syn"
    bb, sk = ds / "backbones", ds / "skips"
    # --- paper preset: two backbones; reference Dice 0.5 for every patient
    _tsv(bb / "plain" / "paper" / "seed0", [0.5] * 4, hd95=[2.0, 4.0, 6.0, 8.0])
    _tsv(bb / "lean" / "paper" / "seed0", [0.5] * 4, hd95=[1.0, 1.0, 1.0, 1.0])
    # IAC: plain deltas .1 .2 .3 .4 (mean .25, exact Wilcoxon p = 2/16);
    #      lean deltas -.1 .2 .3 .4 (mean .20, W- = 1 -> p = 2 * 2/16 = .25)
    _tsv(sk / "plain" / "paper" / "iac" / "seed0", [0.6, 0.7, 0.8, 0.9])
    _tsv(sk / "lean" / "paper" / "iac" / "seed0", [0.4, 0.7, 0.8, 0.9])
    # attention only for plain: deltas -.1 -.1 -.1 -.1
    _tsv(sk / "plain" / "paper" / "attention" / "seed0", [0.4] * 4)
    # nested / resattention / iac_lth (paper): nothing at all
    _summary(sk / "plain" / "paper" / "iac" / "seed0", "iac", 200, 1200.0)
    _summary(sk / "lean" / "paper" / "iac" / "seed0", "iac", 200, 2400.0)
    _summary(sk / "plain" / "paper" / "iac_lth" / "seed0", "iac_lth", 50, 300.0)
    # iac_lth of plain has a summary but no patients.tsv yet (search done, cell not evaluated)
    # --- nnunet_noaug: plain with two seeds
    _tsv(bb / "plain" / "nnunet_noaug" / "seed0", [0.5] * 4)
    _tsv(bb / "plain" / "nnunet_noaug" / "seed1", [0.6] * 4)
    _tsv(sk / "plain" / "nnunet_noaug" / "iac" / "seed0", [0.6, 0.7, 0.8, 0.9])      # +.1 .2 .3 .4
    _tsv(sk / "plain" / "nnunet_noaug" / "iac" / "seed1", [0.6, 0.6, 0.6, 0.7])      # +0 0 0 .1
    _tsv(sk / "plain" / "nnunet_noaug" / "iac_lth" / "seed0", [0.55, 0.55, 0.55, 0.55])
    # --- Table 5: xtiny with two seeds; per-patient means over seeds: dice .7, .8; hd95 3, 6
    _tsv(bb / "xtiny" / "paper" / "seed0", [0.6, 0.8], hd95=[2.0, float("nan")])
    _tsv(bb / "xtiny" / "paper" / "seed1", [0.8, 0.8], hd95=[4.0, 6.0])
    (bb / "xtiny" / "paper" / "seed0" / "done.json").write_text(json.dumps({"params": 1234, "gflops": 0.5}))
    return root


def _build(results, tmp_path):
    out = tmp_path / "tables"
    paths = build_tables(results, out, n_resamples=2000)
    return out, paths


def _csv(out, name):
    return pd.read_csv(out / f"{name}.csv", dtype={"dataset": str})


def test_all_files_written(results, tmp_path):
    out, paths = _build(results, tmp_path)
    expected = {f"table{i}.{ext}" for i in range(1, 6) for ext in ("csv", "md", "tex")}
    assert {p.name for p in paths} == expected
    assert all(p.is_file() and p.parent == out for p in paths)


def test_table1_values_and_missing_cells(results, tmp_path):
    out, _ = _build(results, tmp_path)
    table = _csv(out, "table1").set_index("method")
    assert list(table.index) == ["attention", "nested", "resattention", "iac", "iac_lth"]
    iac = table.loc["iac"]
    assert iac["delta_dice_mean"] == pytest.approx((0.25 + 0.20) / 2)
    # backbone means .25 and .20: resampled means .20/.225/.25 with prob 1/4, 1/2, 1/4
    assert (iac["ci_low"], iac["ci_high"]) == pytest.approx((0.20, 0.25))
    p1, p2 = 2 / 16, 4 / 16
    assert iac["p_fisher"] == pytest.approx(p1 * p2 * (1 - math.log(p1 * p2)), abs=1e-12)
    assert iac["n_backbones"] == 2
    attention = table.loc["attention"]
    assert attention["delta_dice_mean"] == pytest.approx(-0.1)
    assert attention["n_backbones"] == 1
    assert "missing: " + str(results / "syn/skips/lean/paper/attention/seed*/patients.tsv") in attention["notes"]
    for method in ("nested", "resattention", "iac_lth"):
        row = table.loc[method]
        for column in ("delta_dice_mean", "ci_low", "ci_high", "p_fisher", "n_backbones"):
            assert pd.isna(row[column]), (method, column)
        assert "missing: " in row["notes"]
    md = (out / "table1.md").read_text()
    assert "+0.2250 [+0.2000, +0.2500]" in md and "-0.1000" in md
    nested_line = next(line for line in md.splitlines() if line.startswith("| syn | Nested"))
    assert MISSING in nested_line and not any(ch.isdigit() for ch in nested_line.split("|")[3])
    assert "missing: " in md
    tex = (out / "table1.tex").read_text()
    assert "+0.2250 [+0.2000, +0.2500]" in tex and MISSING in tex and r"\toprule" in tex
    assert "syn/skips/lean/paper/attention/seed*/patients.tsv".replace("_", r"\_") in tex


def test_table2_seed_averaging_and_pairing(results, tmp_path):
    out, _ = _build(results, tmp_path)
    row = _csv(out, "table2").iloc[0]
    assert row["dataset"] == "syn" and row["backbone"] == "plain"
    # per-patient deltas averaged over seeds 0 and 1: .05 .10 .15 .25 -> mean .1375, exact p 2/16
    assert row["ref_iac_mean"] == pytest.approx(0.1375)
    assert row["ref_iac_p"] == pytest.approx(0.125, abs=1e-12)
    assert row["ref_iac_n"] == 4
    assert 0.05 <= row["ref_iac_ci_low"] < 0.1375 < row["ref_iac_ci_high"] <= 0.25
    # IAC-LTH exists for seed 0 only: Ref -> IAC-LTH = +.05 for all; IAC -> IAC-LTH = -.05 -.15 -.25 -.35
    assert row["ref_iac_lth_mean"] == pytest.approx(0.05)
    # four equal positive deltas (all tied ranks): exact permutation p = 2 * 1/16
    assert row["ref_iac_lth_p"] == pytest.approx(0.125, abs=1e-12)
    assert row["iac_iac_lth_mean"] == pytest.approx(-0.2)
    assert row["iac_iac_lth_p"] == pytest.approx(0.125, abs=1e-12)
    assert "missing: " + str(results / "syn/skips/plain/nnunet_noaug/iac_lth/seed1/patients.tsv") in row["notes"]
    assert "+0.1375" in (out / "table2.md").read_text()


def test_table3_without_inputs_is_all_missing(results, tmp_path):
    out, _ = _build(results, tmp_path)
    table = _csv(out, "table3")
    assert len(table) == 1 and table.iloc[0]["backbone"] == "plain"
    numbers = [c for c in table.columns if c.endswith(("_mean", "_ci_low", "_ci_high", "_p", "_n"))]
    assert table[numbers].isna().all().all()
    assert "missing: " + str(results / "syn/backbones/plain/nnunet/seed*/patients.tsv") in table.iloc[0]["notes"]
    md_row = next(line for line in (out / "table3.md").read_text().splitlines() if line.startswith("| syn"))
    assert md_row.count(MISSING) == 6


def test_table4_search_cost(results, tmp_path):
    out, _ = _build(results, tmp_path)
    row = _csv(out, "table4").set_index("preset").loc["paper"]
    # only plain has both searches: every column uses that pair (lean's IAC run is unpaired)
    assert row["iac_minutes"] == pytest.approx(20)
    assert row["iac_epochs"] == pytest.approx(200)
    assert row["iac_lth_epochs"] == pytest.approx(50)
    assert row["iac_lth_minutes"] == pytest.approx(5)
    assert row["speedup"] == pytest.approx(1200 / 300)
    assert row["n_runs"] == 1 and bool(row["paired"])
    assert "missing: " + str(results / "syn/skips/lean/paper/iac_lth/seed0/search/search_summary.json") in row["notes"]
    md = (out / "table4.md").read_text()
    assert "4.00x" in md and "20.0" in md
    # nnunet_noaug has IAC / IAC-LTH runs but no search summaries: marked, not filled in
    noaug = _csv(out, "table4").set_index("preset").loc["nnunet_noaug"]
    assert noaug[["iac_minutes", "iac_lth_epochs", "speedup"]].isna().all()
    assert "missing: " + str(results / "syn/skips/plain/nnunet_noaug/iac/seed1/search/search_summary.json") in noaug["notes"]


def test_table5_models(results, tmp_path):
    out, _ = _build(results, tmp_path)
    table = _csv(out, "table5")
    paper = table[table["preset"] == "paper"].set_index("backbone")
    assert list(paper.index[:3]) == ["plain", "xtiny", "lean"]
    xtiny = paper.loc["xtiny"]
    assert xtiny["model"] == "XTinyU-Net"
    assert xtiny["dice_mean"] == pytest.approx(0.75)
    assert xtiny["dice_sd"] == pytest.approx(math.sqrt(2 * 0.05 ** 2))
    assert xtiny["hd95_mean"] == pytest.approx((3 + 6) / 2)
    assert xtiny["n_seeds"] == 2 and xtiny["n_patients"] == 2
    assert xtiny["params"] == 1234 and xtiny["gflops"] == pytest.approx(0.5)   # from done.json
    assert "HD95 missing for 1 of 4" in xtiny["notes"]
    plain = paper.loc["plain"]
    assert plain["hd95_mean"] == pytest.approx(5.0) and plain["dice_mean"] == pytest.approx(0.5)
    assert pd.isna(plain["params"]) and pd.isna(plain["gflops"])
    assert "missing: " + str(results / "syn/backbones/plain/paper/seed0/model.json") in plain["notes"]
    noaug = table[table["preset"] == "nnunet_noaug"].set_index("backbone")
    assert pd.isna(noaug.loc["xtiny"]["dice_mean"]) and pd.isna(noaug.loc["lean"]["params"])
    md = (out / "table5.md").read_text()
    assert "0.7500 ± 0.0707" in md and "1,234" in md and "4.50" in md
    assert r"0.7500 $\pm$ 0.0707" in (out / "table5.tex").read_text()


def test_table5_counts_parameters_from_model_json(results, tmp_path):
    pytest.importorskip("unetscout.models.describe")
    from unetscout.models.spec import ModelSpec

    # METHODS §2 reference: 7 stages (256 px), 3 input channels, 2 classes, cap 8 -> 20,388
    ModelSpec("plain", in_channels=3, num_classes=2, image_size=256, cap=8).save(
        results / "syn/backbones/plain/paper/seed0/model.json")
    out, _ = _build(results, tmp_path)
    table = _csv(out, "table5")
    plain = table[(table["preset"] == "paper") & (table["backbone"] == "plain")].iloc[0]
    assert plain["params"] == 20_388 and plain["cap"] == 8 and plain["gflops"] > 0


def test_patient_mismatch_in_tree_is_an_error(results, tmp_path):
    bad = results / "syn/skips/plain/paper/nested/seed0"
    bad.mkdir(parents=True)
    pd.DataFrame({"patient": ["p1", "p2", "p3", "x9"], "dice": [0.5] * 4}).to_csv(
        bad / "patients.tsv", sep="\t", index=False)
    with pytest.raises(UnetscoutError, match=r"nested/seed0/patients.tsv: missing patients p4"):
        build_tables(results, tmp_path / "tables", n_resamples=100)
    assert not (tmp_path / "tables").exists()        # nothing written on a bad input


def test_bad_search_summary_names_file(results, tmp_path):
    path = results / "syn/skips/lean/paper/iac/seed0/search/search_summary.json"
    path.write_text('{"method": "iac", "epochs_run": "many", "search_seconds": 3}')
    with pytest.raises(UnetscoutError, match=r"search_summary.json: epochs_run must be a non-negative number"):
        build_tables(results, tmp_path / "tables", n_resamples=100)


def test_tables_cli_and_empty_results(results, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_tables_parser(parser.add_subparsers())
    args = parser.parse_args(["tables", str(results), "--out", str(tmp_path / "t"), "--resamples", "500"])
    args.func(args)
    assert "table5.tex" in capsys.readouterr().out
    with pytest.raises(UnetscoutError, match="results folder not found"):
        build_tables(tmp_path / "absent", tmp_path / "t2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnetscoutError, match="no dataset results found"):
        build_tables(tmp_path / "empty", tmp_path / "t2")


def test_across_backbone_row_and_other_backbones(results, tmp_path):
    bb, sk = results / "syn/backbones", results / "syn/skips"
    for backbone, iac in (("plain", [0.6, 0.7, 0.8, 0.9]), ("resenc", [0.4, 0.7, 0.8, 0.9])):
        _tsv(bb / backbone / "nnunet" / "seed0", [0.5] * 4)
        _tsv(sk / backbone / "nnunet" / "iac" / "seed0", iac)
    out, _ = _build(results, tmp_path)
    table = _csv(out, "table3").set_index("backbone")
    assert list(table.index) == ["plain", "resenc", "all"]
    assert table.loc["plain", "ref_iac_mean"] == pytest.approx(0.25)
    assert table.loc["resenc", "ref_iac_p"] == pytest.approx(0.25, abs=1e-12)
    everything = table.loc["all"]
    assert everything["unit"] == "backbone" and everything["ref_iac_n"] == 2
    assert everything["ref_iac_mean"] == pytest.approx(0.225)
    p1, p2 = 2 / 16, 4 / 16
    assert everything["ref_iac_p"] == pytest.approx(p1 * p2 * (1 - math.log(p1 * p2)), abs=1e-12)
    assert pd.isna(everything["ref_iac_lth_mean"]) and pd.isna(everything["iac_iac_lth_p"])
    models = _csv(out, "table5")
    nnunet = models[models["preset"] == "nnunet"].set_index("backbone")
    assert list(nnunet.index) == ["plain", "xtiny", "lean", "resenc"]
    assert nnunet.loc["resenc", "model"] == "ResEnc U-Net"
    assert nnunet.loc["resenc", "dice_mean"] == pytest.approx(0.5)
