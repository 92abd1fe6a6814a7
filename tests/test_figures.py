"""Summary figures from a fabricated results tree: drawn when inputs exist, skipped when not."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from unetscout.cli import main
from unetscout.stats.figures import build_figures, paired_dice_data
from unetscout.stats.tables.results import Results


def _patients(path, dices):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"patient": [f"p{i}" for i in range(len(dices))], "dice": dices}).to_csv(path, sep="\t", index=False)


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results"
    ds = root / "toy"
    (ds / "slices").mkdir(parents=True)
    width = ds / "width"
    width.mkdir()
    caps = [512, 256, 128, 64, 32, 16, 8, 4, 2, 1]
    pd.DataFrame({"seed": 369, "cap": caps, "params": [c * 100 for c in caps], "gflops": 0.1,
                  "score": range(10), "score_norm": [i / 9 for i in range(10)]}).to_csv(
        width / "scores.tsv", sep="\t", index=False)
    (width / "selection.json").write_text(json.dumps({"selected_cap": 16, "knee_scores": {"2": 0.1, "3": 0.3}}))
    _patients(ds / "backbones/plain/paper/seed0/patients.tsv", [0.8, 0.6, 0.7])
    _patients(ds / "skips/plain/paper/iac/seed0/patients.tsv", [0.9, 0.7, 0.8])
    _patients(ds / "skips/plain/paper/iac_lth/seed0/patients.tsv", [0.85, 0.65, 0.75])
    for method, seconds, epochs in (("iac", 300.0, 200), ("iac_lth", 100.0, 60)):
        summary = ds / f"skips/plain/paper/{method}/seed0/search/search_summary.json"
        summary.parent.mkdir(parents=True)
        summary.write_text(json.dumps({"method": method, "search_seconds": seconds, "epochs_run": epochs}))
    return root


def test_every_figure_is_written(results, tmp_path):
    written = build_figures(results, tmp_path / "figures")
    names = {p.name for p in written}
    for stem in ("width_sensitivity_toy", "paired_dice_toy_plain_paper_seed0", "search_cost_toy"):
        assert f"{stem}.png" in names and f"{stem}.pdf" in names
        assert (tmp_path / "figures" / f"{stem}.png").stat().st_size > 1000
    assert json.loads((tmp_path / "figures" / "figures.json").read_text()) == [str(p) for p in written]


def test_paired_data_is_what_the_files_say(results):
    data = paired_dice_data(Results(results), "toy", "plain", "paper", "seed0")
    assert list(data.columns) == ["ref", "iac", "iac_lth"]
    assert data.mean().to_dict() == pytest.approx({"ref": 0.7, "iac": 0.8, "iac_lth": 0.75})


def test_missing_inputs_skip_the_figure_and_say_why(results, tmp_path, capsys):
    (results / "toy" / "width" / "selection.json").unlink()
    for summary in (results / "toy").rglob("search_summary.json"):
        summary.unlink()
    names = {p.name for p in build_figures(results, tmp_path / "figures")}
    err = capsys.readouterr().err
    assert "skipped width sensitivity of toy" in err and "skipped search cost of toy" in err
    assert not any(n.startswith(("width_sensitivity", "search_cost")) for n in names)
    assert "paired_dice_toy_plain_paper_seed0.png" in names


def test_cli(results, tmp_path):
    assert main(["figures", str(results), "--out", str(tmp_path / "figs")]) == 0
    assert main(["figures", str(tmp_path / "nowhere"), "--out", str(tmp_path / "f2")]) == 2


def test_random_cell_is_a_skip_method_not_a_search(results, tmp_path):
    from unetscout.stats import figures, tables

    assert figures.SKIP_METHODS is tables.SKIP_METHODS and figures.METHOD_LABELS is tables.METHOD_LABELS
    assert figures.LABELS["random"] == "Random cell" and figures.LABELS["ref"] == "Ref"
    run = results / "toy/skips/plain/paper/random/seed0"
    _patients(run / "patients.tsv", [0.75, 0.55, 0.65])
    (run / "search").mkdir()
    (run / "search/search_summary.json").write_text(json.dumps(
        {"method": "random", "epochs_run": 0, "search_seconds": 0.0, "forward_backward_passes": 0,
         "floor_bound": None}))
    data = paired_dice_data(Results(results), "toy", "plain", "paper", "seed0")
    assert list(data.columns) == ["ref", "random", "iac", "iac_lth"]      # the tables' method order
    assert data["random"].mean() == pytest.approx(0.65)
    names = {p.name for p in build_figures(results, tmp_path / "figures")}
    assert {"paired_dice_toy_plain_paper_seed0.png", "search_cost_toy.png"} <= names
