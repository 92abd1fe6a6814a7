"""The papers' Tables 1-6 (docs/methods.md#tables), rebuilt from the result files alone.

Each table is written as CSV (raw numbers), Markdown and LaTeX. Inputs are found in the
fixed results layout, among the runs a manifest declares (stats/manifest.py; the workflow
writes it from the config) or, by hand, among every run of a results folder. A cell whose inputs
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

One module per table (skip_methods: Table 1, nnunet: Tables 2/3, search_cost: Table 4,
model_sizes: Table 5, pruning: Table 6, width_picks: the width selection's agreement and stability) over shared ones: results (discovery), paired (paired deltas and
their summaries), floor (floor-bound IAC-LTH searches), format (cell text), render
(Column / Table and the CSV, Markdown and LaTeX texts).
"""

from __future__ import annotations

from pathlib import Path

from unetscout.atomic import write_text_atomic
from unetscout.errors import file_error
# Re-exported: callers check that the tables use the registry's own method list and labels.
from unetscout.names import METHOD_LABELS, SKIP_METHODS
from unetscout.stats.tables.floor import FLOOR_SENTENCE
from unetscout.stats.tables.model_sizes import table_models
from unetscout.stats.tables.nnunet import table_nnunet
from unetscout.stats.tables.paired import StatsSettings
from unetscout.stats.tables.pruning import table_pruning
from unetscout.stats.tables.render import csv_text, latex_text, markdown_text
from unetscout.stats.tables.results import Results
from unetscout.stats.tables.search_cost import table_search_cost
from unetscout.stats.tables.skip_methods import table_skip_methods
from unetscout.stats.tables.width_picks import table_width_picks

__all__ = ["FLOOR_SENTENCE", "METHOD_LABELS", "SKIP_METHODS", "StatsSettings", "build_tables"]


def build_tables(results: Results | str | Path, out_dir: str | Path, seed: int = 0,
                 n_resamples: int = 10_000) -> list[Path]:
    """Compute Tables 1-6 and the width picks from `results` (a Results view, or a folder: all
    of it) and write table{1..6} and width_picks .{csv,md,tex} to `out_dir`.

    Every table is computed before any file is written, and each file is written
    atomically, so a bad input file leaves the previous tables untouched.
    """
    results = Results.of(results)
    out_dir = Path(out_dir)
    if not results.datasets():
        raise file_error(results.root, "no dataset results found (expected DATASET/backbones, skips, width or slices)")
    settings = StatsSettings(seed=seed, n_resamples=n_resamples)
    tables = [table_skip_methods(results, settings),
              table_nnunet(results, settings, "nnunet_noaug", number=2),
              table_nnunet(results, settings, "nnunet", number=3),
              table_search_cost(results),
              table_models(results, settings),
              table_pruning(results),
              table_width_picks(results)]
    rendered = [(out_dir / f"{t.name}.{ext}", render(t))
                for t in tables
                for ext, render in (("csv", csv_text), ("md", markdown_text), ("tex", latex_text))]
    for path, text in rendered:
        write_text_atomic(path, text)
    return [path for path, _ in rendered]
