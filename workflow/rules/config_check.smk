# Config validation, before the rules are defined: one clear line for the first problem, then
# the schema's defaults filled in. The schema's name lists come from the registry
# (unetscout.names) and the override keys from the settings dataclasses, so nothing here or in
# the schema spells a backbone, method or setting name.

import copy
import dataclasses
import difflib

from snakemake.exceptions import WorkflowError


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
