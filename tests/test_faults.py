"""Faults a hostile user (or a cluster) inflicts: the run protocol must never hand back wrong
weights silently, never let two writers share an output, and turn every failure into one line.

Each test reproduces one defect of issue 17 and failed before its fix.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from rawdata import make_raw_dataset
from test_search import ALWAYS_STABLE, CASES, SPEC as SEARCH_SPEC, tiny_search
from test_train import (PROCESS_ENV, SPEC, assert_same_weights, make_store, tiny_config, train_interrupted,
                        weights)
from unetscout import cli
from unetscout.atomic import atomic_directory
from unetscout.data.slices import extract_slices
from unetscout.errors import UnetscoutError
from unetscout.models.spec import ModelSpec
from unetscout.runs import load_checkpoint, save_checkpoint
from unetscout.search.run import run_search
from unetscout.train import loop


def one_error_line(stderr: str) -> str:
    """The single `unetscout: error:` line of a failed command (and proof there is no traceback)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("unetscout: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


# -- 1. the best snapshot is a copy -----------------------------------------------------------------

def test_best_pt_rebuilt_on_resume_holds_the_best_epochs_weights(tmp_path, monkeypatch):
    """Snakemake deletes a failed job's outputs (best.pt among them) before the retry; the
    retry rebuilds best.pt from last.pt. The best epoch is the first, so every later update
    would leak into an aliased snapshot."""
    slices = make_store(tmp_path / "slices")
    config = tiny_config("paper", epochs="4", iterations_per_epoch="2")
    scores = iter([0.9, 0.5, 0.4, 0.3] * 2)
    monkeypatch.setattr(loop._Trainer, "_validate", lambda self: next(scores))
    loop.train(slices, tmp_path / "straight", SPEC, config, device="cpu")
    assert load_checkpoint(tmp_path / "straight" / "best.pt")["epoch"] == 1

    out = tmp_path / "interrupted"
    train_interrupted(slices, out, SPEC, config, monkeypatch, after_epochs=2)
    (out / "best.pt").unlink()
    loop.train(slices, out, SPEC, config, device="cpu")

    rebuilt, straight = load_checkpoint(out / "best.pt"), load_checkpoint(tmp_path / "straight" / "best.pt")
    assert rebuilt["epoch"] == 1 and rebuilt["val_dice"] == pytest.approx(0.9)
    assert_same_weights(straight["model"], rebuilt["model"])
    # And the best weights really are not the final ones (else the test proves nothing).
    final = weights(out / "last.pt")
    assert any(not torch.equal(final[k], rebuilt["model"][k]) for k in final)


# -- 2. a changed dataset is other data -------------------------------------------------------------

RAW_SPEC = ModelSpec(backbone="lean", in_channels=2, num_classes=2, image_size=16, width=4)


def write_store(root: Path, seed: int) -> Path:
    """`unetscout slices` of a raw dataset drawn with `seed`: another seed changes the voxels
    but not the case names, split, slice counts or label counts (what a rerun of the data rules
    after regenerating or replacing the raw data produces)."""
    raw = make_raw_dataset(root / f"raw{seed}", cases=8, shape=(16, 16, 4), seed=seed)
    extract_slices(raw, root / "slices", size=16, seed=0)
    return root / "slices"


@pytest.fixture(scope="module")
def raw_backbone(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults_raw_backbone")
    slices = write_store(root, seed=0)
    loop.train(slices, root / "backbone", RAW_SPEC, tiny_config("paper", epochs="1", iterations_per_epoch="1",
                                                                batch_size="4", num_workers="0"), device="cpu")
    return root / "backbone"


def test_regenerated_raw_data_leaves_the_manifest_as_it_was(tmp_path):
    """The premise of the three tests below: only the content digest tells the stores apart."""
    before = pd.read_csv(write_store(tmp_path, seed=0) / "manifest.tsv", sep="\t")
    after = pd.read_csv(write_store(tmp_path, seed=1) / "manifest.tsv", sep="\t")
    assert before.drop(columns="sha256").equals(after.drop(columns="sha256"))
    assert (before["sha256"] != after["sha256"]).all()


def test_training_on_a_regenerated_store_starts_afresh(tmp_path, capsys):
    slices = write_store(tmp_path, seed=0)
    config = tiny_config("paper", epochs="2", iterations_per_epoch="2", batch_size="4")
    out = tmp_path / "run"
    loop.train(slices, out, RAW_SPEC, config, device="cpu")
    for name in ("done.json", "best.pt", "model.json"):  # Snakemake deletes declared outputs
        (out / name).unlink()
    write_store(tmp_path, seed=1)
    capsys.readouterr()
    loop.train(slices, out, RAW_SPEC, config, device="cpu")
    assert "different data (the slice store changed)" in capsys.readouterr().err
    loop.train(slices, tmp_path / "fresh", RAW_SPEC, config, device="cpu")
    assert_same_weights(weights(tmp_path / "fresh" / "last.pt"), weights(out / "last.pt"))


def test_search_on_a_regenerated_store_starts_afresh(raw_backbone, tmp_path, capsys):
    slices = write_store(tmp_path, seed=0)
    config = tiny_search(epochs="2", **ALWAYS_STABLE)
    out = run_search("iac_lth", raw_backbone, slices, tmp_path / "search", config, device="cpu")
    (out / "search_summary.json").unlink()  # as Snakemake does before it reruns the job
    write_store(tmp_path, seed=1)
    capsys.readouterr()
    run_search("iac_lth", raw_backbone, slices, out, config, device="cpu")
    assert "different data (the slice store changed)" in capsys.readouterr().err
    fresh = run_search("iac_lth", raw_backbone, slices, tmp_path / "fresh", config, device="cpu")
    a, b = load_checkpoint(fresh / "state.pt"), load_checkpoint(out / "state.pt")
    assert all(torch.equal(a["skip_modules"][k], b["skip_modules"][k]) for k in a["skip_modules"])
    assert torch.equal(a["arch"]["alpha"], b["arch"]["alpha"])


def test_cell_training_on_a_regenerated_store_starts_afresh(raw_backbone, tmp_path, capsys):
    from unetscout.search.cell_training import train_cell

    slices = write_store(tmp_path, seed=0)
    search = run_search("random", raw_backbone, slices, tmp_path / "search", tiny_search(), device="cpu")
    settings = {"epochs": "2", "iterations_per_epoch": "1", "num_workers": "0"}
    genotype = search / "genotype.json"
    out = train_cell(raw_backbone, slices, genotype, "random", tmp_path / "cell", settings, device="cpu")
    (out / "done.json").unlink()
    write_store(tmp_path, seed=1)
    capsys.readouterr()
    train_cell(raw_backbone, slices, genotype, "random", out, settings, device="cpu")
    assert "different data (the slice store changed)" in capsys.readouterr().err
    fresh = train_cell(raw_backbone, slices, genotype, "random", tmp_path / "fresh", settings, device="cpu")
    assert_same_weights(weights(fresh / "last.pt"), weights(out / "last.pt"))


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults_backbone")
    slices = make_store(root / "slices", cases=CASES)
    loop.train(slices, root / "backbone", SEARCH_SPEC, tiny_config("paper", epochs="1", iterations_per_epoch="1",
                                                                    num_workers="0"), device="cpu")
    return root / "backbone"


# -- 3. one writer per output -----------------------------------------------------------------------

def unetscout_command(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from unetscout.cli import main; sys.exit(main(sys.argv[1:]))", *args]


def long_train_command(slices: Path, out: Path) -> list[str]:
    settings = {"epochs": "200", "iterations_per_epoch": "4", "batch_size": "6", "val_batch_size": "6"}
    command = unetscout_command("train", str(slices), "--out", str(out), "--backbone", "lean", "--width", "4",
                                "--preset", "paper", "--device", "cpu")
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    return command


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()[1].decode()
        assert time.monotonic() < deadline, f"no {path} within {seconds} s"
        time.sleep(0.01)


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    slices = make_store(tmp_path / "slices")
    out = tmp_path / "run"
    command = long_train_command(slices, out)
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=PROCESS_ENV)
    try:
        wait_for(out / "last.pt", first)
        second = subprocess.run(command, capture_output=True, text=True, timeout=120, env=PROCESS_ENV)
        assert second.returncode == 2, second.stderr
        line = one_error_line(second.stderr)
        assert f"{out}: is being written by unetscout train (pid {first.pid} on" in line
        assert first.poll() is None, "the first writer must keep running"
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 143
    # The lock died with its holder: the output is free again.
    from unetscout.atomic import exclusive_output
    with exclusive_output(out, "test"):
        pass


def test_concurrent_directory_replacements_never_crash(tmp_path):
    """Two writers of one output directory (without the lock: e.g. two library callers) each
    rename over the other's result; every replacement must succeed and leave no debris."""
    target, errors = tmp_path / "store", []

    def writer(number: int) -> None:
        try:
            for round_ in range(15):
                with atomic_directory(target) as tmp:
                    (tmp / "who").write_text(f"{number} {round_}")
        except Exception as err:  # noqa: BLE001 - collected for the assertion
            errors.append(repr(err))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:3]
    assert (target / "who").read_text().split()[1] == "14"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_stale_partials_of_a_dead_writer_are_removed(tmp_path, capsys):
    raw = make_raw_dataset(tmp_path / "raw")
    out = tmp_path / "slices"
    # What a SIGKILLed `slices` leaves: a half-written store beside the output.
    (tmp_path / ".slices.partial-dead1").mkdir()
    (tmp_path / ".slices.partial-dead1" / "manifest.tsv").write_text("half")
    assert cli.main(["slices", str(raw), "--out", str(out), "--size", "8"]) == 0, capsys.readouterr().err
    assert not list(tmp_path.glob(".slices.partial-*"))
    # ... and inside a run folder, a checkpoint that was being written.
    run = tmp_path / "run"
    run.mkdir()
    (run / ".last.pt.partial-dead2").write_bytes(b"half")
    assert cli.main(["train", str(out), "--out", str(run), "--backbone", "lean", "--width", "4", "--preset",
                     "paper", "--device", "cpu", "--set", "epochs=1", "--set", "iterations_per_epoch=1",
                     "--set", "batch_size=2"]) == 0, capsys.readouterr().err
    assert not list(run.glob(".*.partial-*"))
    from unetscout.atomic import lock_path
    assert not lock_path(run).exists()  # a finished writer removes its lock


# -- 4. damaged checkpoints -------------------------------------------------------------------------

def flip_a_tensor_byte(path: Path) -> None:
    """Change one byte inside a tensor's data record, leaving the zip structure intact."""
    with zipfile.ZipFile(path) as archive:
        member = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 16)
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[member.header_offset + 26: member.header_offset + 30])
    start = member.header_offset + 30 + name_length + extra_length
    data[start + member.file_size // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_damaged_checkpoint_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "state.pt"
    save_checkpoint(path, {"model": {"w": torch.arange(64, dtype=torch.float32)}})
    flip_a_tensor_byte(path)
    # torch itself loads it without complaint: the check must be ours.
    assert not torch.equal(torch.load(path, weights_only=True)["model"]["w"], torch.arange(64, dtype=torch.float32))
    with pytest.raises(UnetscoutError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path}: damaged checkpoint") and "delete it and rerun" in message


def test_training_refuses_to_resume_from_a_damaged_checkpoint(tmp_path, monkeypatch):
    slices = make_store(tmp_path / "slices")
    config = tiny_config("paper", epochs="3", iterations_per_epoch="2")
    train_interrupted(slices, tmp_path / "run", SPEC, config, monkeypatch, after_epochs=1)
    flip_a_tensor_byte(tmp_path / "run" / "last.pt")
    with pytest.raises(UnetscoutError, match="last.pt: damaged checkpoint"):
        loop.train(slices, tmp_path / "run", SPEC, config, device="cpu")


# -- 8. a batch larger than the data: tests/test_batch.py ---------------------------------------


# -- 7. a full disk ---------------------------------------------------------------------------------

def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || "
                            "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True)
    return probe.returncode == 0


FULL_DISK = pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs a user+mount namespace (unshare -rm) "
                                                                "to mount a small tmpfs")


