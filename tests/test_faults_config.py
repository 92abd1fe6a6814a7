"""Bad config values stop the dry run with one line naming the file and the key, and every value
that reaches a shell command arrives there as exactly one word (issue 17, "Reliability")."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from workflow_helpers import ROOT, copy_workflow, snakemake, tiny_config

# Shell metacharacters a value might carry: a command separator, spaces, both quote kinds.
NASTY = """x; touch PWNED 'single' "double" """
# Tokens a shell would read as the end of one command and the start of another.
SEPARATORS = {";", ";;", "&", "&&", "|", "||", "\n"}


def _default_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def _dry_run(tmp_path: Path, config: dict, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    workdir = copy_workflow(tmp_path / "wf", config)
    result = snakemake(workdir, "-n", *args)
    return result, result.stdout + result.stderr


def _assert_one_line_error(result: subprocess.CompletedProcess, output: str, where: str, message: str) -> None:
    """Non-zero exit, before any job is planned, with one line: file, key path, what is wrong."""
    assert result.returncode != 0, output[-3000:]
    lines = [line for line in output.splitlines() if "config error" in line]
    assert len(lines) == 1, output[-3000:]
    assert re.fullmatch(rf"config error in \S*config/config\.yaml at {re.escape(where)}: {message}", lines[0]), lines[0]
    assert "Traceback" not in output and "Job stats" not in output, output[-3000:]


def _own_folder(parent: Path, name: str) -> Path:
    """A minimal nnU-Net raw folder, enough for a dry run to plan it."""
    folder = parent / name
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    (folder / "dataset.json").write_text("{}")
    return folder


def _commands(output: str, program: str) -> list[list[str]]:
    """The argument lists of the printed shell commands (`snakemake -n -p`) that run `program`."""
    commands = []
    for line in output.splitlines():
        if line.startswith("Shell command: ") and line.split()[2:4] == ["unetscout", program]:
            command = line.removeprefix("Shell command: ")
            # A punctuation-aware lexer splits unquoted `;`, `&&`, `|` off as tokens of their own.
            lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            assert not SEPARATORS & set(lexer), f"a second command in: {command}"
            commands.append(shlex.split(command))
    assert commands, f"no `unetscout {program}` command printed"
    return commands


def _after(words: list[str], flag: str) -> str:
    return words[words.index(flag) + 1]


def _set_values(words: list[str]) -> list[str]:
    return [words[i + 1] for i, word in enumerate(words) if word == "--set"]


# ---------------------------------------------------------------- defect 1: typed, bounded values

def _set(*path_and_value):
    """A config mutation that sets config[path...] = value, creating dicts on the way."""
    *path, key, value = path_and_value

    def mutate(config: dict) -> None:
        node = config
        for part in path:
            node = node.setdefault(part, {})
        node[key] = value
    return mutate


# Every kind of bad value, checked by check_config itself (what the Snakefile calls): fast.
BAD_VALUES = [
    # negative epochs, in a trained preset and in one that `presets` does not train now
    pytest.param(_set("train", "paper", "epochs", -3), "train.paper.epochs",
                 r"training setting epochs must be > 0, got -3", id="negative-epochs"),
    pytest.param(_set("train", "nnunet", "epochs", -3), "train.nnunet.epochs",
                 r"training setting epochs must be > 0, got -3", id="negative-epochs-untrained-preset"),
    # a string where a number belongs
    pytest.param(_set("train", "paper", "lr", "fast"), "train.paper.lr",
                 r"training setting lr='fast': expected a finite number", id="string-lr"),
    pytest.param(_set("train", "nnunet", "epochs", "many"), "train.nnunet.epochs",
                 r"training setting epochs='many': expected an integer", id="string-epochs-untrained-preset"),
    pytest.param(_set("search", "iac", "epochs", 2.5), "search.iac.epochs",
                 r"search setting epochs='2\.5': expected an integer", id="fractional-epochs"),
    # the bounds of the settings' own validators
    pytest.param(_set("train", "paper", "iterations_per_epoch", 0), "train.paper.iterations_per_epoch",
                 r"training setting iterations_per_epoch must be > 0, got 0", id="zero-iterations"),
    pytest.param(_set("search", "all", "batch_size", 0), "search.all.batch_size",
                 r"search setting batch_size must be > 0, got 0", id="zero-batch-size"),
    pytest.param(_set("search", "iac_lth", "cell_lr", 0), "search.iac_lth.cell_lr",
                 r"search setting cell_lr must be > 0, got 0\.0", id="zero-learning-rate"),
    pytest.param(_set("train", "paper", "aug_mirror_p", 1.5), "train.paper.aug_mirror_p",
                 r"training setting aug_mirror_p is a probability in \[0, 1\], got 1\.5", id="probability-above-1"),
    pytest.param(_set("train", "nnunet", "momentum", 1.0), "train.nnunet.momentum",
                 r"training setting momentum must be < 1, got 1\.0", id="momentum-1"),
    # a conflict is reported at the key the config sets; the message names both settings
    pytest.param(_set("search", "all", "warmup_epochs", 50), "search.all.warmup_epochs",
                 r"search setting warmup_epochs=50 leaves no search epoch within epochs=40", id="warmup-conflict"),
    pytest.param(_set("train", "paper", "aug_scale_min", 2), "train.paper.aug_scale_min",
                 r"training setting aug_scale_min=2\.0 is larger than aug_scale_max=1\.4", id="range-conflict"),
    # a real setting that the workflow owns: every job passes --seed from `seeds`
    pytest.param(_set("train", "paper", "seed", 3), "train.paper.seed",
                 r"the seed comes from the config's `seeds` list .*", id="train-seed-key"),
    pytest.param(_set("search", "all", "seed", 3), "search.all.seed",
                 r"the seed comes from the config's `seeds` list .*", id="search-seed-key"),
    # split fractions in (0, 1), summing to 1
    pytest.param(_set("split", "fractions", [0.5, 0.5, 0.5]), "split.fractions",
                 r"--fractions: need three positive numbers \(train val test\) summing to 1, got 0\.5 0\.5 0\.5",
                 id="fractions-sum-1.5"),
    pytest.param(_set("split", "fractions", [1.0, 0.2, 0.2]), "split.fractions.0",
                 r"1\.0 is greater than or equal to the maximum of 1 \(see \S+\)", id="fraction-1"),
    # seeds that the generators accept, lists without repeats
    pytest.param(_set("synthetic", "seed", -1), "synthetic.seed",
                 r"-1 is less than the minimum of 0 \(see \S+\)", id="negative-seed"),
    pytest.param(_set("seeds", [0, 0]), "seeds", r"\[0, 0\] has non-unique elements \(see \S+\)",
                 id="repeated-seeds"),
    # datasets: a registry name (the nearest one suggested), "synthetic", or an existing folder
    pytest.param(_set("datasets", ["acdd"]), "datasets.0",
                 r"unknown dataset 'acdd'; did you mean 'acdc'\? .*", id="unknown-dataset-hint"),
    pytest.param(_set("datasets", ["synthetic", "nosuchdata"]), "datasets.1",
                 r"unknown dataset 'nosuchdata' \(a registry name .*\)", id="unknown-dataset"),
    pytest.param(_set("datasets", ["data/missing"]), "datasets.0",
                 r"folder 'data/missing' does not exist .*", id="missing-folder"),
    pytest.param(_set("fetch", "from", {"bratz2021": "placed"}), "fetch.from.bratz2021",
                 r"unknown dataset 'bratz2021'; did you mean 'brats2021'\? .*", id="unknown-placed-dataset"),
    pytest.param(_set("fetch", "from", {"acdc": "placed"}), "fetch.from.acdc",
                 r"acdc is downloaded for you; fetch\.from is only for the registration-only datasets \(brats2021, echonet_dynamic\)",
                 id="placed-downloadable-dataset"),
    # encoder U-Nets: ImageNet weights only where there is an encoder
    pytest.param(_set("models", "plain", "encoder_weights", "imagenet"), "models.plain.encoder_weights",
                 r"plain has no pretrained encoder; encoder_weights is for vgg16, resnet50, .*", id="weights-for-plain"),
    pytest.param(_set("models", "resnet50", "encoder_weights", "coco"), "models.resnet50.encoder_weights",
                 r"'coco' is not one of \['none', 'imagenet'\] \(see \S+\)", id="unknown-weights"),
    pytest.param(_set("grid", [{"backbones": ["resnet50"], "presets": ["paper"]}]), "grid.0",
                 r"'seeds' is a required property \(see \S+\)", id="grid-block-without-seeds"),
    # a value carrying a shell command (no setting takes free text)
    pytest.param(_set("search", "all", "tau_rule", NASTY), "search.all.tau_rule",
                 rf"search setting tau_rule={re.escape(repr(NASTY.strip()))}: choose one of relative, absolute",
                 id="shell-command-in-a-search-override"),
]
# One of each defect the issue measured, through a real `snakemake -n` (a few seconds each).
DRY_RUN_CASES = [case for case in BAD_VALUES if case.id in {
    "negative-epochs-untrained-preset", "string-epochs-untrained-preset", "train-seed-key",
    "fractions-sum-1.5", "unknown-dataset"}]


def _check_config(config: dict) -> str:
    """check_config's one-line error for `config` (config_check.smk run as the Snakefile runs it)."""
    from snakemake.exceptions import WorkflowError

    namespace: dict = {}
    exec((ROOT / "workflow" / "rules" / "config_check.smk").read_text(), namespace)
    with pytest.raises(WorkflowError) as raised:
        namespace["check_config"](config, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"),
                                  ["config/config.yaml"])
    return str(raised.value)


