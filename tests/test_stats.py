"""Statistical tests (docs/methods.md#statistics): against scipy and against hand-computed values."""

from __future__ import annotations

import argparse
import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from unetscout.errors import UnetscoutError
from unetscout.stats.cli_args import add_compare_parser
from unetscout.stats.tests import (bootstrap_ci, compare, fisher_combine, paired_delta, read_patients,
                                   wilcoxon_p)


# ---------------------------------------------------------------- Wilcoxon

def _random_deltas(seed: int, n: int, ties: bool, zeros: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    deltas = rng.normal(0.02, 0.05, n)
    if ties:
        deltas = np.round(deltas, 2)      # many equal |delta|
    if zeros:
        deltas[: n // 5] = 0.0
    return deltas


@pytest.mark.parametrize("seed,n,ties,zeros", [
    (0, 5, False, False), (1, 12, False, False), (2, 30, False, False), (3, 60, False, False),
    (4, 10, True, False), (5, 25, True, False), (6, 80, True, True), (7, 15, False, True),
])
def test_wilcoxon_equals_scipy(seed, n, ties, zeros):
    deltas = _random_deltas(seed, n, ties, zeros)
    expected = scipy.stats.wilcoxon(deltas, alternative="two-sided").pvalue
    assert wilcoxon_p(deltas) == pytest.approx(expected, abs=1e-12, rel=0)


@pytest.mark.parametrize("deltas,expected", [
    # all five positive: W- = 0; exact two-sided p = 2 * P(W <= 0) = 2 / 2**5
    ([0.1, 0.2, 0.3, 0.4, 0.5], 2 / 32),
    # W- = rank of |-0.2| = 2; subsets of {1..5} with sum <= 2: {}, {1}, {2} -> p = 2 * 3 / 32
    ([0.1, -0.2, 0.3, 0.4, 0.5], 6 / 32),
    # a single nonzero difference: every sign pattern is as extreme -> p = 1
    ([0.3], 1.0),
])
def test_wilcoxon_hand_computed(deltas, expected):
    assert wilcoxon_p(deltas) == pytest.approx(expected, abs=1e-12)


def _exact_signed_rank_p(deltas: np.ndarray) -> float:
    """Independent exact test: enumerate all 2**n sign patterns of the ranks (no ties/zeros)."""
    ranks = scipy.stats.rankdata(np.abs(deltas))
    observed = ranks[deltas > 0].sum()
    signs = np.array(list(itertools.product([0, 1], repeat=len(deltas))))
    w_plus = signs @ ranks
    p = 2 * min(np.mean(w_plus <= observed), np.mean(w_plus >= observed))
    return min(1.0, p)


def _normal_signed_rank_p(deltas: np.ndarray) -> float:
    """Independent normal approximation with tie correction (zeros absent), no continuity correction."""
    n = len(deltas)
    ranks = scipy.stats.rankdata(np.abs(deltas))
    w_plus = ranks[deltas > 0].sum()
    _, counts = np.unique(np.abs(deltas), return_counts=True)
    variance = n * (n + 1) * (2 * n + 1) / 24 - np.sum(counts ** 3 - counts) / 48
    z = (w_plus - n * (n + 1) / 4) / math.sqrt(variance)
    return 2 * scipy.stats.norm.sf(abs(z))


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_wilcoxon_exact_against_enumeration(seed):
    deltas = np.random.default_rng(seed).normal(0.1, 0.2, 11)
    assert wilcoxon_p(deltas) == pytest.approx(_exact_signed_rank_p(deltas), abs=1e-12)


@pytest.mark.parametrize("seed", [20, 21])
def test_wilcoxon_ties_against_normal_approximation(seed):
    deltas = np.round(np.random.default_rng(seed).normal(0.03, 0.05, 40), 2)
    deltas = deltas[deltas != 0]
    assert len(np.unique(np.abs(deltas))) < len(deltas)          # really has ties
    assert wilcoxon_p(deltas) == pytest.approx(_normal_signed_rank_p(deltas), abs=1e-12)


def test_wilcoxon_degenerate_inputs():
    assert wilcoxon_p([0.0, 0.0, 0.0]) == 1.0     # documented: no difference at all
    assert math.isnan(wilcoxon_p([]))
    with pytest.raises(ValueError):
        wilcoxon_p([0.1, float("nan")])


# ---------------------------------------------------------------- Fisher

@pytest.mark.parametrize("seed,m", [(0, 1), (1, 2), (2, 6), (3, 20)])
def test_fisher_equals_scipy(seed, m):
    pvalues = np.random.default_rng(seed).uniform(1e-6, 1, m)
    expected = scipy.stats.combine_pvalues(pvalues, method="fisher").pvalue
    assert fisher_combine(pvalues) == pytest.approx(expected, abs=1e-12, rel=0)


def test_fisher_hand_computed():
    # m = 1: chi2(2).sf(-2 ln p) = exp(ln p) = p
    assert fisher_combine([0.3]) == pytest.approx(0.3, abs=1e-12)
    # m = 2: chi2(4).sf(x) = exp(-x/2) (1 + x/2) with x/2 = -ln(p1 p2) -> p1 p2 (1 - ln(p1 p2))
    p1, p2 = 0.125, 0.25
    assert fisher_combine([p1, p2]) == pytest.approx(p1 * p2 * (1 - math.log(p1 * p2)), abs=1e-12)
    assert fisher_combine([0.0, 0.5]) == 0.0
    assert fisher_combine([1.0, 1.0]) == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(fisher_combine([]))
    with pytest.raises(ValueError):
        fisher_combine([1.5])


# ---------------------------------------------------------------- bootstrap

def _quantile_se(boot: np.ndarray, q: float, resamples: int) -> float:
    """Monte-Carlo SE of a bootstrap quantile: sqrt(q(1-q)/B) / density at the quantile
    (density of the near-normal bootstrap distribution of the mean)."""
    sd = boot.std()
    density = scipy.stats.norm.pdf(scipy.stats.norm.ppf(q)) / sd
    return math.sqrt(q * (1 - q) / resamples) / density


@pytest.mark.parametrize("seed,n", [(0, 8), (1, 25), (2, 60), (3, 120)])
def test_bootstrap_within_monte_carlo_error_of_scipy(seed, n):
    values = np.random.default_rng(seed).gamma(2.0, 0.05, n) - 0.05
    reference = scipy.stats.bootstrap((values,), np.mean, method="percentile", n_resamples=10_000,
                                      confidence_level=0.95, rng=np.random.default_rng(1000 + seed))
    low, high = bootstrap_ci(values, n_resamples=10_000, confidence=0.95, seed=seed)
    boot = reference.bootstrap_distribution
    for ours, theirs, q in ((low, reference.confidence_interval.low, 0.025),
                            (high, reference.confidence_interval.high, 0.975)):
        se = _quantile_se(boot, q, 10_000)
        # two independent estimates, each with SE `se`
        assert abs(ours - theirs) < 3 * math.sqrt(2) * se


@pytest.mark.parametrize("values,expected", [
    ([0.37] * 7, (0.37, 0.37)),          # every resample has the same mean
    ([0.42], (0.42, 0.42)),
    # n = 2: resample means 0, .5, 1 with prob 1/4, 1/2, 1/4 -> 2.5 % / 97.5 % quantiles 0 and 1
    ([0.0, 1.0], (0.0, 1.0)),
    # n = 4 with one 1: P(mean = 1) = 1/256 < 2.5 % < P(mean >= .75) = 13/256; P(mean = 0) = 81/256
    ([0.0, 0.0, 0.0, 1.0], (0.0, 0.75)),
])
def test_bootstrap_hand_computed(values, expected):
    low, high = bootstrap_ci(values, n_resamples=10_000, seed=3)
    assert (low, high) == pytest.approx(expected, abs=1e-12)


def test_bootstrap_is_seeded():
    values = np.random.default_rng(5).normal(size=30)
    assert bootstrap_ci(values, seed=7) == bootstrap_ci(values, seed=7)
    assert bootstrap_ci(values, seed=7) != bootstrap_ci(values, seed=8)
    low, high = bootstrap_ci(values, confidence=0.5)
    wide_low, wide_high = bootstrap_ci(values, confidence=0.99)
    assert wide_low < low < values.mean() < high < wide_high
    assert all(math.isnan(v) for v in bootstrap_ci([]))


# ---------------------------------------------------------------- paired deltas and files

def _write_patients(path, patients, dice, **extra):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"patient": patients, "dice": dice, **extra}).to_csv(path, sep="\t", index=False)
    return path


