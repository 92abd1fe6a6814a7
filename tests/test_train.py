"""Training: presets, sampler, validation Dice, the loop (resume, SIGKILL, SIGTERM, NaN, done)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from unetscout.data.slices import FORMAT_VERSION
from unetscout.dice import class_dice, confusion_matrix as numpy_confusion_matrix
from unetscout.errors import UnetscoutError
from unetscout.models.spec import ModelSpec
from unetscout.train import loop
from unetscout.runs import load_checkpoint
from unetscout.train.cli_args import add_train_parser
from unetscout.train.presets import PRESETS, TrainConfig, parse_assignments, resolve_config
from unetscout.train.sampler import BatchStream, SliceSampler
from unetscout.train.validate import confusion_matrix, patient_dice

SIZE = 32
LABELS = {"background": 0, "lesion": 1, "square": 2}
DEFAULT_CASES = (("c0", "p0", "train"), ("c1", "p1", "train"), ("c2", "p2", "train"),
                 ("c3", "p3", "val"), ("c4", "p4", "test"))


def make_store(root: Path, cases=DEFAULT_CASES, slices: int = 6, seed: int = 0,
               empty_slices: int = 1, image_is_label: bool = False, nan_split: str | None = None) -> Path:
    """A slice store in `unetscout slices`' on-disk layout: a bright disc (class 1, channel 0)
    and a bright square (class 2, channel 1) on noise; the first `empty_slices` slices are empty."""
    (root / "cases").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    rows = []
    for case, patient, split in cases:
        image = rng.normal(0, 0.3, (slices, 2, SIZE, SIZE)).astype(np.float32)
        label = np.zeros((slices, SIZE, SIZE), np.uint8)
        for s in range(empty_slices, slices):
            cy, cx = rng.integers(8, SIZE - 8, 2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= int(rng.integers(3, 6)) ** 2
            sy, sx = rng.integers(6, SIZE - 6, 2)
            square = (abs(yy - sy) <= 3) & (abs(xx - sx) <= 3) & ~disc
            label[s][disc], label[s][square] = 1, 2
            image[s, 0][disc] += 2.0
            image[s, 1][square] += 2.0
        if image_is_label:
            image[:, 0] = label
        if split == nan_split:
            image[:, 1, 0, 0] = np.nan
        np.save(root / "cases" / f"{case}_image.npy", image)
        np.save(root / "cases" / f"{case}_label.npy", label)
        # The content digest `unetscout slices` records: the image's bytes, then the label's.
        content = hashlib.sha256(image.tobytes() + label.tobytes()).hexdigest()
        rows.append(f"{case}\t{patient}\t{split}\t{slices}\t1.0\t1.0\t3.0\t{content}")
    header = "case\tpatient\tsplit\tslices\tspacing_x\tspacing_y\tspacing_z\tsha256\n"
    (root / "manifest.tsv").write_text(header + "\n".join(rows) + "\n")
    (root / "slices.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "channel_names": ["a", "b"],
                                                  "labels": LABELS, "size": SIZE}))
    return root


def store_of(path: Path):
    from unetscout.data.slice_store import SliceStore
    return SliceStore(path)


TINY = {"epochs": "3", "iterations_per_epoch": "3", "batch_size": "6", "val_batch_size": "4"}
SPEC = ModelSpec(backbone="lean", in_channels=2, num_classes=3, image_size=SIZE, width=4)


def tiny_config(preset: str = "nnunet", **extra: str) -> TrainConfig:
    return resolve_config(preset, {**TINY, **extra})


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ: {different[:5]}"


def train_interrupted(slices: Path, out: Path, spec: ModelSpec, config: TrainConfig, monkeypatch,
                      after_epochs: int) -> None:
    """Train until `after_epochs` epochs are reported (and checkpointed), then crash as a killed
    job would; the next `loop.train` runs unpatched."""
    original, reported = loop._Trainer._report, {"epochs": 0}

    def crash_after(self, it_per_s):
        original(self, it_per_s)
        reported["epochs"] += 1
        if reported["epochs"] == after_epochs:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(loop._Trainer, "_report", crash_after)
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            loop.train(slices, out, spec, config, device="cpu")
    finally:
        monkeypatch.setattr(loop._Trainer, "_report", original)


# -- presets --------------------------------------------------------------------------------------

def test_paper_preset_values():
    p = PRESETS["paper"]
    assert (p.optimizer, p.lr, p.batch_size, p.epochs) == ("adam", 1e-3, 128, 200)
    assert (p.ce_weight, p.dice_weight, p.dice_smooth) == (1.0, 1.0, 1e-5)
    assert not p.augment and not p.deep_supervision and not p.batch_dice
    assert p.schedule == "constant" and p.grad_clip == 0.0 and p.weight_decay == 0.0
    assert p.oversample_foreground == 0.0


def test_nnunet_preset_values():
    p = PRESETS["nnunet"]
    assert (p.optimizer, p.lr, p.momentum, p.nesterov, p.weight_decay) == ("sgd", 1e-2, 0.99, True, 3e-5)
    assert (p.schedule, p.poly_exponent, p.grad_clip) == ("poly", 0.9, 12.0)
    assert p.deep_supervision and p.batch_dice and p.augment
    assert p.oversample_foreground == 0.33
    assert (p.aug_scale_min, p.aug_scale_max, p.dice_smooth) == (0.7, 1.4, 1e-5)


def test_resolve_config_converts_types():
    c = resolve_config("paper", {"lr": "0.5", "epochs": "7", "augment": "true", "optimizer": "sgd",
                                 "nesterov": "no", "momentum": "0.9"})
    assert (c.lr, c.epochs, c.augment, c.optimizer, c.nesterov) == (0.5, 7, True, "sgd", False)
    assert c.preset == "paper" and c.batch_size == 128


@pytest.mark.parametrize("preset, overrides, words", [
    ("fancy", {}, "unknown training preset 'fancy'"),
    ("paper", {"learning_rate": "1"}, "unknown training setting 'learning_rate'"),
    ("paper", {"epochs": "2.5"}, "epochs='2.5': expected an integer"),
    ("paper", {"lr": "fast"}, "lr='fast': expected a finite number"),
    ("paper", {"lr": "nan"}, "expected a finite number"),
    ("paper", {"augment": "maybe"}, "augment='maybe': expected true or false"),
    ("paper", {"oversample_foreground": "1.5"}, "oversample_foreground is a probability"),
    ("paper", {"batch_size": "0"}, "batch_size must be > 0"),
    ("paper", {"optimizer": "rmsprop"}, "optimizer='rmsprop' is not one of adam, sgd"),
    ("paper", {"aug_scale_min": "2"}, "aug_scale_min=2.0 is larger than aug_scale_max=1.4"),
    ("paper", {"preset": "nnunet"}, "--preset"),
    ("nnunet", {"momentum": "0"}, "nesterov=true needs momentum > 0"),
])
def test_resolve_config_errors_are_one_line(preset, overrides, words):
    with pytest.raises(UnetscoutError) as err:
        resolve_config(preset, overrides)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_parse_assignments():
    assert parse_assignments(["lr=0.1", "epochs = 3"]) == {"lr": "0.1", "epochs": " 3"}
    for bad in (["lr"], ["=3"], ["lr=1", "lr=2"]):
        with pytest.raises(UnetscoutError):
            parse_assignments(bad)


def test_config_round_trips_through_dict():
    c = PRESETS["nnunet"]
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_poly_learning_rate():
    c = PRESETS["nnunet"].replace(epochs=10)
    assert loop.learning_rate(c, 0) == pytest.approx(1e-2)
    assert loop.learning_rate(c, 5) == pytest.approx(1e-2 * 0.5 ** 0.9)
    assert loop.learning_rate(PRESETS["paper"], 150) == 1e-3


# -- sampler -----------------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    return store_of(make_store(tmp_path / "slices", empty_slices=4))


def test_foreground_slices_found(store):
    sampler = SliceSampler(store, "train", 8, 0.0, seed=0)
    index = store.slice_index("train")
    cases = store.cases("train")
    expected = [i for i, (c, s) in enumerate(index) if store.label(cases[c])[s].any()]
    assert sampler.foreground.tolist() == expected
    assert len(expected) == 3 * 2  # 6 slices per case, the first 4 empty


@pytest.mark.parametrize("batch, fraction, forced", [(128, 0.33, 42), (10, 0.33, 3), (3, 0.33, 1), (8, 0.0, 0),
                                                     (8, 1.0, 8)])
def test_oversampling_count(store, batch, fraction, forced):
    sampler = SliceSampler(store, "train", batch, fraction, seed=0)
    assert sampler.n_foreground == forced
    picks = sampler.draw()
    labels = np.stack([store.label(store.cases("train")[c])[s] for c, s in picks])
    has_foreground = labels.reshape(batch, -1).any(1)
    # The forced samples are the last ones of the batch and all contain foreground.
    assert has_foreground[batch - forced:].all()


def test_oversampling_fraction_over_many_batches(store):
    # Base rate of foreground slices is 6/18; with p = 0.5, the expected fraction is
    # 0.5 + 0.5 * 1/3 = 2/3.
    sampler = SliceSampler(store, "train", 20, 0.5, seed=1)
    fg = set(sampler.foreground.tolist())
    index = {tuple(row): i for i, row in enumerate(store.slice_index("train").tolist())}
    hits = [index[tuple(row)] in fg for _ in range(200) for row in sampler.draw().tolist()]
    assert np.mean(hits) == pytest.approx(2 / 3, abs=0.03)


def test_assemble_reads_the_right_slices(store):
    sampler = SliceSampler(store, "train", 5, 0.0, seed=0)
    picks = sampler.draw()
    image, label = sampler.assemble(picks)
    cases = store.cases("train")
    for row, (c, s) in enumerate(picks):
        assert np.array_equal(image[row], store.image(cases[c])[s])
        assert np.array_equal(label[row], store.label(cases[c])[s])


def test_sampler_state_replays_and_prefetch_matches_inline(store):
    sampler = SliceSampler(store, "train", 4, 0.33, seed=5)
    sampler.draw()
    state = sampler.state_dict()
    expected = [sampler.draw() for _ in range(3)]
    sampler.load_state_dict(state)
    assert all(np.array_equal(a, sampler.draw()) for a in expected)

    inline = BatchStream(SliceSampler(store, "train", 4, 0.33, seed=5), num_workers=0)
    threaded = BatchStream(SliceSampler(store, "train", 4, 0.33, seed=5), num_workers=2)
    for _ in range(5):
        a, b = next(inline), next(threaded)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    threaded.close()


# -- validation Dice ------------------------------------------------------------------------------------

def test_confusion_and_dice_by_hand():
    ref = torch.tensor([[0, 1, 1, 2], [0, 0, 2, 2]])
    pred = torch.tensor([[0, 1, 0, 2], [1, 0, 2, 0]])
    matrix = confusion_matrix(pred, ref, 3)
    assert matrix.tolist() == [[2, 1, 0], [1, 1, 0], [1, 0, 2]]
    # The on-device counts are laid out as the shared (numpy) ones the Dice formula reads.
    assert matrix.tolist() == numpy_confusion_matrix(pred.numpy(), ref.numpy(), 3).tolist()
    # class 1: TP 1, FP 1, FN 1 -> 2/4; class 2: TP 2, FP 0, FN 1 -> 4/5.
    np.testing.assert_allclose(class_dice([matrix.numpy()]), [0.5, 0.8])
    # A class absent from both -> NaN.
    assert np.isnan(class_dice([np.array([[5, 0, 0], [0, 2, 0], [0, 0, 0]])])[1])


class OracleModel(torch.nn.Module):
    """Predicts channel 0 of the image as the label (the store is built with image == label)."""

    def __init__(self, num_classes: int, shift: int = 0):
        super().__init__()
        self.num_classes, self.shift = num_classes, shift

    def forward(self, x):
        label = (x[:, 0].round().long() + self.shift) % self.num_classes
        return torch.nn.functional.one_hot(label, self.num_classes).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("fast_path", [False, True])
def test_patient_dice_perfect_and_grouped_by_patient(tmp_path, fast_path):
    cases = (("a1", "pa", "val"), ("a2", "pa", "val"), ("b1", "pb", "val"), ("t", "pt", "train"))
    store = store_of(make_store(tmp_path / "s", cases=cases, image_is_label=True))
    # fast_path: the bf16-autocast + channels_last branch the GPU uses, run on the CPU.
    score, per_patient = patient_dice(OracleModel(3), store, "val", torch.device("cpu"), batch_size=4,
                                      autocast=fast_path, channels_last=fast_path)
    assert score == 1.0 and per_patient == {"pa": 1.0, "pb": 1.0}
    # Shifting every class by one: nothing foreground is right -> 0.
    score, _ = patient_dice(OracleModel(3, shift=1), store, "val", torch.device("cpu"), batch_size=4)
    assert score == 0.0


def test_patient_dice_sums_counts_over_slices(tmp_path):
    # Hand-made patient with two slices of one class: slice 1 has 1 foreground pixel,
    # predicted right; slice 2 has 3 foreground pixels, predicted as background.
    # Patient-level Dice = 2*1 / (2*1 + 0 + 3) = 0.4 (the mean of per-slice Dice would be 0.5).
    root = tmp_path / "s"
    (root / "cases").mkdir(parents=True)
    label = np.zeros((2, 4, 4), np.uint8)
    label[0, 0, 0] = 1
    label[1, 1, 1:4] = 1
    image = np.zeros((2, 1, 4, 4), np.float32)
    image[0, 0] = label[0]
    for name in ("v", "t"):
        np.save(root / "cases" / f"{name}_image.npy", image)
        np.save(root / "cases" / f"{name}_label.npy", label)
    (root / "manifest.tsv").write_text("case\tpatient\tsplit\tslices\tspacing_x\tspacing_y\tspacing_z\n"
                                       "v\tpv\tval\t2\t1\t1\t1\nt\tpt\ttrain\t2\t1\t1\t1\n")
    (root / "slices.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "channel_names": ["x"],
                                                  "labels": {"background": 0, "fg": 1}, "size": 4}))
    score, _ = patient_dice(OracleModel(2), store_of(root), "val", torch.device("cpu"))
    assert score == pytest.approx(0.4)


# -- the loop, in process ------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["paper", "nnunet"])
def test_training_writes_outputs_and_loss_decreases(tmp_path, preset):
    slices = make_store(tmp_path / "slices")
    out = tmp_path / "run"
    config = tiny_config(preset, epochs="4", iterations_per_epoch="5", batch_size="8")
    assert loop.train(slices, out, SPEC, config, device="cpu") == out
    for name in ("model.json", "config.json", "environment.json", "log.tsv", "last.pt", "best.pt", "done.json"):
        assert (out / name).exists(), name
    assert ModelSpec.load(out / "model.json") == SPEC.replace(deep_supervision=config.deep_supervision)
    assert TrainConfig.from_dict(json.loads((out / "config.json").read_text())) == config
    env = json.loads((out / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and "hostname" in env
    rows = [line.split("\t") for line in (out / "log.tsv").read_text().splitlines()]
    assert rows[0] == ["epoch", "loss", "val_dice", "lr", "seconds", "it_per_s"]
    losses = [float(r[1]) for r in rows[1:]]
    assert len(losses) == 4 and losses[-1] < losses[0]
    best = load_checkpoint(out / "best.pt")
    val = [float(r[2]) for r in rows[1:]]
    assert best["val_dice"] == pytest.approx(max(val), rel=1e-5)
    assert best["epoch"] == 1 + int(np.argmax(val))
    done = json.loads((out / "done.json").read_text())
    assert done["best_epoch"] == best["epoch"] and done["config"] == config.to_dict()


def test_resume_after_interruption_is_bit_identical(tmp_path, monkeypatch):
    slices = make_store(tmp_path / "slices")
    config = tiny_config("nnunet", num_workers="1")
    loop.train(slices, tmp_path / "straight", SPEC, config, device="cpu")

    train_interrupted(slices, tmp_path / "resumed", SPEC, config, monkeypatch, after_epochs=1)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 1
    assert not (tmp_path / "resumed" / "done.json").exists()
    loop.train(slices, tmp_path / "resumed", SPEC, config, device="cpu")
    assert_same_weights(weights(tmp_path / "straight" / "last.pt"), weights(tmp_path / "resumed" / "last.pt"))
    assert_same_weights(weights(tmp_path / "straight" / "best.pt"), weights(tmp_path / "resumed" / "best.pt"))
    straight_log = (tmp_path / "straight" / "log.tsv").read_text().splitlines()
    resumed_log = (tmp_path / "resumed" / "log.tsv").read_text().splitlines()
    column = lambda lines, i: [line.split("\t")[i] for line in lines]  # noqa: E731
    assert column(straight_log, 1) == column(resumed_log, 1) and column(straight_log, 2) == column(resumed_log, 2)


def test_nan_loss_stops_with_one_line_error(tmp_path):
    slices = make_store(tmp_path / "slices", nan_split="train")
    with pytest.raises(UnetscoutError) as err:
        loop.train(slices, tmp_path / "run", SPEC, tiny_config("paper"), device="cpu")
    message = str(err.value)
    assert "training loss became nan at epoch 1 iteration 1" in message and "\n" not in message
    assert not (tmp_path / "run" / "last.pt").exists()


def test_done_json_short_circuits(tmp_path, monkeypatch):
    slices = make_store(tmp_path / "slices")
    out = tmp_path / "run"
    config = tiny_config("paper", epochs="1", iterations_per_epoch="2")
    loop.train(slices, out, SPEC, config, device="cpu")

    def must_not_train(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(loop, "_Trainer", must_not_train)
    assert loop.train(slices, out, SPEC, config, device="cpu") == out


def _final_weights(out):
    return torch.load(out / "last.pt", weights_only=True)["model"]


def test_a_run_of_another_config_is_discarded_and_trained_afresh(tmp_path, capsys):
    """The workflow reruns a job when its parameters change: the old run must not be resumed."""
    slices = make_store(tmp_path / "slices")
    config = tiny_config("paper", epochs="1", iterations_per_epoch="2")
    changed = config.replace(seed=3)
    loop.train(slices, tmp_path / "reference", SPEC, changed, device="cpu")
    out = tmp_path / "run"
    loop.train(slices, out, SPEC, config, device="cpu")
    (out / "done.json").unlink()  # as Snakemake removes outputs before a rerun
    loop.train(slices, out, SPEC, changed, device="cpu")
    assert "last.pt belongs to a run with different settings" in capsys.readouterr().err
    reference, retrained = _final_weights(tmp_path / "reference"), _final_weights(out)
    assert all(torch.equal(reference[k], retrained[k]) for k in reference)
    assert json.loads((out / "done.json").read_text())["config"]["seed"] == 3


def test_best_checkpoint_removed_before_a_rerun_is_restored(tmp_path):
    slices = make_store(tmp_path / "slices")
    out = tmp_path / "run"
    config = tiny_config("paper", epochs="2", iterations_per_epoch="2")
    loop.train(slices, out, SPEC, config, device="cpu")
    best = torch.load(out / "best.pt", weights_only=True)
    for name in ("done.json", "best.pt", "model.json"):  # Snakemake deletes declared outputs
        (out / name).unlink()
    loop.train(slices, out, SPEC, config, device="cpu")
    restored = torch.load(out / "best.pt", weights_only=True)
    assert restored["epoch"] == best["epoch"]
    assert all(torch.equal(best["model"][k], restored["model"][k]) for k in best["model"])


def test_spec_that_does_not_fit_the_slices_is_refused(tmp_path):
    slices = make_store(tmp_path / "slices")
    with pytest.raises(UnetscoutError, match="slices.json: the slices have in_channels 2 but the model spec says 1"):
        loop.train(slices, tmp_path / "run", SPEC.replace(in_channels=1), tiny_config(), device="cpu")
    assert not (tmp_path / "run").exists()


def test_corrupt_checkpoint_is_a_one_line_error(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UnetscoutError) as err:
        loop.train(make_store(tmp_path / "slices"), out, SPEC, tiny_config(), device="cpu")
    assert "last.pt: unreadable checkpoint" in str(err.value) and "\n" not in str(err.value)


# -- CLI -------------------------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unetscout")
    add_train_parser(p.add_subparsers(dest="command", required=True))
    return p


def test_cli_trains_with_shape_from_the_store(tmp_path):
    slices = make_store(tmp_path / "slices")
    out = tmp_path / "run"
    args = parser().parse_args(["train", str(slices), "--out", str(out), "--backbone", "lean", "--width", "4",
                                "--preset", "paper", "--seed", "2", "--device", "cpu",
                                "--set", "epochs=1", "--set", "iterations_per_epoch=2", "--set", "batch_size=4"])
    args.func(args)
    spec = ModelSpec.load(out / "model.json")
    assert (spec.in_channels, spec.num_classes, spec.image_size, spec.width) == (2, 3, SIZE, 4)
    config = json.loads((out / "config.json").read_text())
    assert (config["seed"], config["epochs"], config["batch_size"]) == (2, 1, 4)


def test_cli_seed_conflict(tmp_path):
    args = parser().parse_args(["train", str(tmp_path), "--out", str(tmp_path / "o"), "--backbone", "plain",
                                "--preset", "nnunet", "--seed", "1", "--set", "seed=2"])
    with pytest.raises(UnetscoutError, match="--seed 1 and --set seed=2 disagree"):
        args.func(args)


# -- the real thing: separate processes, SIGKILL and SIGTERM ----------------------------------------------

# The CLI's entry point itself, so the run holds its output's lock as `unetscout train` does.
DRIVER = """
import sys
from unetscout.cli import main
sys.exit(main(sys.argv[1:]))
"""
# One intra-op thread: the CPU is shared with other jobs, and OpenMP's spinning threads slow
# to a crawl when oversubscribed. Every run of a comparison uses the same setting.
PROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
PROCESS_SETTINGS = {"epochs": "12", "iterations_per_epoch": "4", "batch_size": "6", "val_batch_size": "6",
                    "num_workers": "1"}


def train_command(slices: Path, out: Path, driver: Path) -> list[str]:
    command = [sys.executable, str(driver), "train", str(slices), "--out", str(out), "--backbone", "lean",
               "--width", "4", "--preset", "nnunet", "--device", "cpu"]
    for key, value in PROCESS_SETTINGS.items():
        command += ["--set", f"{key}={value}"]
    return command


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted training run in a subprocess; the interrupted ones must match it."""
    root = tmp_path_factory.mktemp("train_processes")
    slices = make_store(root / "slices")
    driver = root / "driver.py"
    driver.write_text(DRIVER)
    subprocess.run(train_command(slices, root / "reference", driver), check=True, capture_output=True, timeout=120,
                   env=PROCESS_ENV)
    return slices, driver, root / "reference"


