"""Tables 1-5 on a fabricated results tree whose expected values are computed by hand."""

from __future__ import annotations

import argparse
import json
import math
import re

import pandas as pd
import pytest
import scipy.stats

from unetscout.errors import UnetscoutError
from unetscout.stats.cli_args import add_tables_parser
from unetscout.stats.tables import FLOOR_SENTENCE, build_tables

PATIENTS = ["p1", "p2", "p3", "p4"]
MISSING = "—"


def _tsv(path, dice, hd95=None, notes=None):
    """A patients.tsv; `notes` default to "" for a value and "both empty" for NaN (evaluate's
    rule: only both sides empty is NaN; one side empty scores the image diagonal, with a note)."""
    path.mkdir(parents=True, exist_ok=True)
    columns = {"patient": PATIENTS[: len(dice)], "dice": dice, "dice_lesion": dice}
    if hd95 is not None:
        columns["hd95_lesion"] = hd95
        columns["hd95_lesion_note"] = notes or ["" if h == h else "both empty" for h in hd95]
    pd.DataFrame(columns).to_csv(path / "patients.tsv", sep="\t", index=False, na_rep="NaN")


def _summary(path, method, epochs, seconds, **fields):
    """A search_summary.json; without `fields` it is one written before the fidelity rework."""
    (path / "search").mkdir(parents=True, exist_ok=True)
    (path / "search" / "search_summary.json").write_text(json.dumps(
        {"method": method, "epochs_run": epochs, "search_seconds": seconds, "genotype": {}, **fields}))


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
    # --- Table 5: xtiny with two seeds; per-patient means over seeds: dice .7 .8 .7 .9; hd95 3 28 1 1
    # (seed 0 predicts nothing for p2: the penalty, an image diagonal of 50 mm, counts: (50 + 6) / 2)
    _tsv(bb / "xtiny" / "paper" / "seed0", [0.6, 0.8, 0.7, 0.9], hd95=[2.0, 50.0, 1.0, 1.0],
         notes=["", "empty prediction", "", ""])
    _tsv(bb / "xtiny" / "paper" / "seed1", [0.8, 0.8, 0.7, 0.9], hd95=[4.0, 6.0, 1.0, 1.0])
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
    names = [f"table{i}" for i in range(1, 7)] + ["width_picks"]
    expected = {f"{name}.{ext}" for name in names for ext in ("csv", "md", "tex")}
    assert {p.name for p in paths} == expected
    assert all(p.is_file() and p.parent == out for p in paths)


