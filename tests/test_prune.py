"""`unetscout prune` end to end on a tiny store: the log, the snapshots, the unbiased pick, the
retrained and scaled baselines, resume after SIGKILL / SIGTERM, and the refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch

from test_train import DRIVER, assert_same_weights, make_store, store_of, weights
from unetscout.cli import main
from unetscout.evaluate.predict import load_model
from unetscout.models.describe import count_parameters
from unetscout.models.spec import ModelSpec
from unetscout.models.unet import build_model
from unetscout.models.widths import UNetWidths
from unetscout.prune import loop
from unetscout.prune.loop import prune
from unetscout.prune.settings import CHECKPOINT_FRACTIONS, CRITERIA, PruneSettings
from unetscout.runs import load_checkpoint, save_checkpoint
from unetscout.train.presets import resolve_config
from unetscout.train.validate import patient_dice

# 32 px: 4 stages, widths doubling from 2 (2, 4, 8, 16): 14 convs, 88 channels, 10 removed a step.
PER_STEP = 10
SETTINGS = {"top_width": 2, "recovery_epochs": 1, "channels_per_step": PER_STEP}
TRAIN = {"iterations_per_epoch": "2", "batch_size": "6", "val_batch_size": "6", "num_workers": "0"}
START = UNetWidths.doubling(2, 4, 2)


def run_prune(slices: Path, out: Path, criterion: str, **changes) -> Path:
    settings = PruneSettings(criterion=criterion, **{**SETTINGS, **changes})
    return prune(slices, out, resolve_config("nnunet", TRAIN), settings, device="cpu")


def read_log(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "log.tsv", sep="\t", keep_default_na=False)


@pytest.fixture(scope="module")
def slices(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("prune") / "slices")


@pytest.fixture(scope="module")
def runs(slices) -> dict[str, Path]:
    return {c: run_prune(slices, slices.parent / c, c) for c in CRITERIA}


@pytest.mark.parametrize("criterion", CRITERIA)
def test_the_log_follows_every_removal(runs, criterion):
    log = read_log(runs[criterion])
    assert list(log["step"]) == list(range(len(log))) and len(log) >= 3
    widths = START.layer_widths()
    assert json.loads(log["widths"][0]) == widths and log["channels"][0] == START.total_channels() == 88
    for i, row in log.iterrows():
        layers = json.loads(row["widths"])
        assert layers == widths, f"step {i}: the widths logged are not the removals logged before"
        assert row["channels"] == sum(layers.values())
        assert row["fraction"] == pytest.approx(row["channels"] / 88, abs=1e-5)
        if i < len(log) - 1:
            removed = Counter(item.split(":")[0] for item in row["removed"].split())
            # PER_STEP a step, fewer only when the last layers reach their one channel.
            assert sum(removed.values()) == min(PER_STEP, row["channels"] - 14)
            widths = {name: w - removed[name] for name, w in widths.items()}
            assert min(widths.values()) >= 1
    assert log["removed"].iloc[-1] == ""
    assert all(0 <= d <= 1 for d in log["val_dice"]) and all(0 <= d <= 1 for d in log["test_dice"])


@pytest.mark.parametrize("criterion", CRITERIA)
def test_snapshots_are_the_first_steps_at_or_below_each_share(runs, criterion):
    out = runs[criterion]
    log = read_log(out)
    done = json.loads((out / "done.json").read_text())
    assert done["snapshots"] == ["at75", "at50", "at25"]
    for fraction in CHECKPOINT_FRACTIONS:
        folder = out / f"at{round(fraction * 100)}"
        spec, model = load_model(folder)
        step = load_checkpoint(folder / "best.pt")["step"]
        first = log[log["fraction"] <= fraction + 1e-9]["step"].min()
        assert step == first
        assert UNetWidths.from_json(spec.widths).layer_widths() == json.loads(log["widths"][step])
        # Physically smaller: the network's own count, and a fresh build's, are the logged one.
        assert count_parameters(model) == count_parameters(build_model(spec)) == log["params"][step]


@pytest.mark.parametrize("criterion", CRITERIA)
def test_the_unbiased_pick_is_the_best_validation_step_and_scores_as_logged(runs, slices, criterion):
    out = runs[criterion]
    log = read_log(out)
    done = json.loads((out / "done.json").read_text())
    best_step = int(log["val_dice"].idxmax())
    assert done["best_val_step"] == best_step
    assert done["max_test_dice"] == pytest.approx(log["test_dice"].max(), abs=1e-5)
    assert done["best_val_test_dice"] == pytest.approx(log["test_dice"][best_step], abs=1e-5)
    _, model = load_model(out)
    score, _ = patient_dice(model.eval(), store_of(slices), "val", torch.device("cpu"), 6)
    assert score == pytest.approx(log["val_dice"][best_step], abs=1e-5)


def test_widest_block_takes_the_widest_stage_first(runs):
    log = read_log(runs["widest_block"])
    # The bottleneck block (two convs of 16: 32 channels) is the widest; after the first step's
    # ten removals it still has 22, more than any other block (16), so all ten fall in it.
    removed = Counter(item.split(":")[0] for item in log["removed"][0].split())
    assert set(removed) <= {"enc3.0", "enc3.1"} and sum(removed.values()) == PER_STEP
    widths = json.loads(log["widths"][1])
    assert widths["enc3.0"] + widths["enc3.1"] == 32 - PER_STEP


def test_retrained_and_scaled_baselines_are_built_from_widths(runs, slices, tmp_path):
    pruned = runs["stamp"] / "at50"
    assert main(["train", str(slices), "--out", str(tmp_path / "retrained"), "--backbone", "plain",
                 "--widths-from", str(pruned / "model.json"), "--preset", "nnunet", "--device", "cpu",
                 "--set", "epochs=1", "--set", "iterations_per_epoch=1", "--set", "batch_size=6"]) == 0
    spec, model = load_model(tmp_path / "retrained")
    assert spec.widths == ModelSpec.load(pruned / "model.json").widths
    original = weights(pruned / "best.pt")
    assert count_parameters(model) == sum(t.numel() for k, t in original.items() if "running" not in k)
    assert not torch.equal(model.state_dict()["encoder.stages.0.0.0.weight"], original["encoder.stages.0.0.0.weight"])

    assert main(["train", str(slices), "--out", str(tmp_path / "scaled"), "--backbone", "plain", "--top-width", "4",
                 "--width-scale", "0.5", "--preset", "nnunet", "--device", "cpu",
                 "--set", "epochs=1", "--set", "iterations_per_epoch=1", "--set", "batch_size=6"]) == 0
    # Half of 4, 8, 16, 32 is the doubling from 2.
    assert UNetWidths.from_json(ModelSpec.load(tmp_path / "scaled" / "model.json").widths) == START


# -- refusals: one line, exit 2, nothing written --------------------------------------------------------------

def refused(argv: list[str], out: Path, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("unetscout prune: host ")]
    assert len(lines) == 1 and lines[0].startswith("unetscout: error:"), err
    assert not out.exists()
    return lines[0]


def prune_argv(slices: Path, out: Path, *extra: str) -> list[str]:
    return ["prune", str(slices), "--out", str(out), "--preset", "nnunet", "--device", "cpu", *extra]


def test_an_unknown_criterion_is_refused(slices, tmp_path, capsys):
    line = refused(prune_argv(slices, tmp_path / "out", "--criterion", "magnitude"), tmp_path / "out", capsys)
    assert "magnitude" in line and all(c in line for c in CRITERIA)


@pytest.mark.parametrize("width", ["0", "-2"])
def test_a_top_width_below_one_is_refused(slices, tmp_path, capsys, width):
    line = refused(prune_argv(slices, tmp_path / "out", "--criterion", "stamp", "--top-width", width),
                   tmp_path / "out", capsys)
    assert "top_width must be >= 1" in line


def test_a_checkpoint_of_another_architecture_is_refused_naming_it(slices, tmp_path, capsys):
    other = tmp_path / "lean"
    other.mkdir()
    spec = ModelSpec("lean", 2, 3, 32, width=4)
    spec.save(other / "model.json")
    save_checkpoint(other / "best.pt", {"model": build_model(spec).state_dict()})
    line = refused(prune_argv(slices, tmp_path / "out", "--criterion", "stamp", "--top-width", "2",
                              "--init", str(other)), tmp_path / "out", capsys)
    assert str(other / "model.json") in line and "different architecture" in line


# -- the fault probe's prune rows: each bad input is one line naming what is wrong, and no output ---

@pytest.mark.parametrize("option, value, words", [
    ("--channels-per-step", "0", "channels_per_step must be >= 1"),
    ("--recovery-epochs", "0", "recovery_epochs must be >= 1"),
    ("--base-dropout", "1.5", "base_dropout"),
    ("--collapse-fraction", "-0.1", "collapse_fraction"),
    ("--set", "no_such_key=1", "no_such_key"),
    ("--set", "lr=fast", "lr"),
])
def test_a_bad_prune_setting_is_one_line(slices, tmp_path, capsys, option, value, words):
    line = refused(prune_argv(slices, tmp_path / "out", "--criterion", "stamp", option, value), tmp_path / "out",
                   capsys)
    assert words in line


def test_a_store_without_test_cases_is_refused_naming_its_manifest(tmp_path, capsys):
    store = make_store(tmp_path / "slices", cases=(("c0", "p0", "train"), ("c1", "p1", "train"),
                                                   ("c2", "p2", "val")))
    line = refused(prune_argv(store, tmp_path / "out", "--criterion", "stamp"), tmp_path / "out", capsys)
    assert f"{store / 'manifest.tsv'}: no test cases" in line


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_an_unreadable_start_checkpoint_is_one_line_naming_it(slices, tmp_path, capsys, damage):
    start = tmp_path / "start"
    start.mkdir()
    spec = ModelSpec("plain", 2, 3, 32, widths=START.to_json())
    spec.save(start / "model.json")
    if damage == "truncated":
        save_checkpoint(start / "best.pt", {"model": build_model(spec).state_dict()})
        data = (start / "best.pt").read_bytes()
        (start / "best.pt").write_bytes(data[: len(data) // 2])
    line = refused(prune_argv(slices, tmp_path / "out", "--criterion", "stamp", "--top-width", "2",
                              "--init", str(start)), tmp_path / "out", capsys)
    assert str(start / "best.pt") in line and "Traceback" not in line


def test_a_checkpoint_of_the_same_architecture_is_the_start(slices, tmp_path, monkeypatch):
    start = tmp_path / "start"
    start.mkdir()
    spec = ModelSpec("plain", 2, 3, 32, widths=START.to_json())
    torch.manual_seed(5)
    state = build_model(spec).state_dict()
    spec.save(start / "model.json")
    save_checkpoint(start / "best.pt", {"model": state})
    seen = []

    def record_and_stop(self, stream, stop):   # the network about to be trained in step 0
        seen.append({k: v.clone() for k, v in self.model.state_dict().items()})
        raise RuntimeError("seen")

    monkeypatch.setattr(loop._Pruner, "_recover", record_and_stop)
    with pytest.raises(RuntimeError, match="seen"):
        prune(slices, tmp_path / "out", resolve_config("nnunet", TRAIN), PruneSettings("stamp", **SETTINGS),
              device="cpu", init=start)
    assert_same_weights(seen[0], state)


def test_help_names_the_criteria(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["prune", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert all(c in text for c in CRITERIA)


# -- killed and terminated runs resume exactly ------------------------------------------------------------

PROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def prune_command(slices: Path, out: Path, driver: Path) -> list[str]:
    command = [sys.executable, str(driver), *prune_argv(slices, out, "--criterion", "stamp_random_in_block",
                                                        "--top-width", "2", "--recovery-epochs", "1",
                                                        "--channels-per-step", "8")]
    for key, value in {**TRAIN, "iterations_per_epoch": "3"}.items():
        command += ["--set", f"{key}={value}"]
    return command


@pytest.fixture(scope="module")
def reference_prune(slices):
    driver = slices.parent / "driver.py"
    driver.write_text(DRIVER)
    subprocess.run(prune_command(slices, slices.parent / "reference", driver), check=True, capture_output=True,
                   timeout=300, env=PROCESS_ENV)
    return driver, slices.parent / "reference"


def start_and_wait_for(command: list[str], path: Path) -> subprocess.Popen:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=PROCESS_ENV)
    deadline = time.monotonic() + 120
    while not path.exists():
        assert process.poll() is None, process.communicate()[1].decode()
        assert time.monotonic() < deadline, f"no {path.name} within 120 s"
        time.sleep(0.005)
    return process


def same_log(a: Path, b: Path) -> None:
    left, right = read_log(a).drop(columns="seconds"), read_log(b).drop(columns="seconds")
    pd.testing.assert_frame_equal(left, right)


@pytest.mark.slow
def test_sigkill_and_rerun_prune_exactly_as_an_uninterrupted_run(slices, reference_prune, tmp_path):
    driver, reference = reference_prune
    out = tmp_path / "killed"
    command = prune_command(slices, out, driver)
    process = start_and_wait_for(command, out / "last.pt")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not (out / "done.json").exists(), "the run finished before it could be killed; the test proves nothing"
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300, env=PROCESS_ENV)
    assert finished.returncode == 0, finished.stderr
    assert "resuming" in finished.stderr
    same_log(reference, out)
    assert_same_weights(weights(reference / "best.pt"), weights(out / "best.pt"))
    assert_same_weights(weights(reference / "last.pt"), weights(out / "last.pt"))
    for folder in ("at75", "at50", "at25"):
        assert_same_weights(weights(reference / folder / "best.pt"), weights(out / folder / "best.pt"))


@pytest.mark.slow
def test_sigterm_mid_step_saves_exits_143_and_resumes_exactly(slices, reference_prune, tmp_path):
    driver, reference = reference_prune
    out = tmp_path / "terminated"
    command = prune_command(slices, out, driver)
    # The log appears after step 0's recovery; SIGTERM then lands in step 1's recovery or later.
    process = start_and_wait_for(command, out / "log.tsv")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr.decode()
    assert not (out / "done.json").exists()
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300, env=PROCESS_ENV)
    assert finished.returncode == 0, finished.stderr
    same_log(reference, out)
    assert_same_weights(weights(reference / "last.pt"), weights(out / "last.pt"))
