"""docs/methods.md and docs/search_calibration.md say what the code does: the Scope lists equal the
registries and the workflow's rules, and every default a doc quotes for a search or pruning
setting is the settings class's default.

The expected sets come from the code (registries, the rule definitions in the .smk files, the
dataclasses' field defaults); the doc side is read with a few fixed text patterns, and each test
also requires that the patterns found what they must (so a reworded doc cannot pass empty)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from unetscout.data.registry import REGISTRY
from unetscout.names import BACKBONES, CELL_METHODS, PRESETS, PRUNE_CRITERIA, SKIP_KINDS
from unetscout.prune.settings import PruneSettings
from unetscout.search.config import SearchConfig

ROOT = Path(__file__).resolve().parents[1]
METHODS = ROOT / "docs" / "methods.md"
CALIBRATION = ROOT / "docs" / "search_calibration.md"
NUMBER = r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?"
# How docs quote a setting's default: "`name` 0.01" / "`name` (0.5)", "`name = 1e-4`", and a
# table row "| `name` (what it is) | 200 |".
QUOTES = (re.compile(rf"`(\w+)`\s+\(?({NUMBER})(?![\w.])"), re.compile(rf"`(\w+) = ({NUMBER})`"),
          re.compile(rf"^\| `(\w+)`[^|]*\| *({NUMBER})(?![\w.])", re.MULTILINE))


def section(text: str, heading: str) -> str:
    """The text under `heading` (a '## ' or '### ' line) up to the next heading of its level or above."""
    level = heading.split(" ")[0]
    start = text.index(heading + "\n") + len(heading) + 1
    ends = [m.start() for m in re.finditer(rf"^#{{1,{len(level)}}} ", text[start:], re.MULTILINE)]
    return text[start:start + ends[0]] if ends else text[start:]


def scope_lists() -> dict[str, set[str]]:
    scope = section(METHODS.read_text(), "## Scope")
    bullets = re.findall(r"^- ([^:\n]+): (.*?)(?=^- |^\n|\Z)", scope, re.MULTILINE | re.DOTALL)
    return {label: set(re.findall(r"`([a-z0-9_]+)`", body)) for label, body in bullets}


def workflow_rules() -> set[str]:
    files = [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
    rules = {name for f in files for name in re.findall(r"^rule (\w+):", f.read_text(), re.MULTILINE)}
    return rules - {"all"}   # the default target, not a stage


def test_scope_lists_are_the_registries_and_the_rules():
    lists = scope_lists()
    assert lists == {
        "Datasets": set(REGISTRY),
        "Backbones": set(BACKBONES),
        "Training presets": set(PRESETS),
        "Skip modules": set(SKIP_KINDS) | set(CELL_METHODS),
        "Pruning criteria": set(PRUNE_CRITERIA),
        "Workflow rules": workflow_rules(),
    }
    assert len(workflow_rules()) >= 15   # the rule pattern still finds the rules


def test_scope_does_not_call_a_registered_name_missing():
    scope = section(METHODS.read_text(), "## Scope")
    missing = scope[scope.index("Not implemented"):]
    registered = set().union(*scope_lists().values())
    assert not set(re.findall(r"`([a-z0-9_]+)`", missing)) & registered
    assert not re.search(r"\b(image datasets|encoder backbones|peer|pruning study)\b", missing)


def quoted_defaults(text: str, fields: set[str]) -> list[tuple[str, float]]:
    return [(name, float(value)) for pattern in QUOTES for name, value in pattern.findall(text) if name in fields]


def defaults(settings: type) -> dict[str, float]:
    return {f.name: f.default for f in dataclasses.fields(settings)
            if isinstance(f.default, (int, float)) and not isinstance(f.default, bool)}


SEARCH_DOCS = [section(METHODS.read_text(), "## Implantable adaptive cells"), section(CALIBRATION.read_text(),
                                                                                     "## The defaults")]
PRUNE_DOCS = [section(METHODS.read_text(), "## Channel pruning")]


@pytest.mark.parametrize("settings, docs, must_quote", [
    (SearchConfig, SEARCH_DOCS, {"epochs", "warmup_epochs", "cell_lr", "cell_lr_min", "arch_lr", "batch_size",
                                 "partial_channels", "edge_cap", "seed", "tau0", "tau0_absolute", "gamma",
                                 "prune_std_factor"}),
    (PruneSettings, PRUNE_DOCS, {"collapse_fraction"}),
])
def test_quoted_defaults_are_the_settings_defaults(settings, docs, must_quote):
    expected = defaults(settings)
    quoted = [q for text in docs for q in quoted_defaults(text, set(expected))]
    wrong = [(name, value, expected[name]) for name, value in quoted if value != pytest.approx(expected[name])]
    assert not wrong, f"docs quote these defaults of {settings.__name__} (name, doc, code): {wrong}"
    assert must_quote <= {name for name, _ in quoted}


def test_the_quote_patterns_catch_a_wrong_default():
    text = "| `epochs` (epoch cap) | 150 |\nwith `tau0 = 0.25` and `cell_lr` 0.2;"
    assert quoted_defaults(text, set(defaults(SearchConfig))) == [("cell_lr", 0.2), ("tau0", 0.25), ("epochs", 150.0)]