def test_table1_values_and_missing_cells(results, tmp_path):
    out, _ = _build(results, tmp_path)
    table = _csv(out, "table1").set_index("method")
    assert list(table.index) == ["attention", "nested", "resattention", "random", "iac", "iac_lth"]
    iac = table.loc["iac"]
    assert iac["delta_dice_mean"] == pytest.approx((0.25 + 0.20) / 2)
    # backbone means .25 and .20: resampled means .20/.225/.25 with prob 1/4, 1/2, 1/4
    assert (iac["ci_low"], iac["ci_high"]) == pytest.approx((0.20, 0.25))
    p1, p2 = 2 / 16, 4 / 16
    assert iac["p_fisher"] == pytest.approx(p1 * p2 * (1 - math.log(p1 * p2)), abs=1e-12)
    assert iac["n_backbones"] == 2
    # the method's Dice (plain .75, lean .70), the pooled patient deltas' Wilcoxon p (scipy on the
    # eight deltas) and the two-stage CI, which stays inside the deltas' range
    assert iac["dice_mean"] == pytest.approx(0.725)
    pooled = [0.1, 0.2, 0.3, 0.4, -0.1, 0.2, 0.3, 0.4]
    assert iac["p_wilcoxon"] == pytest.approx(scipy.stats.wilcoxon(pooled).pvalue, abs=1e-12)
    assert iac["n_pairs"] == 8
    assert -0.1 <= iac["ci_low_pb"] < iac["delta_dice_mean"] < iac["ci_high_pb"] <= 0.4
    # patients add spread to the backbone-only interval
    assert iac["ci_low_pb"] < iac["ci_low"] and iac["ci_high_pb"] > iac["ci_high"]
    assert "all" not in table.index.map(lambda m: table.loc[m, "dataset"]).tolist()  # one dataset: no all rows
    attention = table.loc["attention"]
    assert attention["delta_dice_mean"] == pytest.approx(-0.1)
    assert attention["n_backbones"] == 1
    assert "missing: " + str(results / "syn/skips/lean/paper/attention/seed*/patients.tsv") in attention["notes"]
    for method in ("nested", "resattention", "random", "iac_lth"):
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
    assert md_row.count(MISSING) == 10     # five comparisons, each a Delta and a p cell


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
    assert list(paper.index[3:6]) == ["unext", "cmunext_s", "tinyunet"]   # the peers, missing here
    assert paper.loc["unext", "model"] == "UNeXt" and pd.isna(paper.loc["unext", "dice_mean"])
    xtiny = paper.loc["xtiny"]
    assert xtiny["model"] == "XTinyU-Net"
    assert xtiny["dice_mean"] == pytest.approx(0.775)
    deviations = [d - 0.775 for d in (0.7, 0.8, 0.7, 0.9)]
    assert xtiny["dice_sd"] == pytest.approx(math.sqrt(sum(d * d for d in deviations) / 3))
    # Seed 0's empty prediction for p2 counts with its penalty (50): p2 = (50 + 6) / 2 = 28. Under
    # the old rule (NaN, dropped) p2 was 6 and the mean 2.75.
    assert xtiny["hd95_mean"] == pytest.approx((3 + 28 + 1 + 1) / 4) and xtiny["hd95_unit"] == "mm"
    assert xtiny["hd95_penalised"] == 1 and paper.loc["plain", "hd95_penalised"] == 0
    assert xtiny["n_seeds"] == 2 and xtiny["n_patients"] == 4
    assert xtiny["params"] == 1234 and xtiny["gflops"] == pytest.approx(0.5)   # from done.json
    assert ("HD95 penalised with the image diagonal for 1 of 8 patient-label values (1 empty prediction, "
            "0 empty reference" in xtiny["notes"])
    assert "HD95 missing" not in xtiny["notes"]
    # paired with nnU-Net (0.5 everywhere) on the one seed both have: deltas .1 .3 .2 .4,
    # all positive: exact two-sided Wilcoxon p = 2 / 2^4
    assert xtiny["delta_dice_mean"] == pytest.approx(0.25) and xtiny["n_pairs"] == 4
    assert xtiny["p_wilcoxon"] == pytest.approx(2 / 16)
    assert 0.1 <= xtiny["ci_low"] < 0.25 < xtiny["ci_high"] <= 0.4
    assert "missing: " + str(results / "syn/backbones/plain/paper/seed1/patients.tsv") in xtiny["notes"]
    assert paper.loc["lean", "delta_dice_mean"] == pytest.approx(0.0)
    assert pd.isna(paper.loc["plain", "delta_dice_mean"])  # the reference itself
    plain = paper.loc["plain"]
    assert plain["hd95_mean"] == pytest.approx(5.0) and plain["dice_mean"] == pytest.approx(0.5)
    assert pd.isna(plain["params"]) and pd.isna(plain["gflops"])
    assert "missing: " + str(results / "syn/backbones/plain/paper/seed0/model.json") in plain["notes"]
    noaug = table[table["preset"] == "nnunet_noaug"].set_index("backbone")
    assert pd.isna(noaug.loc["xtiny"]["dice_mean"]) and pd.isna(noaug.loc["lean"]["params"])
    md = (out / "table5.md").read_text()
    assert "0.7750 ± 0.0957" in md and "1,234" in md and "8.25 mm" in md and "+0.2500 [" in md
    assert "scores the diagonal of the case's image extent and is counted" in md
    assert r"0.7750 $\pm$ 0.0957" in (out / "table5.tex").read_text()


def test_table5_hd95_counts_penalties_skips_both_empty_and_flags_stale_files():
    from unetscout.stats.tables.model_sizes import _hd95_notes, _patient_scores

    # Two labels per patient. p1: lesion 2, texture an empty reference (penalty 40); p2: lesion an
    # empty prediction (penalty 40), texture both empty (NaN, skipped); p3: lesion NaN with an
    # "empty prediction" note, written before the penalty rule (stale, left out), texture 4.
    df = pd.DataFrame({"patient": ["p1", "p2", "p3"], "dice": [0.5, 0.0, 0.5],
                       "hd95_lesion": [2.0, 40.0, float("nan")], "hd95_texture": [40.0, float("nan"), 4.0],
                       "hd95_lesion_note": ["", "empty prediction", "empty prediction"],
                       "hd95_texture_note": ["empty reference", "both empty", ""]})
    scores = _patient_scores(df)
    assert scores["hd95"].tolist() == pytest.approx([21.0, 40.0, 4.0])
    assert (scores.attrs["hd95_penalised"], scores.attrs["hd95_empty_prediction"],
            scores.attrs["hd95_empty_reference"]) == (2, 1, 1)
    assert (scores.attrs["hd95_missing"], scores.attrs["hd95_stale"], scores.attrs["hd95_total"]) == (2, 1, 6)
    notes = _hd95_notes([scores, scores])   # two seeds: counts add up
    assert notes[0].startswith("HD95 penalised with the image diagonal for 4 of 12 patient-label values "
                               "(2 empty prediction, 2 empty reference")
    assert notes[1].startswith("HD95 missing for 4 of 12")
    assert notes[2].startswith("HD95 of 2 patient-label values with one side empty is NaN")


