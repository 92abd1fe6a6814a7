"""Training-free width selection: Jacobian scores against independent computations, the knee
rule on hand-built curves, seed combination and bad score tables."""

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

import unetscout.width.jacobian as jacobian
from unetscout.data.slice_store import SliceStore
from unetscout.data.slices import FORMAT_VERSION
from unetscout.errors import UnetscoutError
from unetscout.models.spec import ModelSpec
from unetscout.models.unet import build_model
from unetscout.width import cli_args
from unetscout.width.jacobian import (CAPS, central_slice, choose_slices, input_gradient_norms,
                                      score_widths, scoring_cases, seed_everything, sensitivity_score)
from unetscout.width.knee import knee_select, majority_cap, min_max_normalise, select_width

SIZE = 32
CHANNELS = ["T2", "ADC"]
LABELS = {"background": 0, "lesion": 1, "texture": 2}


def _write_store(root: Path, cases: list[tuple[str, str, str, int]], seed: int = 0) -> Path:
    """A slices folder in SliceStore's layout; cases: (case, patient, split, slices)."""
    (root / "cases").mkdir(parents=True)
    (root / "slices.json").write_text(json.dumps(
        {"format_version": FORMAT_VERSION, "channel_names": CHANNELS, "labels": LABELS, "size": SIZE}))
    rng = np.random.default_rng(seed)
    rows = []
    for case, patient, split, slices in cases:
        np.save(root / "cases" / f"{case}_image.npy",
                rng.normal(size=(slices, len(CHANNELS), SIZE, SIZE)).astype(np.float32))
        np.save(root / "cases" / f"{case}_label.npy", rng.integers(0, 3, size=(slices, SIZE, SIZE), dtype=np.uint8))
        rows.append({"case": case, "patient": patient, "split": split, "slices": slices,
                     "spacing_x": 1.0, "spacing_y": 1.0, "spacing_z": 2.0})
    pd.DataFrame(rows).to_csv(root / "manifest.tsv", sep="\t", index=False)
    return root


TINY_CASES = [("a0", "pa", "train", 3), ("a1", "pa", "train", 2), ("b0", "pb", "train", 4),
              ("c0", "pc", "train", 1), ("v0", "pv", "val", 2), ("t0", "pt", "test", 2)]


@pytest.fixture()
def store_path(tmp_path: Path) -> Path:
    return _write_store(tmp_path / "slices", TINY_CASES)


# ---- the score of one network ------------------------------------------------------------------

def _finite_difference_norm(model: nn.Module, x: torch.Tensor, eps: float = 1e-6) -> float:
    """|| grad_x sum f(x) ||_2 by central differences in float64, all perturbations in one batch."""
    n = x.numel()
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *x.shape[1:])
    batch = torch.cat([x + eps * basis, x - eps * basis])
    with torch.no_grad():
        sums = model(batch).flatten(1).sum(1)  # every layer of the U-Net works per sample
    gradient = (sums[:n] - sums[n:]) / (2 * eps)
    return float(gradient.norm())


def _tiny_unet() -> nn.Module:
    torch.manual_seed(0)
    spec = ModelSpec("plain", in_channels=2, num_classes=3, image_size=8, cap=4, stages=2)
    return build_model(spec).double()