def on_a_small_disk(tmp_path: Path, kilobytes: int, fill: bool, *args: str) -> tuple[int, str, list[str]]:
    """Run `unetscout ARGS` with `tmp_path/disk` a tmpfs of `kilobytes` (filled up first when
    `fill`); returns exit status, stderr and every path the disk holds afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    command = " ".join(_quote(a) for a in unetscout_command(*args))
    filler = f"head -c {kilobytes * 1024} /dev/zero > {disk}/filler 2>/dev/null; " if fill else ""
    script = (f"mount -t tmpfs -o size={kilobytes}k tmpfs {disk} && {filler}"
              f"{command}; status=$?; cd {disk} && find . -mindepth 1 > {tmp_path}/listing; exit $status")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                          env=PROCESS_ENV)
    listing = (tmp_path / "listing").read_text().split()
    return done.returncode, done.stderr, [name[2:] for name in listing if name != "./filler"]


def _quote(text: str) -> str:
    import shlex
    return shlex.quote(text)


@pytest.fixture(scope="module")
def small_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("full_disk_inputs")
    raw = make_raw_dataset(root / "raw", shape=(16, 16, 4))
    extract_slices(raw, root / "slices", size=16, seed=0)
    slices = make_store(root / "store")
    loop.train(slices, root / "model", SPEC, tiny_config("paper", epochs="1", iterations_per_epoch="1"), device="cpu")
    return raw, slices, root / "model"


@FULL_DISK
@pytest.mark.parametrize("stage", ["synth", "slices", "train", "evaluate"])
def test_a_full_disk_is_one_line_naming_the_output(small_inputs, tmp_path, stage):
    raw, slices, model = small_inputs
    disk = tmp_path / "disk"
    arguments = {
        "synth": (64, False, ("synth", "--out", str(disk / "raw"), "--cases", "3")),
        "slices": (16, False, ("slices", str(raw), "--out", str(disk / "slices"), "--size", "64")),
        "train": (64, False, ("train", str(slices), "--out", str(disk / "run"), "--backbone", "lean", "--width", "4",
                              "--preset", "paper", "--device", "cpu", "--set", "epochs=1",
                              "--set", "iterations_per_epoch=1", "--set", "batch_size=4")),
        "evaluate": (64, True, ("evaluate", str(model), str(slices), "--out", str(disk / "patients.tsv"),
                                "--device", "cpu")),
    }[stage]
    kilobytes, fill, args = arguments
    status, stderr, left = on_a_small_disk(tmp_path, kilobytes, fill, *args)
    assert status == 2, stderr
    line = one_error_line(stderr)
    output = Path(args[args.index("--out") + 1])
    assert "no space left on the device" in line and "bytes free" in line, line
    assert str(output.parent) in line, line
    # No partial output: no temporary file, no result. A run folder keeps what it completed
    # (settings, the best epoch's checkpoint) but no done.json, so the run is unfinished.
    assert not [name for name in left if ".partial-" in name or ".old-" in name], left
    results = ("run/done.json",) if stage == "train" else (output.name,)
    assert not set(results) & set(left), left
