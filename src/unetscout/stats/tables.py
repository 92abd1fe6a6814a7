"""The papers' Tables 1-5 (METHODS §6), rebuilt from the result files alone.

Each table is written as CSV (raw numbers), Markdown and LaTeX. Inputs are discovered by
globbing the fixed results layout; nothing is read from a config. A cell whose inputs
do not exist is left empty (CSV) or shown as "—" (Markdown / LaTeX), and the row's notes
say `missing: <path>`: a missing result is never replaced by a number.

Conventions shared by all tables:
- a training seed directory is `seed<N>`; with several seeds a patient's Dice (or
  Delta) is first averaged over the seeds where it is defined, then summarised over
  patients, so a patient weighs the same whatever the number of seeds;
- a comparison A -> B uses only the seeds where both A and B exist (paired seeds);
- CIs are percentile bootstraps of the mean (seeded, `n_resamples`), over patients for a
  single backbone, over backbones for an across-backbone cell; p-values are two-sided
  Wilcoxon signed-rank per backbone and Fisher's combination across backbones.
"""

from __future__ import annotations

import csv
import io
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from unetscout.atomic import write_text_atomic
from unetscout.errors import file_error
from unetscout.stats.tests import bootstrap_ci, fisher_combine, paired_delta, read_patients, wilcoxon_p

# The one home of the skip-method list and labels (stats/figures.py imports them).
SKIP_METHODS = ("attention", "nested", "resattention", "random", "iac", "iac_lth")
METHOD_LABELS = {"attention": "Attention", "nested": "Nested", "resattention": "Residual Att.",
                 "random": "Random cell", "iac": "IAC", "iac_lth": "IAC-LTH"}
# Methods that run a supernet search. `random` draws its genotype without searching, so it
# has no search cost (Table 4) and does not make a backbone "searched" (Tables 2/3).
SEARCH_METHODS = ("iac", "iac_lth")
PRESETS = ("paper", "nnunet_noaug", "nnunet")
# Table 5 always shows these three (marked missing when absent), then any other backbone.
TABLE5_MODELS = ("plain", "xtiny", "lean")
MODEL_LABELS = {"plain": "nnU-Net", "xtiny": "XTinyU-Net", "lean": "LUnet", "resenc": "ResEnc U-Net"}
NOT_DATASETS = ("tables", "figures")
MISSING = "—"
_SEED_DIR = re.compile(r"^seed(\d+)$")
SEARCH_SUMMARY = Path("search") / "search_summary.json"   # inside a skip method's seed folder
FLOOR_MARK = "†"
FLOOR_SENTENCE = ("† IAC-LTH search floor-bound: the stability test never judged an edge unstable, so its "
                  "stop epoch is the floor (warm-up + one prune per op), not a measurement of the method.")


@dataclass(frozen=True)
class StatsSettings:
    seed: int = 0
    n_resamples: int = 10_000
    confidence: float = 0.95


@dataclass
class Column:
    """One displayed column: its header and how a row becomes text (None = missing)."""
    header: str
    render: Callable[[dict], str | None]


@dataclass
class Table:
    name: str
    title: str
    description: str
    csv_columns: list[str]
    display: list[Column]
    rows: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------- numbers and text

def _num(value) -> float | None:
    """A finite Python float, or None for anything missing."""
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def _fmt_signed(value: float | None) -> str | None:
    return None if value is None else f"{value:+.4f}"


def _fmt_p(value: float | None) -> str | None:
    if value is None:
        return None
    return f"{value:.4f}" if value >= 1e-3 else f"{value:.1e}"


def _fmt_fixed(digits: int) -> Callable[[float | None], str | None]:
    return lambda value: None if value is None else f"{value:.{digits}f}"


def _fmt_int(value) -> str | None:
    return None if value is None else f"{int(value):,}"


def _fmt_gflops(value: float | None) -> str | None:
    return None if value is None else f"{value:.4g}"


def _delta_text(mean: float | None, low: float | None, high: float | None) -> str | None:
    if mean is None:
        return None
    interval = f" [{_fmt_signed(low)}, {_fmt_signed(high)}]" if low is not None and high is not None else ""
    return _fmt_signed(mean) + interval


def _field(key: str, fmt: Callable = lambda v: None if v is None else str(v)) -> Callable[[dict], str | None]:
    return lambda row: fmt(row.get(key))


# ---------------------------------------------------------------- reading the results tree

def _seed_dirs(directory: Path) -> dict[str, Path]:
    """`seed<N>` sub-directories of `directory`, keyed by their name, in numeric order."""
    if not directory.is_dir():
        return {}
    found = [(int(m.group(1)), p.name, p) for p in directory.iterdir()
             if p.is_dir() and (m := _SEED_DIR.match(p.name))]
    return {name: path for _, name, path in sorted(found)}


def _ordered(names: Iterable[str], first: Iterable[str]) -> list[str]:
    names = set(names)
    head = [n for n in first if n in names]
    return head + sorted(names - set(head))


def _non_negative(value) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and bool(np.isfinite(value)) and value >= 0)