def test_table5_counts_parameters_from_model_json(results, tmp_path):
    pytest.importorskip("unetscout.models.describe")
    from unetscout.models.spec import ModelSpec

    # docs/methods.md#plain-and-capped-u-net reference: 7 stages (256 px), 3 input channels, 2 classes, cap 8 -> 20,388
    ModelSpec("plain", in_channels=3, num_classes=2, image_size=256, cap=8).save(
        results / "syn/backbones/plain/paper/seed0/model.json")
    out, _ = _build(results, tmp_path)
    table = _csv(out, "table5")
    plain = table[(table["preset"] == "paper") & (table["backbone"] == "plain")].iloc[0]
    assert plain["params"] == 20_388 and plain["cap"] == 8 and plain["gflops"] > 0


def test_table5_parameter_ratios_and_pixel_distances(results, tmp_path):
    from unetscout.models.spec import ModelSpec

    bb = results / "syn/backbones"
    ModelSpec("plain", in_channels=3, num_classes=2, image_size=256, cap=8).save(bb / "plain/paper/seed0/model.json")
    _tsv(bb / "unext" / "paper" / "seed0", [0.4] * 4)
    ModelSpec("unext", in_channels=3, num_classes=2, image_size=256).save(bb / "unext/paper/seed0/model.json")
    (results / "syn/slices").mkdir(parents=True)
    (results / "syn/slices/slices.json").write_text(json.dumps({"spacing_unit": "px"}))
    out, _ = _build(results, tmp_path)
    table = _csv(out, "table5")
    paper = table[table["preset"] == "paper"].set_index("backbone")
    xtiny, unext = paper.loc["xtiny"], paper.loc["unext"]
    # 20,388 (plain, cap 8) and 1,471,938 (UNeXt, 3 -> 2) parameters against xtiny's 1,234
    assert xtiny["fewer_params_than_plain"] == pytest.approx(20_388 / 1234)
    assert xtiny["fewer_params_than_unext"] == pytest.approx(1_471_938 / 1234)
    assert pd.isna(xtiny["fewer_params_than_tinyunet"])            # no TinyU-Net run
    assert unext["fewer_params_than_plain"] == pytest.approx(20_388 / 1_471_938)
    assert pd.isna(unext["fewer_params_than_unext"])               # not against itself
    assert unext["delta_dice_mean"] == pytest.approx(-0.1)
    assert (paper["hd95_unit"] == "px").all()
    md = (out / "table5.md").read_text()
    assert "8.25 px" in md and f"{1_471_938 / 1234:.3g}×" in md
    assert f"{20_388 / 1234:.3g}x-{20_388 / 1234:.3g}x fewer parameters than nnU-Net" in md
    assert f"{1_471_938 / 1234:.3g}x-{1_471_938 / 1234:.3g}x fewer than the lightweight peers" in md


def _selection(path, picks):
    """selection.json with per-seed picks (seed -> cap); the final pick is the majority's."""
    path.mkdir(parents=True, exist_ok=True)
    caps = list(picks.values())
    final = max(set(caps), key=lambda c: (caps.count(c), c))
    path.joinpath("selection.json").write_text(json.dumps({
        "selected_cap": final, "selected_params": 100 * final, "agreement": caps.count(final) / len(caps),
        "per_seed": [{"seed": s, "selected_cap": c} for s, c in picks.items()]}))