def start_and_wait_for_checkpoint(command: list[str]) -> subprocess.Popen:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=PROCESS_ENV)
    out = Path(command[command.index("--out") + 1])
    deadline = time.monotonic() + 60
    while not (out / "last.pt").exists():
        assert process.poll() is None, process.communicate()[1].decode()
        assert time.monotonic() < deadline, "no checkpoint within 60 s"
        time.sleep(0.005)
    return process


@pytest.mark.slow
def test_sigkill_and_rerun_give_identical_final_weights(reference_run, tmp_path):
    slices, driver, reference = reference_run
    out = tmp_path / "killed"
    command = train_command(slices, out, driver)
    process = start_and_wait_for_checkpoint(command)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not (out / "done.json").exists(), "the run finished before it could be killed; the test proves nothing"
    assert load_checkpoint(out / "last.pt")["epoch"] < int(PROCESS_SETTINGS["epochs"])

    finished = subprocess.run(command, capture_output=True, text=True, timeout=120, env=PROCESS_ENV)
    assert finished.returncode == 0, finished.stderr
    assert "resuming" in finished.stderr
    assert_same_weights(weights(reference / "last.pt"), weights(out / "last.pt"))
    assert_same_weights(weights(reference / "best.pt"), weights(out / "best.pt"))
    assert not list(out.glob(".*partial*"))


@pytest.mark.slow
def test_sigterm_saves_exits_143_and_resumes(reference_run, tmp_path):
    slices, driver, reference = reference_run
    out = tmp_path / "terminated"
    command = train_command(slices, out, driver)
    process = start_and_wait_for_checkpoint(command)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr.decode()
    assert "SIGTERM: saved" in stderr.decode()
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] < int(PROCESS_SETTINGS["epochs"])
    assert not (out / "done.json").exists()

    finished = subprocess.run(command, capture_output=True, text=True, timeout=120, env=PROCESS_ENV)
    assert finished.returncode == 0, finished.stderr
    assert (out / "done.json").exists()
    # Mid-epoch resumption is exact too.
    assert_same_weights(weights(reference / "last.pt"), weights(out / "last.pt"))
