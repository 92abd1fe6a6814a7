"""The registry of names (unetscout.names) is the one list: the schema, the CLI, the code that
implements each name, and the tables and figures all agree with it."""

from __future__ import annotations

import argparse

import pytest
import yaml

from unetscout import names
from unetscout.cli import build_parser
from workflow_helpers import ROOT


def _expanded_schema() -> dict:
    """The config schema as the workflow validates it (its registry placeholders filled in)."""
    namespace: dict = {}
    exec((ROOT / "workflow" / "rules" / "config_check.smk").read_text(), namespace)
    return namespace["expand_schema"](yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text()))


def _choices(command: str, option: str) -> tuple[str, ...]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in subparsers.choices[command]._actions if option in a.option_strings)
    return tuple(action.choices)


def test_the_schema_accepts_exactly_the_registered_names():
    schema = _expanded_schema()["properties"]
    assert schema["backbones"]["items"]["enum"] == list(names.BACKBONES)
    assert schema["skips"]["properties"]["search_backbones"]["items"]["enum"] == list(names.BACKBONES)
    assert schema["skips"]["properties"]["methods"]["items"]["enum"] == list(names.SKIP_METHODS)
    assert schema["skips"]["properties"]["methods"]["default"] == list(names.SKIP_METHODS)
    assert schema["presets"]["items"]["enum"] == list(names.PRESETS)
    assert schema["width"]["properties"]["sweep_preset"]["enum"] == list(names.PRESETS)
    assert schema["device"]["enum"] == list(names.DEVICES)
    assert schema["synthetic"]["properties"]["modality"]["enum"] == list(names.MODALITIES)
    assert set(schema["train"]["properties"]) == set(names.PRESETS)
    assert set(schema["search"]["properties"]) == {"all", *names.CELL_METHODS}


def test_the_schema_knows_every_setting_of_the_trainer_and_the_search():
    import dataclasses

    from unetscout.search.config import SearchConfig
    from unetscout.train.presets import TrainConfig

    defs = _expanded_schema()["$defs"]
    assert set(defs["search_overrides"]["properties"]) == {f.name for f in dataclasses.fields(SearchConfig)}
    assert set(defs["train_overrides"]["properties"]) == {f.name for f in dataclasses.fields(TrainConfig)} - {"preset"}


def test_the_cli_offers_exactly_the_registered_names():
    assert set(_choices("train", "--backbone")) == set(names.ARCHITECTURES)
    assert set(_choices("train", "--preset")) == set(names.PRESETS)
    assert set(_choices("train", "--device")) == set(names.DEVICES)
    assert set(_choices("search", "--method")) == set(names.CELL_METHODS)
    assert set(_choices("train-cell", "--method")) == set(names.CELL_METHODS)
    assert set(_choices("describe-model", "--backbone")) == set(names.ARCHITECTURES)
    assert set(_choices("synth", "--modality")) == set(names.MODALITIES)


def test_every_registered_name_has_its_implementation():
    from unetscout.models.skips import SKIP_MODULES
    from unetscout.models.spec import BACKBONES, ModelSpec
    from unetscout.train.presets import PRESETS

    assert set(SKIP_MODULES) == set(names.SKIP_KINDS)
    assert set(PRESETS) == set(names.PRESETS)
    assert BACKBONES == tuple(names.ARCHITECTURES)
    from unetscout.models.unet import ENCODERS

    from unetscout.models.peers import peer_module

    # each architecture is built by exactly one of models/unet.py, models/encoder_unet.py and models/peers/
    families = [set(ENCODERS), set(names.ENCODER_UNETS), set(names.PEERS)]
    assert sum(len(f) for f in families) == len(set.union(*families)) == len(names.ARCHITECTURES)
    assert set.union(*families) == set(names.ARCHITECTURES)
    for backbone in names.ARCHITECTURES:
        ModelSpec(backbone=backbone, in_channels=1, num_classes=2, image_size=16)
    for backbone in names.PEERS:
        assert isinstance(peer_module(backbone).DIVISOR, int)


@pytest.mark.parametrize("name", names.SKIP_METHODS)
def test_every_skip_method_is_labelled_once_in_tables_and_figures(name):
    from unetscout.stats import figures, tables

    assert tables.METHOD_LABELS[name] == figures.LABELS[name] == names.METHOD_LABELS[name]
    assert list(names.METHOD_LABELS.values()).count(names.METHOD_LABELS[name]) == 1


def test_every_backbone_has_a_label_and_unregistered_names_pass_through():
    labels = [names.backbone_label(b) for b in names.BACKBONES]
    assert all(label and label not in names.BACKBONES for label in labels)
    assert len(set(labels)) == len(labels)
    assert names.backbone_label("cap16") == "cap16"


def test_the_workflow_reads_its_name_lists_from_the_registry():
    # No .smk file or Snakefile spells a list of registered names of its own: two quoted
    # registered names next to each other in a literal ("a", "b"). (A table keyed by name, such
    # as a cost per skip module, is not a list of names.)
    import re

    registered = {*names.BACKBONES, *names.SKIP_KINDS, *names.SKIP_METHODS, *names.PRESETS}
    quoted = "|".join(re.escape(n) for n in sorted(registered, key=len, reverse=True))
    adjacent = re.compile(rf"[\"']({quoted})[\"']\s*,\s*[\"']({quoted})[\"']")
    assert adjacent.search('("attention", "nested", "resattention")')  # what it catches
    assert not adjacent.search('{"attention": 1.05, "nested": 1.65}')
    for path in [ROOT / "Snakefile", *(ROOT / "workflow" / "rules").glob("*.smk")]:
        found = adjacent.search(path.read_text())
        assert found is None, (path, found and found.group(0))
