"""The batch a job trains with (unetscout.train.batch): lowered to the slices it is drawn from,
said in one line and recorded beside the configured one (which stays the run's identity, as the
workflow declares it); refused only when the activations it keeps cannot fit, with
the bytes it needed, before any output is written."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from test_faults import backbone  # noqa: F401  (the fixture: a tiny trained lean U-Net)
from test_search import CASES, tiny_search
from test_train import SPEC, make_store, tiny_config
from unetscout.errors import UnetscoutError
from unetscout.prune.loop import prune
from unetscout.prune.settings import PruneSettings
from unetscout.runs import read_record
from unetscout.search.run import run_search
from unetscout.search.supernet import split_search_patients
from unetscout.data.slice_store import SliceStore
from unetscout.train import batch, loop


def slices_of(slices, cases: list[str]) -> int:
    """Slices of `cases`, read from the store's manifest (independently of the sampler's index)."""
    manifest = pd.read_csv(slices / "manifest.tsv", sep="\t", dtype={"case": str})
    return int(manifest.loc[manifest["case"].isin(cases), "slices"].sum())


# -- the cap ----------------------------------------------------------------------------------------

def test_a_batch_larger_than_the_train_split_is_lowered_said_and_recorded(tmp_path, capsys):
    slices = make_store(tmp_path / "slices")
    train_slices = slices_of(slices, SliceStore(slices).cases("train"))
    assert train_slices == 18  # 3 train cases of 6 slices
    out = loop.train(slices, tmp_path / "run", SPEC,
                     tiny_config("paper", batch_size="19", epochs="1", iterations_per_epoch="1"), device="cpu")
    said = [line for line in capsys.readouterr().err.splitlines() if "lowered" in line]
    assert said == [f"unetscout train: batch_size 19 lowered to 18, the 18 train slices of {slices} "
                    "(a batch never holds more slices than it is drawn from)"]
    done = read_record(out / "done.json")
    # run with 18; the identity and config.json keep the configured 19 (what the workflow declares)
    assert done["batch_size"] == 18 and done["config"]["batch_size"] == 19
    assert json.loads((out / "config.json").read_text())["batch_size"] == 19
    # the rerun asks for the same batch and finds its run done
    loop.train(slices, out, SPEC, tiny_config("paper", batch_size="19", epochs="1", iterations_per_epoch="1"),
               device="cpu")
    assert "nothing to do" in capsys.readouterr().err


def test_a_batch_that_fits_is_left_alone(tmp_path, capsys):
    slices = make_store(tmp_path / "slices")
    out = loop.train(slices, tmp_path / "run", SPEC,
                     tiny_config("paper", batch_size="18", epochs="1", iterations_per_epoch="1"), device="cpu")
    assert "lowered" not in capsys.readouterr().err
    assert read_record(out / "done.json")["batch_size"] == 18


def test_an_iac_batch_is_lowered_to_its_smallest_search_stream(backbone, tmp_path, capsys):
    slices = make_store(tmp_path / "slices", cases=CASES)  # 4 train patients, halved by patient
    store = SliceStore(slices)
    halves = split_search_patients(store, store.split_seed)
    smallest = min(slices_of(slices, half) for half in halves)
    out = run_search("iac", backbone, slices, tmp_path / "search", tiny_search(batch_size="50"), device="cpu")
    err = capsys.readouterr().err
    assert f"unetscout search: batch_size 50 lowered to {smallest}, the {smallest} slices of the search's" in err
    summary = json.loads((out / "search_summary.json").read_text())
    assert summary["batch_size"] == smallest and summary["identity"]["config"]["batch_size"] == 50


def test_a_prune_batch_is_lowered_to_the_train_split(tmp_path, capsys):
    slices = make_store(tmp_path / "slices")
    settings = PruneSettings(criterion="stamp", top_width=2, recovery_epochs=1, channels_per_step=40)
    out = prune(slices, tmp_path / "prune", tiny_config("nnunet", batch_size="40", iterations_per_epoch="1",
                                                        val_batch_size="6"), settings, device="cpu")
    assert "unetscout prune: batch_size 40 lowered to 18" in capsys.readouterr().err
    assert read_record(out / "done.json")["batch_size"] == 18
    assert json.loads((out / "config.json").read_text())["train"]["batch_size"] == 40


# -- the memory guard -------------------------------------------------------------------------------

def test_saved_bytes_of_a_conv_and_sigmoid_are_the_hand_count():
    """A bias-free 1x1 conv followed by a sigmoid: autograd keeps the conv's input (for the
    weight's gradient) and the sigmoid's output (its derivative is s(1 - s)), each 1 x H x W
    float32 per slice; the conv's output is needed by neither backward."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1, bias=False), torch.nn.Sigmoid())
    _, per_slice = batch.backward_bytes(model, (1, 8, 8), mixed_precision=False)
    assert per_slice == 2 * 8 * 8 * 4


def test_the_probe_leaves_the_model_and_the_random_stream_alone():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch.backward_bytes(model, (1, 8, 8), mixed_precision=False)
    after_probe = torch.rand(3)
    torch.manual_seed(0)
    torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.5))
    assert torch.equal(after_probe, torch.rand(3))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics untouched


def test_a_batch_that_cannot_fit_is_refused_with_the_bytes_before_any_output(tmp_path, monkeypatch):
    slices = make_store(tmp_path / "slices")
    config = tiny_config("paper", batch_size="16", epochs="1", iterations_per_epoch="1")
    from unetscout.models.unet import build_model

    spec = SPEC.replace(deep_supervision=config.deep_supervision)  # as train() builds it
    fixed, per_slice = batch.backward_bytes(build_model(spec), (spec.in_channels, spec.image_size,
                                                                spec.image_size), False)
    free = fixed + 10 * per_slice  # room for 10 slices' activations, not 16
    monkeypatch.setattr(batch, "available_bytes", lambda device: free)
    with pytest.raises(UnetscoutError) as err:
        loop.train(slices, tmp_path / "run", SPEC, config, device="cpu")
    message = str(err.value)
    needed = (fixed + 16 * per_slice) / 2 ** 20  # MiB: a small network
    assert message.startswith(f"{tmp_path / 'run'}: batch_size 16 needs at least {needed:.1f} MiB")
    assert "at most 10 fit" in message
    assert not (tmp_path / "run").exists()
    loop.train(slices, tmp_path / "run", SPEC, config.replace(batch_size=10), device="cpu")
    assert (tmp_path / "run" / "done.json").exists()