def test_width_picks_agreement_sweep_check_and_stability(results, tmp_path):
    _selection(results / "syn/width", {369: 16, 370: 16, 371: 8})
    (results / "syn/width/sweep.json").write_text(json.dumps({
        "spearman_rho": 0.6, "spearman_p": 0.07, "next_larger_cap": 32, "delta_next_larger": 0.03,
        "pick_falsified": True}))
    _tsv(results / "two/backbones/plain/paper/seed0", [0.5] * 4)
    _selection(results / "two/width", {369: 8, 370: 8, 371: 8})
    out, _ = _build(results, tmp_path)
    table = _csv(out, "width_picks").set_index("dataset")
    syn, two, everything = table.loc["syn"], table.loc["two"], table.loc["all"]
    assert syn["selected_cap"] == 16 and syn["agreement"] == pytest.approx(2 / 3) and syn["n_seeds"] == 3
    assert syn["seed_picks"] == "369:16 370:16 371:8"
    assert syn["spearman_rho"] == pytest.approx(0.6) and bool(syn["pick_falsified"]) is True
    assert two["agreement"] == 1.0 and pd.isna(two["spearman_rho"])
    assert "no width sweep" in two["notes"]
    # over datasets: caps 16 and 8 once each -> the tie goes to the larger, stability 1/2
    assert everything["selected_cap"] == 16 and everything["stability"] == pytest.approx(0.5)
    assert everything["dataset_picks"] == "16:1 8:1" and everything["n_datasets"] == 2
    assert everything["agreement"] == pytest.approx((2 / 3 + 1) / 2) and everything["n_falsified"] == 1
    md = (out / "width_picks.md").read_text()
    assert "32: +0.0300" in md and "1 of 2" in md


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
    assert list(nnunet.index) == ["plain", "xtiny", "lean", "unext", "cmunext_s", "tinyunet", "resenc"]
    assert nnunet.loc["resenc", "model"] == "ResEnc U-Net"
    assert nnunet.loc["resenc", "dice_mean"] == pytest.approx(0.5)


def _csv_text_columns(out, name):
    """The CSV with every cell as its literal text (floor_bound must read true / false / empty)."""
    return pd.read_csv(out / f"{name}.csv", dtype=str, keep_default_na=False)


def _fisher2(p1, p2):
    # Fisher's combination of two p-values: chi2(4) survival of -2 ln(p1 p2) in closed form
    return p1 * p2 * (1 - math.log(p1 * p2))


def test_table1_random_rows(results, tmp_path):
    sk = results / "syn/skips"
    # Ref is 0.5 everywhere. plain: deltas +.05 -.1 +.2 +.3 (mean .1125; ranks 1..4, W- = 2:
    # the sign patterns with W- <= 2 are {}, {1}, {2}, so p = 2 * 3/16 = .375);
    # lean: -.2 four times (mean -.2; all tied: exact permutation p = 2 * 1/16)
    _tsv(sk / "plain" / "paper" / "random" / "seed0", [0.55, 0.4, 0.7, 0.8])
    _tsv(sk / "lean" / "paper" / "random" / "seed0", [0.3] * 4)
    for backbone in ("plain", "lean"):
        _summary(sk / backbone / "paper" / "random" / "seed0", "random", 0, 0.0, forward_backward_passes=0,
                 floor_bound=None)
    out, _ = _build(results, tmp_path)
    table = _csv(out, "table1").set_index("method")
    assert list(table.index) == ["attention", "nested", "resattention", "random", "iac", "iac_lth"]
    random = table.loc["random"]
    assert random["delta_dice_mean"] == pytest.approx((0.1125 - 0.2) / 2)
    # two backbone means: every resample's mean is -.2, -.04375 or .1125
    assert (random["ci_low"], random["ci_high"]) == pytest.approx((-0.2, 0.1125))
    assert random["p_fisher"] == pytest.approx(_fisher2(6 / 16, 2 / 16), abs=1e-12)
    assert random["n_backbones"] == 2 and random["backbones"] == "lean plain"
    assert pd.isna(random["floor_bound"])             # no IAC-LTH result in this row
    assert table.loc["iac", "delta_dice_mean"] == pytest.approx(0.225)     # unchanged by the new method
    random_line = next(line for line in (out / "table1.md").read_text().splitlines()
                       if line.startswith("| syn | Random cell"))
    # the method's own Dice: plain's patients average .6125, lean's .3
    assert random["dice_mean"] == pytest.approx((0.6125 + 0.3) / 2)
    assert random_line.startswith("| syn | Random cell | 0.4563 | -0.0437 [-0.2000, +0.1125] |")
    # the random baseline has no search cost: Table 4 still pairs plain's IAC and IAC-LTH only
    cost = _csv(out, "table4").set_index("preset").loc["paper"]
    assert cost["n_runs"] == 1 and cost["speedup"] == pytest.approx(4.0)
    assert "/random/" not in cost["notes"]