@dataclass(frozen=True)
class _SearchSummary:
    """What the tables use of one search/search_summary.json. The fields after
    search_seconds came with the IAC-LTH fidelity rework: older files lack them, read as
    None (unknown), and the rows' notes say so."""
    path: Path
    epochs_run: float
    search_seconds: float
    stop_epoch: float | None
    passes_per_epoch: float | None
    seconds_per_epoch: float | None
    floor_bound: bool | None


def _read_search_summary(path: Path, method: str) -> _SearchSummary:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise file_error(path, f"not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict):
        raise file_error(path, "expected a JSON object with epochs_run and search_seconds")
    if data.get("method", method) != method:
        raise file_error(path, f"method is {data.get('method')!r} but the folder says {method!r}")
    for key in ("epochs_run", "search_seconds"):
        if not _non_negative(data.get(key)):
            raise file_error(path, f"{key} must be a non-negative number, got {data.get(key)!r}")
    for key in ("stop_epoch", "passes_per_epoch", "seconds_per_epoch"):
        if data.get(key) is not None and not _non_negative(data[key]):
            raise file_error(path, f"{key} must be a non-negative number or null, got {data[key]!r}")
    floor_bound = data.get("floor_bound")
    if floor_bound is not None and not isinstance(floor_bound, bool):
        raise file_error(path, f"floor_bound must be true, false or null, got {floor_bound!r}")
    return _SearchSummary(path=path, epochs_run=data["epochs_run"], search_seconds=data["search_seconds"],
                          stop_epoch=data.get("stop_epoch"), passes_per_epoch=data.get("passes_per_epoch"),
                          seconds_per_epoch=data.get("seconds_per_epoch"), floor_bound=floor_bound)


class _Results:
    """One results folder; every file is read at most once."""

    def __init__(self, root: Path):
        self.root = root
        self._patients: dict[Path, pd.DataFrame] = {}
        self._summaries: dict[Path, _SearchSummary | None] = {}

    def datasets(self) -> list[str]:
        stages = ("backbones", "skips", "width", "slices")
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and p.name not in NOT_DATASETS
                      and any((p / stage).is_dir() for stage in stages))

    def patients(self, path: Path) -> pd.DataFrame:
        if path not in self._patients:
            self._patients[path] = read_patients(path)
        return self._patients[path]

    def search_summary(self, run: Path) -> _SearchSummary | None:
        """`run/search/search_summary.json` of a skip method's seed folder, None when absent."""
        if run not in self._summaries:
            path = run / SEARCH_SUMMARY
            self._summaries[run] = _read_search_summary(path, run.parent.name) if path.is_file() else None
        return self._summaries[run]

    def patient_files(self, run_parent: Path) -> dict[str, Path]:
        """`{seed: run_parent/seed<N>/patients.tsv}` for the seeds that have one."""
        return {seed: d / "patients.tsv" for seed, d in _seed_dirs(run_parent).items()
                if (d / "patients.tsv").is_file()}

    def backbone_dir(self, dataset: str, backbone: str, preset: str) -> Path:
        return self.root / dataset / "backbones" / backbone / preset

    def skip_dir(self, dataset: str, backbone: str, preset: str, method: str) -> Path:
        return self.root / dataset / "skips" / backbone / preset / method

    def subdirs(self, directory: Path) -> list[str]:
        return sorted(p.name for p in directory.iterdir() if p.is_dir()) if directory.is_dir() else []

    def skip_backbones(self, dataset: str, preset: str, methods: Iterable[str] = SKIP_METHODS) -> list[str]:
        """Backbones with at least one skip-method result folder under `preset`."""
        skips = self.root / dataset / "skips"
        return [b for b in self.subdirs(skips)
                if any((skips / b / preset / m).is_dir() for m in methods)]


# ---------------------------------------------------------------- paired deltas over seeds

@dataclass
class _Paired:
    delta: pd.Series | None      # per patient, averaged over the paired seeds
    notes: list[str]


def _paired_over_seeds(results: _Results, a_parent: Path, b_parent: Path) -> _Paired:
    """Delta(A -> B) per patient, from the seeds where both A and B have a patients.tsv."""
    a_files, b_files = results.patient_files(a_parent), results.patient_files(b_parent)
    notes: list[str] = []
    for files, parent, other in ((a_files, a_parent, b_files), (b_files, b_parent, a_files)):
        if not files:
            notes.append(f"missing: {parent / 'seed*' / 'patients.tsv'}")
        else:
            notes.extend(f"missing: {parent / seed / 'patients.tsv'}"
                         for seed in other if seed not in files)
    seeds = [s for s in a_files if s in b_files]
    if not seeds:
        return _Paired(None, notes)
    deltas = [paired_delta(results.patients(a_files[s]), results.patients(b_files[s])) for s in seeds]
    dropped = sum(d.attrs["n_dropped"] for d in deltas)
    if dropped:
        notes.append(f"{dropped} patient rows with undefined Dice dropped ({b_parent.name} vs {a_parent.name})")
    delta = pd.concat(deltas).groupby(level=0).mean()
    if delta.empty:
        notes.append(f"no patient has a Dice in both {a_parent} and {b_parent}")
        return _Paired(None, notes)
    return _Paired(delta, notes)