def test_paired_delta_matches_by_patient_and_drops_nan(tmp_path):
    a = read_patients(_write_patients(tmp_path / "a.tsv", ["001", "002", "003", "004"], [0.5, 0.6, np.nan, 0.8]))
    b = read_patients(_write_patients(tmp_path / "b.tsv", ["004", "003", "002", "001"], [0.9, 0.7, 0.65, 0.75]))
    delta = paired_delta(a, b)
    # 001: .75 - .5, 002: .65 - .6, 004: .9 - .8; 003 is NaN in A -> dropped
    assert delta.to_dict() == pytest.approx({"001": 0.25, "002": 0.05, "004": 0.1})
    assert delta.attrs["n_dropped"] == 1


def test_patient_ids_stay_text(tmp_path):
    df = read_patients(_write_patients(tmp_path / "a.tsv", ["007", "NA"], [0.5, ""]))
    assert df["patient"].tolist() == ["007", "NA"]
    assert math.isnan(df["dice"].iloc[1])


def test_patient_mismatch_names_patients_and_files(tmp_path):
    a_path = _write_patients(tmp_path / "ref" / "patients.tsv", ["p1", "p2", "p3"], [0.5, 0.6, 0.7])
    b_path = _write_patients(tmp_path / "iac" / "patients.tsv", ["p1", "p2", "p9"], [0.5, 0.6, 0.7])
    with pytest.raises(UnetscoutError) as err:
        paired_delta(read_patients(a_path), read_patients(b_path))
    message = str(err.value)
    assert "p3" in message and "p9" in message
    assert f"{b_path}: missing patients p3" in message
    assert f"{a_path}: missing patients p9" in message
    assert "\n" not in message