def test_table3_random_comparisons_and_floor_bound_marks(results, tmp_path):
    bb, sk = results / "syn/backbones", results / "syn/skips"
    for backbone in ("plain", "resenc"):
        _tsv(bb / backbone / "nnunet" / "seed0", [0.5] * 4)
    # plain: Ref -> Random +.05 -.1 +.2 +.3 (mean .1125, p .375, see Table 1's test);
    #        Random -> IAC-LTH +.1 +.2 +.3 +.15 (mean .1875, all positive, distinct: p 2/16)
    _tsv(sk / "plain" / "nnunet" / "random" / "seed0", [0.55, 0.4, 0.7, 0.8])
    _tsv(sk / "plain" / "nnunet" / "iac_lth" / "seed0", [0.65, 0.6, 1.0, 0.95])
    _summary(sk / "plain" / "nnunet" / "iac_lth" / "seed0", "iac_lth", 12, 60.0, floor_bound=True)
    # resenc: Ref -> Random -.2 x4 (p 2/16); Random -> IAC-LTH +.1 +.4 +.5 +.6 (mean .4, p 2/16)
    _tsv(sk / "resenc" / "nnunet" / "random" / "seed0", [0.3] * 4)
    _tsv(sk / "resenc" / "nnunet" / "iac_lth" / "seed0", [0.4, 0.7, 0.8, 0.9])
    _summary(sk / "resenc" / "nnunet" / "iac_lth" / "seed0", "iac_lth", 30, 90.0, floor_bound=False)
    out, _ = _build(results, tmp_path)
    table = _csv(out, "table3").set_index("backbone")
    assert list(table.index) == ["plain", "resenc", "all"]
    plain, resenc, everything = table.loc["plain"], table.loc["resenc"], table.loc["all"]
    assert plain["ref_random_mean"] == pytest.approx(0.1125)
    assert plain["ref_random_p"] == pytest.approx(6 / 16, abs=1e-12)
    assert plain["ref_random_n"] == 4
    assert plain["random_iac_lth_mean"] == pytest.approx(0.1875)
    assert plain["random_iac_lth_p"] == pytest.approx(2 / 16, abs=1e-12)
    assert plain["ref_iac_lth_mean"] == pytest.approx(0.3)                 # +.15 +.1 +.5 +.45
    assert resenc["ref_random_mean"] == pytest.approx(-0.2)
    assert resenc["random_iac_lth_mean"] == pytest.approx(0.4)
    assert resenc["random_iac_lth_p"] == pytest.approx(2 / 16, abs=1e-12)
    assert everything["ref_random_mean"] == pytest.approx((0.1125 - 0.2) / 2)
    assert everything["random_iac_lth_mean"] == pytest.approx((0.1875 + 0.4) / 2)
    assert everything["random_iac_lth_p"] == pytest.approx(_fisher2(2 / 16, 2 / 16), abs=1e-12)
    assert everything["random_iac_lth_n"] == 2
    # floor-bound: plain's IAC-LTH search is, resenc's is not, so 'all' is
    text = _csv_text_columns(out, "table3").set_index("backbone")["floor_bound"]
    assert text.to_dict() == {"plain": "true", "resenc": "false", "all": "true"}
    assert "floor-bound" in plain["notes"] and str(sk / "plain/nnunet/iac_lth/seed0/search") in plain["notes"]
    assert "floor-bound" not in resenc["notes"]
    assert "floor-bound for backbone(s): plain" in everything["notes"]
    md = (out / "table3.md").read_text()
    assert "| syn | plain† |" in md and "| syn | resenc |" in md and "| syn | all† |" in md
    assert "Random → IAC-LTH" in md and "† IAC-LTH search floor-bound: the stability test never" in md
    tex = (out / "table3.tex").read_text()
    assert r"syn & plain\dag{} &" in tex and r"syn & resenc &" in tex
    assert r"\dag{} IAC-LTH search floor-bound" in tex and "†" not in tex
    # Table 2 shows no dagger, so its description does not explain one
    assert "floor-bound:" not in (out / "table2.md").read_text()


def test_floor_bound_marks_table1_and_table4(results, tmp_path):
    plain_lth = results / "syn/skips/plain/paper/iac_lth/seed0"
    _summary(plain_lth, "iac_lth", 50, 300.0, floor_bound=True, stop_epoch=50)
    out, _ = _build(results, tmp_path)
    table1 = _csv_text_columns(out, "table1").set_index("method")
    assert table1.loc["iac_lth", "floor_bound"] == "true"
    assert (table1.drop(index="iac_lth")["floor_bound"] == "").all()
    assert str(plain_lth / "search/search_summary.json") in table1.loc["iac_lth", "notes"]
    md1 = (out / "table1.md").read_text()
    assert "| syn | IAC-LTH† |" in md1 and "| syn | IAC |" in md1 and FLOOR_SENTENCE in md1
    assert r"syn & IAC-LTH\dag{} &" in (out / "table1.tex").read_text()
    table4 = _csv_text_columns(out, "table4").set_index("preset")
    assert table4.loc["paper", "floor_bound"] == "true"
    assert (table4.loc["paper", "floor_bound_runs"], table4.loc["paper", "iac_lth_runs"]) == ("1", "1")
    assert table4.loc["nnunet_noaug", "floor_bound"] == ""         # no search summaries there
    md4 = (out / "table4.md").read_text()
    assert "| syn† | paper |" in md4 and "| syn | nnunet_noaug |" in md4 and " 1/1 |" in md4
    # Table 2's IAC-LTH run (nnunet_noaug) has no summary: unknown, said, not marked
    row2 = _csv_text_columns(out, "table2").iloc[0]
    assert row2["floor_bound"] == ""
    assert "floor-bound unknown: missing " + str(
        results / "syn/skips/plain/nnunet_noaug/iac_lth/seed0/search/search_summary.json") in row2["notes"]