def _over_patients(delta: pd.Series | None, settings: StatsSettings) -> dict:
    """Mean Delta, CI over patients, Wilcoxon p: one backbone."""
    if delta is None:
        return {"mean": None, "ci_low": None, "ci_high": None, "p": None, "n": None}
    values = delta.to_numpy(dtype=float)
    low, high = bootstrap_ci(values, settings.n_resamples, settings.confidence, settings.seed)
    return {"mean": _num(values.mean()), "ci_low": _num(low), "ci_high": _num(high),
            "p": _num(wilcoxon_p(values)), "n": int(values.size)}


def _over_backbones(deltas: dict[str, pd.Series], settings: StatsSettings) -> dict:
    """Mean over backbones of the per-backbone mean Delta, CI over backbones, Fisher p."""
    if not deltas:
        return {"mean": None, "ci_low": None, "ci_high": None, "p": None, "n": None}
    means = np.array([d.mean() for d in deltas.values()], dtype=float)
    pvalues = [wilcoxon_p(d.to_numpy(dtype=float)) for d in deltas.values()]
    low, high = bootstrap_ci(means, settings.n_resamples, settings.confidence, settings.seed)
    return {"mean": _num(means.mean()), "ci_low": _num(low), "ci_high": _num(high),
            "p": _num(fisher_combine(pvalues)), "n": len(deltas)}


# ---------------------------------------------------------------- floor-bound IAC-LTH searches

def _combined(flags: Iterable[bool | None]) -> bool | None:
    """True when any run is floor-bound, False when the known ones are not, None when none is known."""
    known = [flag for flag in flags if flag is not None]
    return any(known) if known else None


def _floor_note(path: Path) -> str:
    return f"IAC-LTH search floor-bound (the stability test never judged an edge unstable): {path}"


def _floor_bound(results: _Results, method_dirs: Iterable[Path]) -> tuple[bool | None, list[str]]:
    """Whether the IAC-LTH searches under these skip folders (every seed) stopped at their floor."""
    flags, notes = [], []
    for method_dir in method_dirs:
        for run in _seed_dirs(method_dir).values():
            summary = results.search_summary(run)
            if summary is None:
                notes.append(f"floor-bound unknown: missing {run / SEARCH_SUMMARY}")
            elif summary.floor_bound is None:
                notes.append(f"floor-bound unknown: {summary.path} does not record floor_bound")
            else:
                flags.append(summary.floor_bound)
                if summary.floor_bound:
                    notes.append(_floor_note(summary.path))
    return _combined(flags), notes


def _floor_marked(render: Callable[[dict], str | None]) -> Callable[[dict], str | None]:
    """A display cell with the floor-bound dagger appended on a floor-bound row."""
    def cell(row: dict) -> str | None:
        text = render(row)
        return text + FLOOR_MARK if text is not None and row.get("floor_bound") else text
    return cell


def _with_floor_sentence(description: str, rows: list[dict]) -> str:
    """The dagger is explained only in a table that shows one."""
    return f"{description} {FLOOR_SENTENCE}" if any(row.get("floor_bound") for row in rows) else description


# ---------------------------------------------------------------- Table 1: skip methods vs Ref

def table_skip_methods(results: _Results, settings: StatsSettings, preset: str = "paper") -> Table:
    rows = []
    for dataset in results.datasets():
        backbones = results.skip_backbones(dataset, preset)
        for method in SKIP_METHODS:
            notes: list[str] = []
            deltas: dict[str, pd.Series] = {}
            for backbone in backbones:
                paired = _paired_over_seeds(results, results.backbone_dir(dataset, backbone, preset),
                                            results.skip_dir(dataset, backbone, preset, method))
                notes.extend(paired.notes)
                if paired.delta is not None:
                    deltas[backbone] = paired.delta
            if not backbones:
                pattern = results.root / dataset / "skips" / "*" / preset / method / "seed*" / "patients.tsv"
                notes.append(f"missing: {pattern}")
            # Like Tables 2/3's 'all' row: floor-bound when any backbone's IAC-LTH search is.
            floor_bound, floor_notes = (_floor_bound(results, [results.skip_dir(dataset, b, preset, method)
                                                               for b in backbones])
                                        if method == "iac_lth" else (None, []))
            summary = _over_backbones(deltas, settings)
            rows.append({"dataset": dataset, "method": method, "preset": preset,
                         "delta_dice_mean": summary["mean"], "ci_low": summary["ci_low"],
                         "ci_high": summary["ci_high"], "p_fisher": summary["p"],
                         "n_backbones": summary["n"], "backbones": " ".join(deltas) or None,
                         "floor_bound": floor_bound, "notes": notes + floor_notes})
    return Table(
        name="table1",
        title=f"Table 1: Delta Dice of skip modules vs the identity-skip reference ({preset} preset)",
        description=_with_floor_sentence(
            "Per backbone: mean over patients of Dice(method) - Dice(Ref), Ref = the "
            "backbone's own identity skip; cell = mean over backbones with a "
            f"{settings.confidence:.0%} percentile bootstrap CI over backbones "
            f"({settings.n_resamples} resamples, seed {settings.seed}); p = Fisher's "
            "combination of the per-backbone two-sided Wilcoxon p-values. Random cell = a cell "
            "genotype drawn uniformly from IAC's search space (seeded), trained like IAC's cell.", rows),
        csv_columns=["dataset", "method", "preset", "delta_dice_mean", "ci_low", "ci_high",
                     "p_fisher", "n_backbones", "backbones", "floor_bound"],
        display=[Column("Dataset", _field("dataset")),
                 Column("Method", _floor_marked(lambda r: METHOD_LABELS[r["method"]])),
                 Column("ΔDice [95% CI]", lambda r: _delta_text(r["delta_dice_mean"], r["ci_low"], r["ci_high"])),
                 Column("Fisher p", _field("p_fisher", _fmt_p)),
                 Column("Backbones", _field("n_backbones"))],
        rows=rows)


