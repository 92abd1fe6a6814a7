# unetscout: dataset -> 2-D slices -> backbones -> width selection -> IAC search -> pruning study
# -> evaluation -> tables.
# Thin on purpose: configuration, validation, the stage files, and the final targets.

import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

# The registry of names (unetscout.names) and the settings' keys are read from this checkout's
# package, installed or not: the workflow and its code are one version.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))


# The embedded default, unless `--configfile` names another whole configuration (an experiment
# file must not inherit the default's short CPU schedules).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/config_check.smk"


# Rejects misspelt keys and wrong types before anything runs, then fills defaults.
check_config(config, "workflow/schemas/config.schema.yaml",
             workflow.overwrite_configfiles or ["config/config.yaml"])


include: "workflow/rules/common.smk"
include: "workflow/rules/resources.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/backbones.smk"
include: "workflow/rules/width.smk"
include: "workflow/rules/skips.smk"
include: "workflow/rules/prune.smk"
include: "workflow/rules/stats.smk"


localrules:
    all,


rule all:
    input:
        all_targets(),
    default_target: True
