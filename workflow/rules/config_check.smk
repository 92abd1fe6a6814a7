# Config validation, before the rules are defined: one clear line for the first problem, then
# the schema's defaults filled in. The schema's name lists come from the registry
# (unetscout.names) and the override keys from the settings dataclasses, so nothing here or in
# the schema spells a backbone, method or setting name. What JSON Schema cannot say (a sum of
# fractions, a dataset name, the settings' own bounds) is checked after it by the code that
# owns each rule (data/splits.py, data/registry.py, train/presets.py, search/config.py), so a
# dry run stops on every value a job would stop on.
#
# Plain Python, no Snakemake directives: tests/test_names.py executes this file on its own.

import copy
import dataclasses
import difflib
from pathlib import Path

from snakemake.exceptions import WorkflowError

SYNTHETIC = "synthetic"  # the dataset name that means the generator, not the registry


class ConfigProblem(Exception):
    """A value the schema lets through but a job would reject; `where` is its key path."""

    def __init__(self, where: tuple, message: str):
        super().__init__(message)
        self.where = where


def _settings_keys(kind):
    """The keys a `--set` override of `unetscout train` / `unetscout search` accepts."""
    from unetscout.search.config import SearchConfig
    from unetscout.train.presets import TrainConfig

    fields = dataclasses.fields(TrainConfig if kind == "train" else SearchConfig)
    return [f.name for f in fields if f.name != "preset"]  # a preset's overrides cannot rename it


def expand_schema(node):
    """The schema with its registry placeholders (x-names, x-default-names, x-keys / x-each,
    x-settings) replaced by plain JSON Schema."""
    from unetscout.names import SCHEMA_NAMES

    if isinstance(node, list):
        return [expand_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: expand_schema(value) for key, value in node.items()}
    if "x-names" in node:
        node["enum"] = list(SCHEMA_NAMES[node.pop("x-names")])
    if "x-default-names" in node:
        node["default"] = list(SCHEMA_NAMES[node.pop("x-default-names")])
    if "x-keys" in node:
        each = node.pop("x-each")
        node.setdefault("properties", {}).update({name: copy.deepcopy(each) for name in SCHEMA_NAMES[node.pop("x-keys")]})
    if "x-settings" in node:
        value = {"type": ["number", "string", "boolean"]}
        node["properties"] = {key: dict(value) for key in _settings_keys(node.pop("x-settings"))}
    return node


def _resolve(schema, node):
    while "$ref" in node:
        target = schema
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _unknown_key(config, schema, node, where=()):
    """(path, key, nearest valid key) of the first key the schema does not know, or None."""
    node = _resolve(schema, node)
    if not isinstance(config, dict) or node.get("type") != "object":
        return None
    known = node.get("properties", {})
    for key, value in config.items():
        if key in known:
            found = _unknown_key(value, schema, known[key], (*where, key))
            if found:
                return found
        elif node.get("additionalProperties") is False:
            nearest = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.0)
            return where, key, nearest[0] if nearest else None
    return None