@pytest.mark.parametrize("mutate, where, message", BAD_VALUES)
def test_a_bad_value_is_one_line_naming_the_key(mutate, where, message):
    config = _default_config()
    mutate(config)
    line = _check_config(config)
    assert "\n" not in line.strip()
    assert re.fullmatch(rf"config error in config/config\.yaml at {re.escape(where)}: {message}", line.strip()), line


@pytest.mark.parametrize("mutate, where, message", DRY_RUN_CASES)
def test_a_bad_value_stops_the_dry_run_in_one_line(tmp_path, mutate, where, message):
    config = _default_config()
    mutate(config)
    result, output = _dry_run(tmp_path, config)
    _assert_one_line_error(result, output, where, message)


def test_an_unknown_key_in_an_untrained_presets_overrides_names_the_nearest():
    config = _default_config()
    config["train"]["nnunet"] = {"epocs": 3}
    assert _check_config(config) == ("config error in config/config.yaml: unknown key 'epocs' under train.nnunet; "
                                     "did you mean 'epochs'?")


def test_valid_values_pass():
    """The checks merge the layers as the rules do (search.all, then the method's own) and read
    values as the CLI does: a YAML 1e-3 is a string, a short search with a short warm-up is fine."""
    namespace: dict = {}
    exec((ROOT / "workflow" / "rules" / "config_check.smk").read_text(), namespace)
    for config in (_default_config(), tiny_config()):
        config["train"]["nnunet"] = {"lr": "1e-3", "augment": "false", "momentum": 0.9}
        config["search"]["iac_lth"] = {"epochs": 5, "warmup_epochs": 4}
        config["fetch"]["from"] = {"brats2021": "resources/placed/brats2021"}
        namespace["check_config"](config, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"),
                                  ["config/config.yaml"])