def test_table4_per_epoch_columns_and_passes_mismatch(results, tmp_path):
    sk = results / "syn/skips"
    # paper: two paired runs. passes/epoch IAC (1000 + 500) / 2 = 750, IAC-LTH (1000 + 400) / 2 = 700:
    # 50 > 5 % of 750, so noted. s/epoch IAC (6 + 12) / 2 = 9, IAC-LTH (6 + 10) / 2 = 8; stop (50 + 40) / 2
    _summary(sk / "plain/paper/iac/seed0", "iac", 200, 1200.0, passes_per_epoch=1000.0, seconds_per_epoch=6.0,
             stop_epoch=200, floor_bound=None)
    _summary(sk / "plain/paper/iac_lth/seed0", "iac_lth", 50, 300.0, passes_per_epoch=1000.0,
             seconds_per_epoch=6.0, stop_epoch=50, floor_bound=False)
    _summary(sk / "lean/paper/iac/seed0", "iac", 200, 2400.0, passes_per_epoch=500.0, seconds_per_epoch=12.0,
             stop_epoch=200, floor_bound=None)
    _summary(sk / "lean/paper/iac_lth/seed0", "iac_lth", 40, 400.0, passes_per_epoch=400.0,
             seconds_per_epoch=10.0, stop_epoch=40, floor_bound=True)
    # nnunet_noaug: one pair (seed 0), passes/epoch 1000 vs 980: 2 %, not noted
    _summary(sk / "plain/nnunet_noaug/iac/seed0", "iac", 100, 500.0, passes_per_epoch=1000.0,
             seconds_per_epoch=5.0, stop_epoch=100, floor_bound=None)
    _summary(sk / "plain/nnunet_noaug/iac_lth/seed0", "iac_lth", 30, 120.0, passes_per_epoch=980.0,
             seconds_per_epoch=4.0, stop_epoch=30, floor_bound=False)
    out, _ = _build(results, tmp_path)
    table = _csv(out, "table4").set_index("preset")
    paper = table.loc["paper"]
    assert paper["n_runs"] == 2 and bool(paper["paired"])
    assert paper["iac_minutes"] == pytest.approx(1800 / 60) and paper["speedup"] == pytest.approx(1800 / 350)
    assert paper["iac_passes_per_epoch"] == pytest.approx(750)
    assert paper["iac_lth_passes_per_epoch"] == pytest.approx(700)
    assert paper["iac_seconds_per_epoch"] == pytest.approx(9)
    assert paper["iac_lth_seconds_per_epoch"] == pytest.approx(8)
    assert paper["iac_lth_stop_epoch"] == pytest.approx(45)
    assert (paper["floor_bound_runs"], paper["iac_lth_runs"]) == (1, 2)
    assert "passes per epoch differ by more than 5 %: IAC 750.0, IAC-LTH 700.0" in paper["notes"]
    assert "left out of those means" not in paper["notes"]
    noaug = table.loc["nnunet_noaug"]
    assert noaug["iac_passes_per_epoch"] == pytest.approx(1000)
    assert noaug["iac_lth_passes_per_epoch"] == pytest.approx(980)
    assert noaug["iac_lth_seconds_per_epoch"] == pytest.approx(4)
    assert noaug["iac_lth_stop_epoch"] == pytest.approx(30)
    assert (noaug["floor_bound_runs"], noaug["iac_lth_runs"]) == (0, 1)
    assert "differ by more than 5 %" not in noaug["notes"]
    md = (out / "table4.md").read_text()
    paper_line = next(line for line in md.splitlines() if "| paper |" in line)
    assert paper_line.startswith("| syn† | paper |")
    for cell in ("| 750 |", "| 700 |", "| 9.00 |", "| 8.00 |", "| 45.0 |", "| 1/2 |", "| 5.14x |"):
        assert cell in paper_line, cell
    assert "| 0/1 |" in md
    assert "equal sample forward/backward passes per epoch" in md