# ---------------------------------------------------------------- Tables 2/3: nnU-Net Ref / IAC / IAC-LTH

# New comparisons go last so the earlier columns keep their places in the CSV.
NNUNET_COMPARISONS = (("ref_iac", "Ref → IAC", None, "iac"),
                      ("ref_iac_lth", "Ref → IAC-LTH", None, "iac_lth"),
                      ("iac_iac_lth", "IAC → IAC-LTH", "iac", "iac_lth"),
                      ("ref_random", "Ref → Random", None, "random"),
                      ("random_iac_lth", "Random → IAC-LTH", "random", "iac_lth"))


def table_nnunet(results: _Results, settings: StatsSettings, preset: str, number: int) -> Table:
    rows = []
    for dataset in results.datasets():
        # The nnU-Net reference is the plain backbone; other backbones appear when searched.
        backbones = results.skip_backbones(dataset, preset, methods=SEARCH_METHODS) or ["plain"]
        per_comparison: dict[str, dict[str, pd.Series]] = {key: {} for key, *_ in NNUNET_COMPARISONS}
        for backbone in backbones:
            row: dict = {"dataset": dataset, "backbone": backbone, "unit": "patient", "notes": []}
            for key, _, a_method, b_method in NNUNET_COMPARISONS:
                a_parent = (results.backbone_dir(dataset, backbone, preset) if a_method is None
                            else results.skip_dir(dataset, backbone, preset, a_method))
                paired = _paired_over_seeds(results, a_parent,
                                            results.skip_dir(dataset, backbone, preset, b_method))
                row["notes"].extend(n for n in paired.notes if n not in row["notes"])
                if paired.delta is not None:
                    per_comparison[key][backbone] = paired.delta
                _put_summary(row, key, _over_patients(paired.delta, settings))
            row["floor_bound"], floor_notes = _floor_bound(
                results, [results.skip_dir(dataset, backbone, preset, "iac_lth")])
            row["notes"].extend(floor_notes)
            rows.append(row)
        if len(backbones) > 1:
            backbone_rows = rows[-len(backbones):]
            floor_bound = _combined(r["floor_bound"] for r in backbone_rows)
            bound = [r["backbone"] for r in backbone_rows if r["floor_bound"]]
            row = {"dataset": dataset, "backbone": "all", "unit": "backbone", "floor_bound": floor_bound,
                   "notes": [f"IAC-LTH search floor-bound for backbone(s): {', '.join(bound)}"] if bound else []}
            for key, *_ in NNUNET_COMPARISONS:
                _put_summary(row, key, _over_backbones(per_comparison[key], settings))
            rows.append(row)
    csv_columns = ["dataset", "backbone", "unit"]
    display = [Column("Dataset", _field("dataset")), Column("Backbone", _floor_marked(_field("backbone")))]
    for key, label, *_ in NNUNET_COMPARISONS:
        csv_columns += [f"{key}_mean", f"{key}_ci_low", f"{key}_ci_high", f"{key}_p", f"{key}_n"]
        display += [Column(f"ΔDice {label} [95% CI]",
                           lambda r, k=key: _delta_text(r[f"{k}_mean"], r[f"{k}_ci_low"], r[f"{k}_ci_high"])),
                    Column("p", _field(f"{key}_p", _fmt_p))]
    csv_columns.append("floor_bound")
    augmentation = "without" if preset == "nnunet_noaug" else "with"
    return Table(
        name=f"table{number}",
        title=f"Table {number}: nnU-Net {augmentation} augmentation ({preset}): Ref, random cell, IAC, IAC-LTH",
        description=_with_floor_sentence(
            "Delta(A -> B) = Dice_B - Dice_A per patient (positive: B better). Backbone rows: "
            f"mean over patients, {settings.confidence:.0%} percentile bootstrap CI over patients, "
            "two-sided Wilcoxon p (unit = patient). Row 'all': mean over backbones, CI over "
            "backbones, Fisher-combined p (unit = backbone). Random = a cell genotype drawn uniformly "
            "from the search space (seeded), trained like IAC's cell; Random → IAC-LTH tells whether "
            "the searched cell beats chance.", rows),
        csv_columns=csv_columns, display=display, rows=rows)