# ---------------------------------------------------------------- defect 2: quoted shell values

def test_values_reach_the_shell_as_one_word_each(tmp_path):
    """A cache folder and a dataset folder named with `;`, spaces and both quote kinds, and
    overrides with spaces (the settings strip them, as the CLI does): each is one argument of its
    command, exactly as written, and no second command appears. Unquoted, `--set lr= 0.002`
    would be `--set lr=` and a stray `0.002`."""
    own = _own_folder(tmp_path / "data", NASTY.strip())
    config = _default_config()
    config["datasets"] = [str(own), "task04_hippocampus"]
    config["fetch"]["cache"] = NASTY
    config["train"]["paper"]["lr"] = " 0.002"
    config["search"]["all"]["cell_lr"] = "0.02 "
    config["prune"]["train"]["lr"] = " 0.003"  # the Lean U-Net study's own, over the preset's
    result, output = _dry_run(tmp_path, config, "-p")
    assert result.returncode == 0, output[-3000:]
    (fetch,) = _commands(output, "fetch")
    assert _after(fetch, "--cache") == NASTY
    (slices, _) = sorted(_commands(output, "slices"), key=lambda words: words[2] != str(own))
    assert slices[2] == str(own)
    assert _after(slices, "--out") == f"results/{own.name}/slices"
    assert any(_after(words, "--out") == f"results/{own.name}/width/scores.tsv"
               for words in _commands(output, "score-widths"))
    study_commands = _commands(output, "prune")
    for words in _commands(output, "train"):
        if "/prune_study/" in _after(words, "--out"):
            study_commands.append(words)
        else:
            assert "lr= 0.002" in _set_values(words), words
    assert len(study_commands) > len(_commands(output, "prune"))
    for words in study_commands:
        assert "lr= 0.003" in _set_values(words), words
    for words in _commands(output, "search"):
        assert "cell_lr=0.02 " in _set_values(words), words


def test_a_shell_command_in_an_override_is_rejected_not_run(tmp_path):
    """No setting takes free text, so a value carrying a command fails the typed check in one
    line before anything runs; had it passed, it would still have been one quoted word."""
    config = _default_config()
    config["train"]["paper"]["optimizer"] = NASTY
    result, output = _dry_run(tmp_path, config, "-p")
    _assert_one_line_error(result, output, "train.paper.optimizer",
                           rf"training setting optimizer={re.escape(repr(NASTY.strip()))} is not one of adam, sgd")
    assert not (tmp_path / "wf" / "PWNED").exists()


def test_one_head_backbones_plan_under_a_deep_supervision_preset():
    """They train it without deep supervision (train/loop.py says so at run time)."""
    config = _default_config()
    config["grid"] = [{"backbones": ["mobilenetv3_large", "unext"], "presets": ["nnunet"], "seeds": [0]}]
    namespace: dict = {}
    exec((ROOT / "workflow" / "rules" / "config_check.smk").read_text(), namespace)
    namespace["check_config"](config, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"),
                              ["config/config.yaml"])  # no WorkflowError
    assert namespace["grid_cells"](config) == [("mobilenetv3_large", "nnunet", 0), ("unext", "nnunet", 0)]