def test_table4_older_summaries_are_unknown_not_errors(results, tmp_path):
    out, _ = _build(results, tmp_path)
    paper = _csv(out, "table4").set_index("preset").loc["paper"]
    new = ["iac_passes_per_epoch", "iac_lth_passes_per_epoch", "iac_seconds_per_epoch",
           "iac_lth_seconds_per_epoch", "iac_lth_stop_epoch", "floor_bound_runs", "floor_bound"]
    assert paper[new].isna().all() and paper["iac_lth_runs"] == 1
    lth = results / "syn/skips/plain/paper/iac_lth/seed0/search/search_summary.json"
    assert (f"{lth} does not record passes_per_epoch, seconds_per_epoch, stop_epoch, floor_bound "
            "(older search)") in paper["notes"]
    absolute = ["absolute_rule_stop_epoch", "absolute_rule_speedup_estimate", "absolute_rule_floor_bound_runs"]
    assert paper[absolute].isna().all()
    assert f"{lth} does not record the absolute rule's shadow (older search)" in paper["notes"]
    paper_line = next(line for line in (out / "table4.md").read_text().splitlines() if "| paper |" in line)
    assert paper_line.startswith("| syn | paper |") and paper_line.count(MISSING) == 6 + 3


def _lth_summary(path, epochs, seconds, seconds_per_epoch, absolute_stop, absolute_floor_bound, **fields):
    """An IAC-LTH summary with the absolute rule's shadow; `absolute_stop` None = not before the cap (200)."""
    _summary(path, "iac_lth", epochs, seconds, passes_per_epoch=1000.0, seconds_per_epoch=seconds_per_epoch,
             stop_epoch=epochs, floor_bound=False, epoch_cap=200, absolute_rule_stop_epoch=absolute_stop,
             absolute_rule_stopped_because="epoch cap" if absolute_stop is None else "every edge has one op",
             absolute_rule_floor_bound=absolute_floor_bound, **fields)


def test_table4_absolute_rule_columns(results, tmp_path):
    sk = results / "syn/skips"
    iac = dict(passes_per_epoch=1000.0, seconds_per_epoch=6.0, stop_epoch=200, floor_bound=None, epoch_cap=200)
    # paper: two pairs. plain: IAC 1200 s; IAC-LTH 6 s/epoch, the absolute rule would stop at epoch 10
    #   (floor-bound): estimated 6 x 10 = 60 s. lean: IAC 2400 s; IAC-LTH 10 s/epoch, the absolute rule
    #   would not stop before the cap: counted at 200, estimated 10 x 200 = 2000 s.
    #   stop epoch (10 + 200) / 2 = 105; speed-up estimate (1200 + 2400) / 2 / ((60 + 2000) / 2) = 1800 / 1030;
    #   floor-bound under it 1 of 2. The relative rule's own columns: stop (50 + 40) / 2, 1800 / 350.
    _summary(sk / "plain/paper/iac/seed0", "iac", 200, 1200.0, **iac)
    _lth_summary(sk / "plain/paper/iac_lth/seed0", 50, 300.0, 6.0, 10, True)
    _summary(sk / "lean/paper/iac/seed0", "iac", 200, 2400.0, **iac)
    _lth_summary(sk / "lean/paper/iac_lth/seed0", 40, 400.0, 10.0, None, False)
    # nnunet: two pairs, lean's IAC-LTH search predates the shadow: the absolute-rule columns use
    #   plain's alone (stop 12, 600 / (5 x 12) = 10.0, not floor-bound: 0 of the 2 runs shown)
    for backbone, seconds in (("plain", 600.0), ("lean", 900.0)):
        _summary(sk / backbone / "nnunet/iac/seed0", "iac", 200, seconds, **iac)
    _lth_summary(sk / "plain/nnunet/iac_lth/seed0", 30, 150.0, 5.0, 12, False)
    _summary(sk / "lean/nnunet/iac_lth/seed0", "iac_lth", 30, 150.0, passes_per_epoch=1000.0,
             seconds_per_epoch=5.0, stop_epoch=30, floor_bound=False)
    out, _ = _build(results, tmp_path)
    table = _csv(out, "table4").set_index("preset")
    paper = table.loc["paper"]
    assert paper["iac_lth_stop_epoch"] == pytest.approx(45) and paper["speedup"] == pytest.approx(1800 / 350)
    assert paper["absolute_rule_stop_epoch"] == pytest.approx(105)
    assert paper["absolute_rule_speedup_estimate"] == pytest.approx(1800 / 1030)
    assert (paper["absolute_rule_floor_bound_runs"], paper["iac_lth_runs"]) == (1, 2)
    lean = sk / "lean/paper/iac_lth/seed0/search/search_summary.json"
    assert (f"{lean}: the absolute rule would not have stopped this search before the epoch cap; "
            "counted at the cap (200)") in paper["notes"]
    assert "does not record the absolute rule" not in paper["notes"] and "paired runs (the others" not in paper["notes"]
    nnunet = table.loc["nnunet"]
    assert nnunet["absolute_rule_stop_epoch"] == pytest.approx(12)
    assert nnunet["absolute_rule_speedup_estimate"] == pytest.approx(10.0)
    assert (nnunet["absolute_rule_floor_bound_runs"], nnunet["iac_lth_runs"]) == (0, 2)
    old = sk / "lean/nnunet/iac_lth/seed0/search/search_summary.json"
    assert f"{old} does not record the absolute rule's shadow (older search)" in nnunet["notes"]
    assert "Abs. rule speed-up over 1 of 2 paired runs" in nnunet["notes"]
    md = (out / "table4.md").read_text()
    paper_line = next(line for line in md.splitlines() if "| paper |" in line)
    assert "| 45.0 | 0/2 | 105.0 | 1.75x | 1/2 |" in paper_line and "| 5.14x |" in paper_line
    header = next(line for line in md.splitlines() if line.startswith("| Dataset"))
    assert ("| IAC-LTH stop epoch | Floor-bound | Abs. rule stop epoch | Abs. rule speed-up (est.) "
            "| Abs. rule floor-bound |") in header
    assert "estimate at the run's own per-epoch cost" in md and "paper's own absolute rule" in md