def _validator_with_defaults(schema):
    """A Draft 2020-12 validator that also fills each property's default (the documented
    jsonschema recipe; what snakemake.utils.validate does, on our expanded schema)."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    check_properties = base.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, node):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, properties, instance, node)

    return jsonschema.validators.extend(base, {"properties": properties_with_defaults})(schema)


def check_config(config, schema_path, config_files):
    """Validate `config` in place (defaults filled) or stop with one line naming the key."""
    import jsonschema
    import yaml

    schema = expand_schema(yaml.safe_load(open(schema_path)))
    source = ", ".join(str(f) for f in config_files)
    unknown = _unknown_key(config, schema, schema)
    if unknown is not None:
        where, key, nearest = unknown
        inside = ".".join(map(str, where)) or "the top level"
        hint = f"; did you mean {nearest!r}?" if nearest else ""
        raise WorkflowError(f"config error in {source}: unknown key {key!r} under {inside}{hint}")
    error = jsonschema.exceptions.best_match(_validator_with_defaults(schema).iter_errors(config))
    if error is not None:
        where = ".".join(str(part) for part in error.absolute_path) or "(top level)"
        raise WorkflowError(f"config error in {source} at {where}: {error.message} (see {schema_path})")
    try:
        check_values(config)
    except ConfigProblem as problem:
        where = ".".join(str(part) for part in problem.where)
        raise WorkflowError(f"config error in {source} at {where}: {problem}") from None


def check_values(config: dict) -> None:
    """The checks after the schema's (on a config it accepted, defaults filled): a ConfigProblem
    for the first value a job would reject."""
    _check_fractions(config["split"]["fractions"])
    dataset_entries(config["datasets"])
    _check_placed(config["fetch"]["from"])
    _check_train_overrides(config["train"])
    _check_search_overrides(config["search"])
    _check_encoder_unets(config)
    _check_imagenet_weights(config)
    _check_skip_hosts(config)
    _check_prune(config)


def _check_fractions(fractions: list) -> None:
    from unetscout.data.splits import check_fractions
    from unetscout.errors import UnetscoutError

    try:
        check_fractions(fractions)  # what `unetscout slices --fractions` checks
    except UnetscoutError as err:
        raise ConfigProblem(("split", "fractions"), str(err)) from None


# ---------------------------------------------------------------- datasets

def _registry() -> dict:
    """unetscout.data.registry.REGISTRY, imported only when the config names a registry dataset:
    that module pulls in numpy and nibabel, which a synthetic-only dry run does without."""
    from unetscout.data.registry import REGISTRY

    return REGISTRY


def _registry_source(where: tuple, name: str):
    """The registry entry `unetscout fetch NAME` would use, or a ConfigProblem with the nearest name."""
    registry = _registry()
    source = registry.get(name.lower())  # `unetscout fetch` looks names up in lower case
    if source is None:
        nearest = difflib.get_close_matches(name.lower(), [*registry, SYNTHETIC], n=1)
        hint = f"; did you mean {nearest[0]!r}?" if nearest else ""
        raise ConfigProblem(where, f"unknown dataset {name!r}{hint} (a registry name from `unetscout fetch "
                                   f"--list`, {SYNTHETIC!r}, or the path of an nnU-Net raw folder)")
    return source


def dataset_entries(items: list) -> dict:
    """Map dataset name -> where its raw folder comes from: the generator, the registry, or a
    path; a ConfigProblem for an entry that is none of them (it would fail only in its job)."""
    entries = {}
    for index, item in enumerate(items):
        where = ("datasets", index)
        if "/" in item or Path(item).is_dir():
            folder = Path(item).resolve()
            if not folder.is_dir():  # nothing in the workflow makes a user's folder, so no plan could start
                raise ConfigProblem(where, f"folder {item!r} does not exist (a path names your own "
                                           "nnU-Net raw folder)")
            name, source = folder.name, {"path": str(folder)}
        elif item == SYNTHETIC:
            name, source = item, {"synthetic": True}
        else:
            _registry_source(where, item)
            name, source = item, {"registry": item}
        if name in entries:
            raise ConfigProblem(where, f"two entries are both named {name!r}; rename one folder")
        entries[name] = source
    return entries


def _check_placed(placed: dict) -> None:
    """fetch.from names registration-only registry datasets: `unetscout fetch` refuses --from
    for the others (they are downloaded)."""
    for name in placed:
        source = _registry_source(("fetch", "from", name), name)
        if not source.requires_from:
            only = ", ".join(s.name for s in _registry().values() if s.requires_from)
            raise ConfigProblem(("fetch", "from", name), f"{name} is downloaded for you; fetch.from is only "
                                                         f"for the registration-only datasets ({only})")


# ---------------------------------------------------------------- the grid

def grid_blocks(config: dict) -> list[tuple[tuple, dict]]:
    """(key path, block) of every (backbones x presets x seeds) block: `grid`'s, or the one the
    top-level `backbones`, `presets` and `seeds` make."""
    if config.get("grid"):
        return [(("grid", i), block) for i, block in enumerate(config["grid"])]
    return [((), {key: config[key] for key in ("backbones", "presets", "seeds")})]


def grid_cells(config: dict) -> list[tuple[str, str, int]]:
    """Every (backbone, preset, seed) the config trains, once each, in the config's order."""
    cells = {}
    for _, block in grid_blocks(config):
        for backbone in block["backbones"]:
            for preset in block["presets"]:
                for seed in block["seeds"]:
                    cells[(backbone, preset, seed)] = None
    return list(cells)


def _check_encoder_unets(config: dict) -> None:
    """ImageNet weights only where there is an encoder (a single-output backbone under a preset
    with deep supervision trains it without: train/loop.py's `single_output_config`)."""
    from unetscout.names import ENCODER_UNETS

    for name, settings in config["models"].items():
        if settings.get("encoder_weights", "none") != "none" and name not in ENCODER_UNETS:
            raise ConfigProblem(("models", name, "encoder_weights"),
                                f"{name} has no pretrained encoder; encoder_weights is for {', '.join(ENCODER_UNETS)}")