def test_bad_patients_files(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("patient\tdice\np1\tabc\n")
    with pytest.raises(UnetscoutError, match=r"x\.tsv: column 'dice' holds a non-number: 'abc'"):
        read_patients(path)
    path.write_text("case\tdice\np1\t0.5\n")
    with pytest.raises(UnetscoutError, match="no 'patient' column"):
        read_patients(path)
    path.write_text("patient\tdice\np1\t0.5\np1\t0.6\n")
    with pytest.raises(UnetscoutError, match="more than once: p1"):
        read_patients(path)
    with pytest.raises(UnetscoutError, match="not found"):
        read_patients(tmp_path / "absent.tsv")


# ---------------------------------------------------------------- compare and its CLI

def test_compare_cli_writes_json(tmp_path, capsys):
    a = _write_patients(tmp_path / "a" / "patients.tsv", ["p1", "p2", "p3", "p4", "p5"],
                        [0.50, 0.60, 0.70, 0.80, 0.40])
    b = _write_patients(tmp_path / "b" / "patients.tsv", ["p5", "p4", "p3", "p2", "p1"],
                        [0.90, 0.84, 0.73, 0.62, np.nan])
    out = tmp_path / "delta.json"
    parser = argparse.ArgumentParser()
    add_compare_parser(parser.add_subparsers())
    args = parser.parse_args(["compare", str(a), str(b), "--out", str(out), "--seed", "1",
                              "--resamples", "2000"])
    args.func(args)
    result = json.loads(out.read_text())
    assert {"mean_delta", "ci_low", "ci_high", "p_wilcoxon", "n_patients"} <= set(result)
    # deltas p2 .02, p3 .03, p4 .04, p5 .50 (p1 NaN dropped) -> mean .1475
    assert result["mean_delta"] == pytest.approx(0.1475)
    assert result["n_patients"] == 4 and result["n_dropped"] == 1
    # four positive distinct deltas: exact p = 2 / 16
    assert result["p_wilcoxon"] == pytest.approx(0.125, abs=1e-12)
    assert 0.02 <= result["ci_low"] < result["mean_delta"] < result["ci_high"] <= 0.5
    assert "+0.1475" in capsys.readouterr().out
    assert compare(a, b, tmp_path / "again.json", seed=1, n_resamples=2000) == result


def test_hierarchical_bootstrap_of_constant_groups_is_the_bootstrap_over_groups():
    from unetscout.stats.tests import hierarchical_bootstrap_ci

    # patients add nothing when each group is constant: resampled means .1, .2, .3 w.p. 1/4, 1/2, 1/4
    assert hierarchical_bootstrap_ci([[0.1] * 4, [0.3] * 5], 10_000, 0.95, 0) == pytest.approx((0.1, 0.3))


def test_hierarchical_bootstrap_of_one_group_is_the_patient_bootstrap():
    from unetscout.stats.tests import hierarchical_bootstrap_ci

    values = np.random.default_rng(3).normal(0.1, 0.2, 60)
    expected = scipy.stats.bootstrap((values,), np.mean, n_resamples=20_000, method="percentile",
                                     random_state=1).confidence_interval
    low, high = hierarchical_bootstrap_ci([values], 20_000, 0.95, 0)
    assert low == pytest.approx(expected.low, abs=0.01) and high == pytest.approx(expected.high, abs=0.01)


def test_hierarchical_bootstrap_is_wider_than_either_stage_alone():
    from unetscout.stats.tests import bootstrap_ci, hierarchical_bootstrap_ci

    rng = np.random.default_rng(0)
    # eight backbones whose patient spread (sd 1 over 20 patients: 0.22 per mean) dwarfs theirs
    groups = [rng.normal(mu, 1.0, 20) for mu in np.linspace(0.0, 0.35, 8)]
    low, high = hierarchical_bootstrap_ci(groups, 10_000, 0.95, 0)
    group_low, group_high = bootstrap_ci([g.mean() for g in groups], 10_000, 0.95, 0)
    assert low < group_low and high > group_high
    assert hierarchical_bootstrap_ci(groups, 2000, 0.95, 5) == hierarchical_bootstrap_ci(groups, 2000, 0.95, 5)