def _put_summary(row: dict, key: str, summary: dict) -> None:
    for part in ("mean", "ci_low", "ci_high", "p", "n"):
        row[f"{key}_{part}"] = summary[part]


# ---------------------------------------------------------------- Table 4: search cost

def table_search_cost(results: _Results) -> Table:
    rows = []
    for dataset in results.datasets():
        skips = results.root / dataset / "skips"
        presets = _ordered({p for b in results.subdirs(skips) for p in results.subdirs(skips / b)
                            if any((skips / b / p / m).is_dir() for m in SEARCH_METHODS)}, PRESETS)
        if not presets:
            rows.append({"dataset": dataset, "preset": None, "notes": [
                f"missing: {skips / '*' / '*' / m / 'seed*' / SEARCH_SUMMARY}" for m in SEARCH_METHODS]})
            continue
        for preset in presets:
            runs: dict[str, dict[tuple[str, str], _SearchSummary]] = {m: {} for m in SEARCH_METHODS}
            notes: list[str] = []
            run_dirs = dict.fromkeys(SEARCH_METHODS, 0)
            for backbone in results.skip_backbones(dataset, preset, methods=SEARCH_METHODS):
                for method in runs:
                    for seed, run in _seed_dirs(results.skip_dir(dataset, backbone, preset, method)).items():
                        run_dirs[method] += 1
                        summary = results.search_summary(run)
                        if summary is not None:
                            runs[method][(backbone, seed)] = summary
                        else:
                            notes.append(f"missing: {run / SEARCH_SUMMARY}")
            for method, other in (("iac", "iac_lth"), ("iac_lth", "iac")):
                if not run_dirs[method]:
                    notes.append(f"missing: {skips / '*' / preset / method / 'seed*' / SEARCH_SUMMARY}")
                else:
                    notes.extend(f"missing: {results.skip_dir(dataset, b, preset, method) / s / SEARCH_SUMMARY}"
                                 for b, s in runs[other] if (b, s) not in runs[method])
            rows.append(_search_cost_row(dataset, preset, runs, notes))
    per_epoch = lambda v: None if v is None else f"{v:,.0f}"
    return Table(
        name="table4",
        title="Table 4: architecture search cost per dataset (IAC vs IAC-LTH)",
        description=_with_floor_sentence(
            "Means over backbones and seeds of the search_summary.json of each run; times in "
            "minutes of wall clock. Where some runs (same backbone, preset and seed) have both "
            "an IAC and an IAC-LTH search, every column uses only those paired runs and "
            "speed-up = IAC time / IAC-LTH time; otherwise each method's own runs are shown "
            "and there is no speed-up. Both methods' epochs are one pass over the search's training "
            "data at the search batch size, with equal sample forward/backward passes per epoch, so "
            "the speed-up is at equal epoch definitions; passes/epoch = samples that went forward and "
            "backward through the supernet per epoch (a note flags a row where the two methods' "
            "passes/epoch differ by more than 5 %), s/epoch = search seconds per epoch. "
            "Floor-bound = IAC-LTH runs whose search stopped at its floor, out of the runs shown.", rows),
        csv_columns=["dataset", "preset", "iac_minutes", "iac_epochs", "iac_lth_epochs",
                     "iac_lth_minutes", "speedup", "n_runs", "paired",
                     "iac_passes_per_epoch", "iac_lth_passes_per_epoch", "iac_seconds_per_epoch",
                     "iac_lth_seconds_per_epoch", "iac_lth_stop_epoch", "floor_bound_runs", "iac_lth_runs",
                     "floor_bound"],
        display=[Column("Dataset", _floor_marked(_field("dataset"))), Column("Preset", _field("preset")),
                 Column("IAC time (min)", _field("iac_minutes", _fmt_fixed(1))),
                 Column("IAC epochs", _field("iac_epochs", _fmt_fixed(1))),
                 Column("IAC-LTH epochs", _field("iac_lth_epochs", _fmt_fixed(1))),
                 Column("IAC-LTH time (min)", _field("iac_lth_minutes", _fmt_fixed(1))),
                 Column("Speed-up", _field("speedup", lambda v: None if v is None else f"{v:.2f}x")),
                 Column("IAC passes/epoch", _field("iac_passes_per_epoch", per_epoch)),
                 Column("IAC-LTH passes/epoch", _field("iac_lth_passes_per_epoch", per_epoch)),
                 Column("IAC s/epoch", _field("iac_seconds_per_epoch", _fmt_fixed(2))),
                 Column("IAC-LTH s/epoch", _field("iac_lth_seconds_per_epoch", _fmt_fixed(2))),
                 Column("IAC-LTH stop epoch", _field("iac_lth_stop_epoch", _fmt_fixed(1))),
                 Column("Floor-bound", lambda r: None if r.get("floor_bound_runs") is None
                        else f"{r['floor_bound_runs']}/{r['iac_lth_runs']}")],
        rows=rows)