def _check_imagenet_weights(config: dict) -> None:
    """The ImageNet weights of every trained encoder U-Net that starts from them are in
    weights_cache: its training job reads them offline, after the synth, slices and width jobs,
    so a missing file would fail hours into a run. The file is where models/encoder_unet.py
    finds it (imported only then: it pulls in torch and smp)."""
    from unetscout.names import IMAGENET

    trained = {backbone for backbone, _, _ in grid_cells(config)}
    pretrained = [name for name, settings in config["models"].items()
                  if name in trained and settings.get("encoder_weights") == IMAGENET]
    if not pretrained:
        return
    from unetscout.models.encoder_unet import fetch_weights_command, imagenet_weights_file

    for name in pretrained:
        weights = imagenet_weights_file(name, config["weights_cache"])
        if not weights.is_file():
            raise ConfigProblem(("models", name, "encoder_weights"),
                                f"{IMAGENET} needs {weights}, which is missing; on a machine with internet run "
                                f"`{fetch_weights_command(name, config['weights_cache'])}` (weights_cache) "
                                "and copy that folder here")


def _check_skip_hosts(config: dict) -> None:
    """Skip methods need the skip hook; a lightweight peer's skips are part of its design."""
    from unetscout.names import ARCHITECTURES

    for index, name in enumerate(config["skips"]["search_backbones"]):
        if name in ARCHITECTURES and not ARCHITECTURES[name].skip_hook:
            hosts = ", ".join(b for b, a in ARCHITECTURES.items() if a.skip_hook)
            raise ConfigProblem(("skips", "search_backbones", index),
                                f"{name} is its paper's fixed design, with no skip hook: skip methods are implanted "
                                f"into {hosts} or xtiny")


# ---------------------------------------------------------------- training and search settings

def _check_settings(resolve, layers: list) -> None:
    """Run the settings' own validator, `resolve` (resolve_config / resolve_search_config), on the
    override `layers` [(key path, overrides)], later layers winning as in the rules. A problem is
    reported at the key that holds the first setting it names: the layer whose value won."""
    from unetscout.train.presets import SettingError

    for where, overrides in layers:
        if "seed" in overrides:  # every job passes --seed from `seeds`; the CLI rejects a second one
            raise ConfigProblem((*where, "seed"), "the seed comes from the config's `seeds` list "
                                                  "(each job passes --seed); remove this key")
    merged = {}
    for _, overrides in layers:
        merged.update(overrides)
    try:
        # strings, as the rules pass them (`--set key=value`)
        resolve({key: str(value) for key, value in merged.items()})
    except SettingError as err:
        for setting in err.settings:
            for where, overrides in reversed(layers):
                if setting in overrides:
                    raise ConfigProblem((*where, setting), str(err)) from None
        raise ConfigProblem(layers[-1][0], str(err)) from None


def _check_train_overrides(train: dict) -> None:
    """Every preset's overrides, whether or not `presets` trains it now."""
    from functools import partial

    from unetscout.train.presets import resolve_config

    for preset, overrides in train.items():
        _check_settings(partial(resolve_config, preset), [(("train", preset), overrides)])


def _check_search_overrides(search: dict) -> None:
    """Each cell method's settings: `search.all`, then the method's own, as search_overrides merges them."""
    from unetscout.names import CELL_METHODS
    from unetscout.search.config import resolve_search_config

    for method in CELL_METHODS:
        _check_settings(resolve_search_config, [(("search", "all"), search.get("all", {})),
                                                (("search", method), search.get(method, {}))])


def _check_prune(config: dict) -> None:
    """The study's training settings as its jobs merge them (train.<preset>, then prune.train),
    and retrained architectures only of criteria that are pruned."""
    from functools import partial

    from unetscout.train.presets import resolve_config

    study = config["prune"]
    _check_settings(partial(resolve_config, study["preset"]),
                    [(("train", study["preset"]), config["train"].get(study["preset"], {})),
                     (("prune", "train"), study["train"])])
    missing = [c for c in study["retrain"] if c not in study["criteria"]]
    if missing:
        raise ConfigProblem(("prune", "retrain"), f"{', '.join(missing)} retrains architectures that only "
                                                  f"pruning by it gives; add it to prune.criteria")