def test_gradient_norm_matches_central_finite_differences():
    model = _tiny_unet()
    images = torch.randn(3, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = [_finite_difference_norm(model.eval(), images[i:i + 1]) for i in range(3)]
    norms = input_gradient_norms(model, images)
    np.testing.assert_allclose(norms, expected, rtol=1e-6)
    assert sensitivity_score(model, images) == pytest.approx(np.mean(expected), rel=1e-6)
    assert min(expected) > 0  # the check would be empty on a dead network


def test_gradient_norm_matches_autograd_vjp_and_leaves_no_gradients():
    model = _tiny_unet().float().train()
    x = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    # An independent route: torch.autograd.functional.vjp of the logits with an all-ones vector.
    _, (vjp,) = torch.autograd.functional.vjp(lambda inp: model(inp), (x,), torch.ones(1, 3, 8, 8))
    assert input_gradient_norms(model, x)[0] == pytest.approx(float(vjp.norm()), rel=1e-5)
    assert model.training, "the caller's mode must be restored"
    assert all(p.grad is None for p in model.parameters()), "scoring must not touch parameter gradients"


class _Log(nn.Module):
    """f(x) = log(x): d/dx sum f = 1/x, infinite where x = 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


def test_non_finite_norms_are_dropped_and_all_non_finite_gives_nan():
    ones = torch.ones(1, 1, 2, 2)
    with_zero = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    halves = torch.full((1, 1, 2, 2), 0.5)
    # s(ones) = ||(1,1,1,1)|| = 2; s(halves) = ||(2,2,2,2)|| = 4; s(with_zero) = inf (dropped).
    assert sensitivity_score(_Log(), torch.cat([ones, with_zero, halves])) == pytest.approx(3.0)
    assert math.isnan(sensitivity_score(_Log(), torch.cat([with_zero, torch.zeros(1, 1, 2, 2)])))


# ---- slice choice and the scores table ------------------------------------------------------------

def test_by_default_every_train_case_gives_its_central_slice(store_path):
    store = SliceStore(store_path)
    # The authors' protocol: one image per train case, slice count // 2 (random images are
    # nonzero everywhere, so the nonzero extent is the whole case): 3 -> 1, 2 -> 1, 4 -> 2, 1 -> 0.
    assert choose_slices(store, k=None, seed=5) == [("a0", 1), ("a1", 1), ("b0", 2), ("c0", 0)]
    assert choose_slices(store, k=100, seed=5) == choose_slices(store, k=None, seed=0)


def _occupied(slices: int, nonzero: list[int], channel: int = 0) -> np.ndarray:
    """[slices, 2, 4, 4] zeros but one voxel in each listed slice (of the given channel)."""
    image = np.zeros((slices, 2, 4, 4), dtype=np.float32)
    for z in nonzero:
        image[z, channel, z % 4, 3 - z % 4] = -1.5
    return image


@pytest.mark.parametrize("slices, nonzero, expected", [
    # odd count: nonzero 2..6 is 5 slices, cropped index 5 // 2 = 2 -> 2 + 2 = 4
    (9, [2, 6], 4),
    (9, [2, 3, 4, 5, 6], 4),
    # even count: nonzero 2..7 is 6 slices, cropped index 6 // 2 = 3 -> 2 + 3 = 5 (the upper middle)
    (9, [2, 7], 5),
    # even count of two: 3..4 -> 3 + 2 // 2 = 4
    (8, [3, 4], 4),
    # even count from the first slice: 0..3 -> 0 + 4 // 2 = 2
    (6, [0, 3], 2),
    # odd count up to the last slice: 5..7 -> 5 + 3 // 2 = 6
    (8, [5, 7], 6),
    # a single occupied slice is its own centre, wherever it lies
    (9, [0], 0), (9, [3], 3), (9, [8], 8),
    # empty slices inside the extent are kept, as in a bounding-box crop: 1..6 -> 1 + 6 // 2 = 4
    (10, [1, 6], 4),
])
def test_central_slice_is_the_cropped_stacks_count_halved(slices, nonzero, expected):
    assert central_slice(_occupied(slices, nonzero)) == expected
    # any channel counts: the same nonzero slices in the second channel only
    assert central_slice(_occupied(slices, nonzero, channel=1)) == expected


def test_central_slice_of_empty_and_one_slice_cases():
    # nothing nonzero: nnU-Net's bounding box is the whole stack -> count // 2
    assert central_slice(np.zeros((5, 2, 3, 3))) == 2
    assert central_slice(np.zeros((6, 2, 3, 3))) == 3
    assert central_slice(np.zeros((1, 2, 3, 3))) == 0
    # a 2-D image case: its one slice
    assert central_slice(np.ones((1, 3, 8, 8))) == 0
    # nonzero everywhere: the whole stack, count // 2 (even count: the upper middle)
    assert central_slice(np.ones((4, 1, 2, 2))) == 2
    assert central_slice(np.ones((7, 1, 2, 2))) == 3


def test_k_cases_are_evenly_spread_and_seeded(tmp_path):
    cases = [(f"c{i:02d}", f"p{i:02d}", "train", 1) for i in range(10)] + [("v", "pv", "val", 1)]
    store = SliceStore(_write_store(tmp_path / "ten", cases))
    picks = scoring_cases(store, k=5, seed=3)
    # Systematic sample: one case in each block of two (0-1, 2-3, ...), the same offset in each.
    positions = [int(c[1:]) for c in picks]
    assert [p // 2 for p in positions] == [0, 1, 2, 3, 4] and len({p % 2 for p in positions}) == 1
    assert scoring_cases(store, k=5, seed=3) == picks
    assert len({tuple(scoring_cases(store, k=3, seed=s)) for s in range(8)}) > 1
    with pytest.raises(UnetscoutError, match="--k must be"):
        scoring_cases(store, k=0, seed=0)


def test_labels_are_never_read(store_path):
    for label in (store_path / "cases").glob("*_label.npy"):
        label.write_bytes(b"not a numpy file")  # any read would fail
    table = score_widths(store_path, store_path.parent / "scores.tsv", k=2, caps=(4, 2), device="cpu")
    assert np.isfinite(table["score"]).all()


def test_scores_table_columns_norm_and_model_sizes(store_path):
    out = store_path.parent / "w" / "scores.tsv"
    table = score_widths(store_path, out, k=2, seeds=(3, 4), caps=(2, 8, 4), device="cpu")
    written = pd.read_csv(out, sep="\t")
    assert list(written.columns) == ["seed", "cap", "params", "gflops", "score", "score_norm"]
    assert written["cap"].tolist() == [8, 4, 2, 8, 4, 2] and written["seed"].tolist() == [3, 3, 3, 4, 4, 4]
    np.testing.assert_allclose(written["score"], table["score"])
    for seed, group in written.groupby("seed"):
        s = group["score"].to_numpy()
        np.testing.assert_allclose(group["score_norm"], (s - s.min()) / (s.max() - s.min()))
    # Parameters of the plain U-Net at 32 px (4 stages), 2 channels in, 3 classes, cap 2,
    # counted by hand from docs/methods.md#plain-and-capped-u-net: every width is 2.
    # encoder stage: 2 x (conv 2*2*9+2 = 38, norm 2+2 = 4) = 84 (the first stage too: 2 in-channels)
    # decoder stage: transposed conv 2*2*4+2 = 18, conv on the concat 4*2*9+2 = 74 + norm 4,
    # conv 38 + norm 4, head 2*3+3 = 9 -> 147; 4 encoder + 3 decoder stages = 336 + 441 = 777
    cap2 = 4 * 84 + 3 * (18 + 78 + 42 + 9)
    assert cap2 == 777
    assert written.loc[written["cap"] == 2, "params"].tolist() == [cap2, cap2]
    assert (written["gflops"] > 0).all()


def test_every_cap_starts_from_the_same_rng_state(store_path, monkeypatch):
    built: dict[int, nn.Module] = {}

    def recording_build(spec: ModelSpec) -> nn.Module:
        model = build_model(spec)
        built[spec.cap] = model
        return model

    monkeypatch.setattr(jacobian, "build_model", recording_build)
    first = score_widths(store_path, store_path.parent / "one.tsv", k=2, seeds=(11,), caps=(16, 8, 4), device="cpu")
    seed_everything(11)
    alone = build_model(ModelSpec("plain", in_channels=2, num_classes=3, image_size=SIZE, cap=8))
    first_conv = "encoder.stages.0.0.0.weight"
    assert torch.equal(built[8].state_dict()[first_conv], alone.state_dict()[first_conv])
    # Scoring cap 8 alone gives the same number as scoring it after cap 16: no RNG carry-over.
    only8 = score_widths(store_path, store_path.parent / "two.tsv", k=2, seeds=(11,), caps=(8,), device="cpu")
    assert only8["score"].iloc[0] == first.loc[first["cap"] == 8, "score"].iloc[0]
    again = score_widths(store_path, store_path.parent / "three.tsv", k=2, seeds=(11,), caps=(16, 8, 4),
                         device="cpu")
    pd.testing.assert_frame_equal(first, again)
    assert not list(store_path.parent.glob(".*partial*"))


def test_seed_everything_seeds_python_numpy_and_torch():
    import random

    seed_everything(7)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(7)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_score_widths_rejects_bad_arguments(store_path):
    with pytest.raises(UnetscoutError, match="--k"):
        score_widths(store_path, store_path.parent / "s.tsv", k=0, caps=(4,), device="cpu")
    with pytest.raises(UnetscoutError, match="--caps"):
        score_widths(store_path, store_path.parent / "s.tsv", k=1, caps=(4, 4), device="cpu")
    with pytest.raises(UnetscoutError, match="--seeds"):
        score_widths(store_path, store_path.parent / "s.tsv", k=1, seeds=(3, 3), caps=(4,), device="cpu")
    with pytest.raises(UnetscoutError, match="slices.json"):
        score_widths(store_path.parent / "nowhere", store_path.parent / "s.tsv", k=1, caps=(4,), device="cpu")
    assert not (store_path.parent / "s.tsv").exists()


# ---- the knee rule ----------------------------------------------------------------------------------

def test_knee_single_cliff_picks_the_config_before_the_last_plateau_one():
    # T = 1 for M_0..M_5, 0 for M_6..M_9: d = [0,0,0,0,0,1,0,0,0].
    # k=2..5: pre = 0, post = 1/(10-k) -> 1/8, 1/7, 1/6, 1/5
    # k=6: pre = 1/6, post = mean(d5..d8) = 1/4 -> 1/12;  k=7: pre = 1/7, post = 0 -> -1/7
    # k* = 5, so the knee rule (docs/methods.md#knee-rule) selects M_4 (d_{k-1} counts in pre, so the cliff's own step
    # penalises k = 6 and the pick lands one config wider than the last plateau config M_5).
    result = knee_select([7.0] * 6 + [3.0] * 4)
    expected = {2: 1 / 8, 3: 1 / 7, 4: 1 / 6, 5: 1 / 5, 6: 1 / 12, 7: -1 / 7}
    assert result.knee_scores.keys() == expected.keys()
    for k, v in expected.items():
        assert result.knee_scores[k] == pytest.approx(v)
    assert (result.k_star, result.selected_index) == (5, 4)
    assert result.normalised == (1.0,) * 6 + (0.0,) * 4
    assert result.steps == (0.0,) * 5 + (1.0,) + (0.0,) * 3


def test_knee_plateau_then_steady_decline():
    # T = [1,1,1,1,1,.8,.6,.4,.2,0]: d = [0,0,0,0,.2,.2,.2,.2,.2]
    # k=2: 1.0/8 = .125; k=3: 1/7 = .143; k=4: 1/6 = .167 (pre 0);
    # k=5: post .2 - pre .2/5 = .16; k=6: .2 - .4/6 = .133; k=7: .2 - .6/7 = .114 -> k* = 4, M_3
    result = knee_select([5, 5, 5, 5, 5, 4, 3, 2, 1, 0])
    assert result.knee_scores[4] == pytest.approx(1 / 6)
    assert result.knee_scores[5] == pytest.approx(0.16)
    assert (result.k_star, result.selected_index) == (4, 3)


def test_knee_monotone_linear_curve_ties_everywhere_and_takes_the_first_k():
    # T_j = (9 - j)/9: every d_j = 1/9, so pre = post and every knee score is 0 -> k* = 2, M_1.
    result = knee_select([float(9 - j) for j in range(10)])
    assert all(abs(v) < 1e-12 for v in result.knee_scores.values())
    assert (result.k_star, result.selected_index) == (2, 1)
    # In floats 0.1 * (9 - j) is not an exact line: its steps differ in the last bits, and
    # that rounding noise must not move the pick away from the first k.
    noisy = knee_select([0.1 * (9 - j) for j in range(10)])
    assert len(set(noisy.steps)) > 1 and noisy.k_star == 2


def test_knee_flat_curve_is_all_zeros_and_takes_the_first_k():
    result = knee_select([2.5] * 10)
    assert result.normalised == (0.0,) * 10 and result.steps == (0.0,) * 9
    assert set(result.knee_scores.values()) == {0.0}
    assert (result.k_star, result.selected_index) == (2, 1)


def test_knee_exact_tie_takes_the_smaller_k():
    # T = [0,0,2,1,0,2,0,2,1,0]/2: d = [0,1,.5,.5,1,1,1,.5,.5] (sum 6)
    # k=2: post 6/8 - pre 1/2 = .25;  k=3: 5/7 - 1.5/3 = .214;  k=4: 4.5/6 - 2/4 = .25
    # k=5: 4/5 - 3/5 = .2;  k=6: 3/4 - 4/6 = .083;  k=7: 2/3 - 5/7 = -.048
    # k = 2 and k = 4 tie at .25: the first argmax is k* = 2, M_1.
    result = knee_select([0, 0, 2, 1, 0, 2, 0, 2, 1, 0])
    assert result.knee_scores[2] == result.knee_scores[4] == 0.25
    assert (result.k_star, result.selected_index) == (2, 1)


def test_knee_rejects_short_or_non_finite_curves():
    with pytest.raises(UnetscoutError, match="at least 5"):
        knee_select([1.0, 2.0, 3.0, 4.0])
    with pytest.raises(UnetscoutError, match="finite"):
        knee_select([1.0, 2.0, float("nan"), 4.0, 5.0])
    # n = 5 is the smallest curve: k runs over {2} only.
    assert knee_select([1, 1, 1, 0, 0]).k_star == 2


def test_min_max_normalise_ignores_non_finite_entries():
    np.testing.assert_allclose(min_max_normalise([2.0, np.nan, 4.0, 3.0]), [0.0, np.nan, 1.0, 0.5])


# ---- combining seeds and reading the table ------------------------------------------------------------

def _cliff(c: int) -> list[float]:
    """Scores over the ten caps with one cliff after M_c: the rule selects M_{c-1} (see above)."""
    return [10.0 + 5.0 * (j <= c) for j in range(10)]


def _write_scores(path: Path, curves: dict[int, list[float]]) -> Path:
    rows = [{"seed": seed, "cap": cap, "params": 1000 + cap, "gflops": 0.1, "score": s, "score_norm": 0.0}
            for seed, curve in curves.items() for cap, s in zip(CAPS, curve)]
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


def test_select_width_single_seed(tmp_path):
    scores = _write_scores(tmp_path / "scores.tsv", {369: _cliff(5)})
    selection = select_width(scores, tmp_path / "selection.json")
    # cliff after M_5 -> M_4 = cap 32 (CAPS[4]).
    assert selection["selected_cap"] == 32 and selection["selected_params"] == 1032
    assert selection["agreement"] == 1.0 and selection["caps"] == list(CAPS)
    assert json.loads((tmp_path / "selection.json").read_text()) == selection
    assert selection["knee_scores"]["5"] == pytest.approx(0.2)


def test_select_width_majority_of_seeds(tmp_path):
    # Seeds 1 and 3 pick cap 32 (cliff after M_5), seed 2 picks cap 64 (cliff after M_4).
    scores = _write_scores(tmp_path / "scores.tsv", {1: _cliff(5), 2: _cliff(4), 3: _cliff(5)})
    selection = select_width(scores, tmp_path / "selection.json")
    assert [p["selected_cap"] for p in selection["per_seed"]] == [32, 64, 32]
    assert selection["selected_cap"] == 32
    assert selection["agreement"] == pytest.approx(2 / 3)
    assert selection["knee_scores"] == selection["per_seed"][0]["knee_scores"]


def test_select_width_tie_goes_to_the_larger_cap(tmp_path):
    scores = _write_scores(tmp_path / "scores.tsv", {1: _cliff(5), 2: _cliff(4)})
    selection = select_width(scores, tmp_path / "selection.json")
    assert selection["selected_cap"] == 64 and selection["agreement"] == 0.5
    assert majority_cap([8, 16, 8, 16, 4]) == 16


@pytest.mark.parametrize("change, problem", [
    (lambda t: t.drop(columns="score"), "missing column(s) score"),
    (lambda t: t[t["cap"] != 4], "seed 369 has 9 caps, expected 10"),
    (lambda t: pd.concat([t, t.iloc[[0]]]), "seed 369 cap 512 appears more than once"),
    (lambda t: t.assign(cap=t["cap"].astype(object).where(t["cap"] != 8, "eight")), "column cap must hold integers"),
    (lambda t: t.assign(score=t["score"].where(t["cap"] != 2, float("nan"))), "score of seed 369 cap 2 is nan"),
    (lambda t: t.iloc[0:0], "no rows"),
])
def test_bad_scores_table_is_one_line_naming_the_file(tmp_path, change, problem):
    path = tmp_path / "scores.tsv"
    _write_scores(path, {369: _cliff(5)})
    change(pd.read_csv(path, sep="\t")).to_csv(path, sep="\t", index=False)
    with pytest.raises(UnetscoutError) as err:
        select_width(path, tmp_path / "selection.json")
    message = str(err.value)
    assert message.startswith(f"{path}: ") and problem in message and "\n" not in message
    assert not (tmp_path / "selection.json").exists()


def test_missing_scores_table(tmp_path):
    with pytest.raises(UnetscoutError, match="scores.tsv: scores table not found"):
        select_width(tmp_path / "scores.tsv", tmp_path / "selection.json")


# ---- command line ---------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unetscout")
    sub = parser.add_subparsers(dest="command", required=True)
    cli_args.add_score_widths_parser(sub)
    cli_args.add_select_width_parser(sub)
    return parser


def test_cli_defaults_mirror_the_module_constants():
    args = _parser().parse_args(["score-widths", "s", "--out", "o"])
    assert tuple(args.caps) == jacobian.CAPS and args.k is jacobian.DEFAULT_K is None  # "all"
    assert args.seeds == [jacobian.DEFAULT_SEED] and args.slice_seed == jacobian.DEFAULT_SEED


def test_cli_k_is_all_or_a_positive_count(capsys):
    assert _parser().parse_args(["score-widths", "s", "--out", "o", "--k", "ALL"]).k is None
    assert _parser().parse_args(["score-widths", "s", "--out", "o", "--k", "12"]).k == 12
    for bad in ("0", "some"):
        with pytest.raises(SystemExit):
            _parser().parse_args(["score-widths", "s", "--out", "o", "--k", bad])
        assert "must be 'all' or a positive integer" in capsys.readouterr().err


def test_cli_scores_then_selects(store_path, capsys):
    scores, selection = store_path.parent / "scores.tsv", store_path.parent / "selection.json"
    caps = ["64", "32", "16", "8", "4", "2"]
    args = _parser().parse_args(["score-widths", str(store_path), "--out", str(scores), "--k", "2",
                                 "--seeds", "1", "2", "--caps", *caps, "--device", "cpu"])
    args.func(args)
    assert pd.read_csv(scores, sep="\t")["seed"].tolist() == [1] * 6 + [2] * 6
    args = _parser().parse_args(["select-width", str(scores), "--out", str(selection), "--caps", *caps])
    args.func(args)
    chosen = json.loads(selection.read_text())
    assert chosen["selected_cap"] in (32, 16)  # n = 6: k in 2..3 selects M_1 or M_2
    assert capsys.readouterr().out.startswith(f"selected cap {chosen['selected_cap']} (")
    # The default caps are ten; this table has six per seed: a one-line error, not a pick.
    args = _parser().parse_args(["select-width", str(scores), "--out", str(selection)])
    with pytest.raises(UnetscoutError, match="seed 1 has 6 caps, expected 10"):
        args.func(args)