# Per method, the summary fields Table 4 shows beyond epochs_run and search_seconds
# (floor_bound is null for IAC by design, so only IAC-LTH's is reported missing).
_COST_FIELDS = {"iac": ("passes_per_epoch", "seconds_per_epoch"),
                "iac_lth": ("passes_per_epoch", "seconds_per_epoch", "stop_epoch", "floor_bound")}


def _search_cost_row(dataset: str, preset: str, runs: dict[str, dict[tuple[str, str], _SearchSummary]],
                     notes: list[str]) -> dict:
    # With paired runs every column uses only them, so speed-up = IAC time / IAC-LTH time
    # as printed; without any pair each method's own runs are shown and no speed-up.
    paired = [k for k in runs["iac"] if k in runs["iac_lth"]]
    used = {method: [runs[method][k] for k in (paired or runs[method])] for method in SEARCH_METHODS}
    for method, fields in _COST_FIELDS.items():
        for summary in used[method]:
            lacking = [name for name in fields if getattr(summary, name) is None]
            if lacking:
                notes.append(f"{summary.path} does not record {', '.join(lacking)} (older search): "
                             "unknown, left out of those means")

    def mean(method: str, name: str) -> float | None:
        # Over the runs that record the field: older summaries lack the newer ones.
        chosen = [value for s in used[method] if (value := getattr(s, name)) is not None]
        return _num(np.mean(chosen)) if chosen else None

    iac_seconds, lth_seconds = mean("iac", "search_seconds"), mean("iac_lth", "search_seconds")
    speedup = iac_seconds / lth_seconds if paired and lth_seconds else None
    iac_passes, lth_passes = mean("iac", "passes_per_epoch"), mean("iac_lth", "passes_per_epoch")
    # The speed-up compares epochs as equal units; say so where they are not (by 5 % of IAC's).
    if iac_passes is not None and lth_passes is not None and abs(lth_passes - iac_passes) > 0.05 * iac_passes:
        notes.append(f"passes per epoch differ by more than 5 %: IAC {iac_passes:,.1f}, "
                     f"IAC-LTH {lth_passes:,.1f}, so the epochs (and the speed-up) are not at equal "
                     "epoch definitions")
    flags = [s.floor_bound for s in used["iac_lth"]]
    notes.extend(_floor_note(s.path) for s in used["iac_lth"] if s.floor_bound)
    floor_bound = _combined(flags)
    return {"dataset": dataset, "preset": preset,
            "iac_minutes": None if iac_seconds is None else iac_seconds / 60.0,
            "iac_epochs": mean("iac", "epochs_run"),
            "iac_lth_epochs": mean("iac_lth", "epochs_run"),
            "iac_lth_minutes": None if lth_seconds is None else lth_seconds / 60.0,
            "speedup": _num(speedup), "n_runs": len(paired) if paired else max(len(runs["iac"]), len(runs["iac_lth"])),
            "paired": bool(paired),
            "iac_passes_per_epoch": iac_passes, "iac_lth_passes_per_epoch": lth_passes,
            "iac_seconds_per_epoch": mean("iac", "seconds_per_epoch"),
            "iac_lth_seconds_per_epoch": mean("iac_lth", "seconds_per_epoch"),
            "iac_lth_stop_epoch": mean("iac_lth", "stop_epoch"),
            "floor_bound_runs": None if floor_bound is None else sum(flag is True for flag in flags),
            "iac_lth_runs": len(used["iac_lth"]), "floor_bound": floor_bound, "notes": notes}


# ---------------------------------------------------------------- Table 5: compact U-Nets

class _ModelCosts:
    """Parameters and GFLOPs of a trained run: recomputed from model.json with
    unetscout.models.describe when importable (once per distinct spec), else read from a
    `params` / `gflops` field of done.json or model_info.json."""

    def __init__(self):
        self._by_spec: dict[str, tuple[int, float]] = {}

    def __call__(self, run_dir: Path) -> tuple[int | None, float | None, dict, list[str]]:
        spec_path = run_dir / "model.json"
        spec_dict: dict = {}
        if spec_path.is_file():
            from unetscout.models.spec import ModelSpec

            spec = ModelSpec.load(spec_path)
            spec_dict = spec.to_dict()
            counted = self._count(spec)
            if counted is not None:
                return counted[0], counted[1], spec_dict, []
        params = gflops = None
        for name in ("done.json", "model_info.json"):
            path = run_dir / name
            if not path.is_file():
                continue
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise file_error(path, f"not valid JSON ({err.msg} at line {err.lineno})") from None
            if isinstance(data, dict):
                params = params if params is not None else _num(data.get("params"))
                gflops = gflops if gflops is not None else _num(data.get("gflops"))
        notes = []
        if params is None or gflops is None:
            if spec_dict:
                notes.append(f"{spec_path}: params/GFLOPs not computed (unetscout.models.describe not "
                             "importable) and not recorded in done.json or model_info.json")
            else:
                notes.append(f"missing: {spec_path} (params, GFLOPs)")
        return (None if params is None else int(params)), gflops, spec_dict, notes

    def _count(self, spec) -> tuple[int, float] | None:
        try:
            from unetscout.models.describe import describe_model
        except ImportError:
            return None
        key = json.dumps(spec.to_dict(), sort_keys=True)
        if key not in self._by_spec:
            # describe_model builds on the meta device: instant, and no RNG state is consumed.
            described = describe_model(spec)
            self._by_spec[key] = (int(described["params"]), float(described["gflops"]))
        return self._by_spec[key]


