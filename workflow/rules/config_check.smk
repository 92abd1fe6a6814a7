# Config validation with one clear line per problem, used before the rules are defined.

from snakemake.exceptions import WorkflowError


def check_config(config, schema_path):
    """One clear line for the first problem (snakemake's own message dumps the whole schema)."""
    import jsonschema
    import yaml

    schema = yaml.safe_load(open(schema_path))
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        where = ".".join(str(part) for part in error.absolute_path) or "(top level)"
        raise WorkflowError(f"config error at {where}: {error.message} (see {schema_path})")