@pytest.mark.parametrize("fields, words", [
    ({"floor_bound": "yes"}, "floor_bound must be true, false or null"),
    ({"absolute_rule_floor_bound": 1}, "absolute_rule_floor_bound must be true, false or null"),
    ({"absolute_rule_stop_epoch": -3}, "absolute_rule_stop_epoch must be a non-negative number or null"),
    ({"absolute_rule_stopped_because": "never"}, "absolute_rule_stopped_because must be"),
    ({"absolute_rule_stopped_because": "epoch cap", "absolute_rule_stop_epoch": 20},
     "absolute_rule_stop_epoch is 20 but absolute_rule_stopped_because is 'epoch cap'"),
    ({"absolute_rule_stopped_because": "every edge has one op", "absolute_rule_stop_epoch": None},
     "absolute_rule_stop_epoch is None but absolute_rule_stopped_because is 'every edge has one op'"),
])
def test_bad_floor_bound_names_file(results, tmp_path, fields, words):
    path = results / "syn/skips/plain/paper/iac_lth/seed0/search/search_summary.json"
    path.write_text(json.dumps({"method": "iac_lth", "epochs_run": 5, "search_seconds": 3, **fields}))
    with pytest.raises(UnetscoutError, match=re.escape("search_summary.json: " + words)):
        build_tables(results, tmp_path / "tables", n_resamples=100)


def test_table1_all_rows_combine_the_datasets(results, tmp_path):
    # a second dataset: plain only, IAC deltas +.1 four times (all tied: exact p = 2/16)
    _tsv(results / "syn2/backbones/plain/paper/seed0", [0.5] * 4)
    _tsv(results / "syn2/skips/plain/paper/iac/seed0", [0.6] * 4)
    out, _ = _build(results, tmp_path)
    table = _csv(out, "table1")
    syn2 = table[(table["dataset"] == "syn2") & (table["method"] == "iac")].iloc[0]
    assert syn2["delta_dice_mean"] == pytest.approx(0.1) and syn2["n_backbones"] == 1
    everything = table[(table["dataset"] == "all") & (table["method"] == "iac")].iloc[0]
    # units (syn, plain) .25, (syn, lean) .20, (syn2, plain) .10
    assert everything["delta_dice_mean"] == pytest.approx((0.25 + 0.20 + 0.10) / 3)
    assert everything["n_backbones"] == 3 and everything["n_pairs"] == 12
    p = [2 / 16, 4 / 16, 2 / 16]
    assert everything["p_fisher"] == pytest.approx(scipy.stats.combine_pvalues(p, method="fisher").pvalue, abs=1e-12)
    assert everything["backbones"] == "syn/lean syn/plain syn2/plain"
    assert everything["dice_mean"] == pytest.approx((0.75 + 0.70 + 0.60) / 3)