def _patient_scores(df: pd.DataFrame) -> pd.DataFrame:
    """Per patient: Dice and the mean HD95 over foreground labels (NaN when all missing)."""
    hd95_columns = [c for c in df.columns if c.startswith("hd95_") and not c.endswith("_note")]
    scores = pd.DataFrame({"dice": df["dice"].to_numpy(dtype=float)}, index=df["patient"].astype(str))
    if hd95_columns:
        hd95 = df[hd95_columns].to_numpy(dtype=float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN rows are expected: missing HD95
            scores["hd95"] = np.nanmean(hd95, axis=1)
        scores.attrs["hd95_missing"] = int(np.isnan(hd95).sum())
        scores.attrs["hd95_total"] = int(hd95.size)
    else:
        scores["hd95"] = np.nan
        scores.attrs["hd95_missing"] = scores.attrs["hd95_total"] = 0
    return scores


def table_models(results: _Results) -> Table:
    rows = []
    costs = _ModelCosts()
    for dataset in results.datasets():
        backbones_root = results.root / dataset / "backbones"
        found = results.subdirs(backbones_root)
        presets = _ordered({p for b in found for p in results.subdirs(backbones_root / b)}, PRESETS) or [None]
        for preset in presets:
            for backbone in _ordered(set(found) | set(TABLE5_MODELS), TABLE5_MODELS):
                rows.append(_model_row(results, costs, dataset, backbone, preset))
    return Table(
        name="table5",
        title="Table 5: compact U-Nets: size, cost and accuracy",
        description=("Params and GFLOPs at the dataset's slice size (one forward pass, "
                     "GFLOPs = 2 x multiply-adds / 1e9). Dice: patient-level (mean over foreground "
                     "classes), averaged per patient over seeds first, then mean ± sd (ddof 1) over "
                     "patients; HD95 (mm): per patient the mean over foreground labels with a defined "
                     "HD95, averaged over seeds, then the mean over patients."),
        csv_columns=["dataset", "preset", "model", "backbone", "cap", "width", "params", "gflops",
                     "dice_mean", "dice_sd", "hd95_mean", "n_patients", "n_seeds"],
        display=[Column("Dataset", _field("dataset")), Column("Preset", _field("preset")),
                 Column("Model", _field("model")), Column("Width", _width_text),
                 Column("Params", _field("params", _fmt_int)),
                 Column("GFLOPs", _field("gflops", _fmt_gflops)),
                 Column("Dice", _dice_text),
                 Column("HD95 (mm)", _field("hd95_mean", _fmt_fixed(2)))],
        rows=rows)


def _width_text(row: dict) -> str | None:
    if row.get("width") is not None:
        return f"width {row['width']}"
    return None if row.get("cap") is None else f"cap {row['cap']}"


def _dice_text(row: dict) -> str | None:
    if row.get("dice_mean") is None:
        return None
    sd = row.get("dice_sd")
    return f"{row['dice_mean']:.4f} ± {sd:.4f}" if sd is not None else f"{row['dice_mean']:.4f} ± {MISSING}"


def _model_row(results: _Results, costs: _ModelCosts, dataset: str, backbone: str, preset: str | None) -> dict:
    row: dict = {"dataset": dataset, "preset": preset, "backbone": backbone,
                 "model": MODEL_LABELS.get(backbone, backbone), "notes": []}
    parent = results.backbone_dir(dataset, backbone, preset if preset is not None else "*")
    runs = _seed_dirs(parent) if preset is not None else {}
    files = {seed: run / "patients.tsv" for seed, run in runs.items() if (run / "patients.tsv").is_file()}
    if not runs:
        row["notes"].append(f"missing: {parent / 'seed*'}")
    else:
        params, gflops, spec, notes = costs(next(iter(runs.values())))
        row.update(params=params, gflops=gflops)
        row["notes"].extend(notes)
        if spec:
            lean = spec.get("backbone") == "lean"
            row["width"] = spec.get("width") if lean else None
            row["cap"] = None if lean else spec.get("cap")
        row["notes"].extend(f"missing: {run / 'patients.tsv'}" for seed, run in runs.items() if seed not in files)
    if files:
        per_seed = [_patient_scores(results.patients(path)) for path in files.values()]
        # Average each patient over seeds first, so every patient weighs the same.
        pooled = pd.concat(per_seed).groupby(level=0).mean()
        dice = pooled["dice"].dropna().to_numpy()
        hd95 = pooled["hd95"].dropna().to_numpy()
        missing_hd95 = sum(s.attrs["hd95_missing"] for s in per_seed)
        if missing_hd95:
            total = sum(s.attrs["hd95_total"] for s in per_seed)
            row["notes"].append(f"HD95 missing for {missing_hd95} of {total} patient-label values (see hd95_*_note)")
        row.update(dice_mean=_num(dice.mean()) if dice.size else None,
                   dice_sd=_num(dice.std(ddof=1)) if dice.size > 1 else None,
                   hd95_mean=_num(hd95.mean()) if hd95.size else None,
                   n_patients=int(dice.size), n_seeds=len(files))
        if dice.size == 1:
            row["notes"].append("Dice sd undefined for a single patient")
    return row


# ---------------------------------------------------------------- rendering

def _notes(row: dict) -> list[str]:
    return list(dict.fromkeys(row.get("notes", [])))   # unique, in order of discovery


def _csv_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.15g}"    # hides float noise such as 0.050000000000000044
    return str(value)


def _csv_text(table: Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.csv_columns + ["notes"])
    for row in table.rows:
        writer.writerow([_csv_value(row.get(c)) for c in table.csv_columns]
                        + ["; ".join(_notes(row))])
    return buffer.getvalue()


def _display_cells(table: Table) -> tuple[list[list[str]], list[str]]:
    """Text of every displayed cell ("—" when missing) and the numbered footnotes."""
    cells, footnotes = [], []
    for row in table.rows:
        line = [text if (text := column.render(row)) is not None else MISSING for column in table.display]
        if _notes(row):
            footnotes.append("; ".join(_notes(row)))
            line.append(f"[{len(footnotes)}]")
        else:
            line.append("")
        cells.append(line)
    return cells, footnotes


def _markdown_text(table: Table) -> str:
    cells, footnotes = _display_cells(table)
    headers = [c.header for c in table.display] + ["Notes"]
    escape = lambda text: text.replace("|", "\\|")
    lines = [f"## {table.title}", "", table.description, "",
             "| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(escape(text) for text in line) + " |" for line in cells]
    if not table.rows:
        lines += ["", "No results found."]
    if footnotes:
        lines += ["", f"{MISSING} = no value: its inputs are missing (see the notes).", ""]
        lines += [f"[{i}] {escape(note)}  " for i, note in enumerate(footnotes, 1)]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text).replace("→", r"$\rightarrow$").replace(
        "±", r"$\pm$").replace("Δ", r"$\Delta$").replace("†", r"\dag{}")


def _latex_text(table: Table) -> str:
    cells, footnotes = _display_cells(table)
    headers = [c.header for c in table.display] + ["Notes"]
    lines = [f"% {table.title}. Generated by `unetscout tables`; needs \\usepackage{{booktabs}}.",
             "\\begin{table}[htbp]", "\\centering", "\\footnotesize",
             f"\\caption{{{_latex_escape(table.title)}. {_latex_escape(table.description)}}}",
             f"\\label{{tab:{table.name}}}",
             "\\begin{tabular}{" + "l" * len(headers) + "}", "\\toprule",
             " & ".join(_latex_escape(h) for h in headers) + " \\\\", "\\midrule"]
    lines += [" & ".join(_latex_escape(text) for text in line) + " \\\\" for line in cells]
    lines += ["\\bottomrule", "\\end{tabular}"]
    if footnotes:
        lines += ["", "\\par\\smallskip\\raggedright",
                  f"{MISSING} = no value: its inputs are missing (see the notes).\\\\"]
        lines += [f"[{i}] {_latex_escape(note)}\\\\" for i, note in enumerate(footnotes, 1)]
    lines += ["\\end{table}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- entry point

def build_tables(results_dir: str | Path, out_dir: str | Path, seed: int = 0,
                 n_resamples: int = 10_000) -> list[Path]:
    """Compute Tables 1-5 from `results_dir` and write table{1..5}.{csv,md,tex} to `out_dir`.

    Every table is computed before any file is written, and each file is written
    atomically, so a bad input file leaves the previous tables untouched.
    """
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    if not results_dir.is_dir():
        raise file_error(results_dir, "results folder not found")
    results = _Results(results_dir)
    if not results.datasets():
        raise file_error(results_dir, "no dataset results found (expected DATASET/backbones, skips, width or slices)")
    settings = StatsSettings(seed=seed, n_resamples=n_resamples)
    tables = [table_skip_methods(results, settings),
              table_nnunet(results, settings, "nnunet_noaug", number=2),
              table_nnunet(results, settings, "nnunet", number=3),
              table_search_cost(results),
              table_models(results)]
    rendered = [(out_dir / f"{t.name}.{ext}", render(t))
                for t in tables
                for ext, render in (("csv", _csv_text), ("md", _markdown_text), ("tex", _latex_text))]
    for path, text in rendered:
        write_text_atomic(path, text)
    return [path for path, _ in rendered]

