"""The lightweight peers as backbones: built from a spec, any slice size, described, trained with
the same presets (one output head: no deep supervision), and refused where they have no skip hook.
Each network's own architecture and published count are tested in tests/test_peer_<name>.py."""

from __future__ import annotations

import ast
import json
import re

import pytest
import torch
from test_train import make_store
from unetscout.cli import main
from unetscout.errors import UnetscoutError
from unetscout.models.describe import describe_model
from unetscout.models.peers import peer_module
from unetscout.models.spec import ModelSpec
from unetscout.models.unet import build_model
from unetscout.names import ARCHITECTURES, PEERS

from workflow_helpers import ROOT


def test_the_registry_names_the_three_peers():
    assert PEERS == ("unext", "cmunext_s", "tinyunet")
    assert [ARCHITECTURES[p].label for p in PEERS] == ["UNeXt", "CMUNeXt-S", "TinyU-Net"]
    assert not any(ARCHITECTURES[p].deep_supervision_heads or ARCHITECTURES[p].skip_hook for p in PEERS)


@pytest.mark.parametrize("backbone", PEERS)
def test_the_backbone_is_the_paper_network_unchanged(backbone):
    module = peer_module(backbone)
    spec = ModelSpec(backbone, in_channels=module.PUBLISHED_CONFIG["in_channels"],
                     num_classes=max(2, module.PUBLISHED_CONFIG["num_classes"]), image_size=64)
    torch.manual_seed(3)
    model = build_model(spec)
    torch.manual_seed(3)
    bare = module.NETWORK(spec.in_channels, spec.num_classes)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in bare.parameters())
    x = torch.randn(2, spec.in_channels, 64, 64)
    model.eval(), bare.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), bare(x))  # same seed, same weights, same function


@pytest.mark.parametrize("backbone", PEERS)
def test_any_slice_size_is_padded_and_cropped_back(backbone):
    model = build_model(ModelSpec(backbone, in_channels=1, num_classes=3, image_size=40)).eval()
    x = torch.randn(1, 1, 40, 56)
    with torch.no_grad():
        out = model(x)
        # the padded input's logits, cropped by hand: 40 -> 48 / 64 (4 + 4 or 12 + 12 rows)
        divisor = peer_module(backbone).DIVISOR
        top = (-40 % divisor) // 2
        left = (-56 % divisor) // 2
        padded = torch.nn.functional.pad(x, (left, -56 % divisor - left, top, -40 % divisor - top))
        expected = model.network(padded)[..., top:top + 40, left:left + 56]
    assert out.shape == (1, 3, 40, 56)
    torch.testing.assert_close(out, expected)


def test_a_peer_takes_no_skip_module_and_no_stage_count():
    with pytest.raises(UnetscoutError, match="fixed design, with its own skips"):
        ModelSpec("unext", 1, 2, 64, skip="attention")
    with pytest.raises(UnetscoutError, match="stages cannot be set"):
        ModelSpec("tinyunet", 1, 2, 64, stages=3)
    with pytest.raises(UnetscoutError, match="widths are its design's"):
        ModelSpec("cmunext_s", 1, 2, 64).features()


def test_describe_model_gives_count_gflops_and_widths(capsys):
    assert main(["describe-model", "--backbone", "unext", "--in-channels", "3", "--classes", "2",
                 "--size", "256"]) == 0
    out = capsys.readouterr().out
    # UNeXt at 3 -> 2 classes: the XTinyU-Net authors' 1,471.94k
    assert re.search(r"parameters\s+1,471,938", out) and "UNeXt as its paper builds it" in out
    assert re.search(r"features\s+16, 32, 128, 160, 256", out)
    info = describe_model(ModelSpec("tinyunet", 3, 2, 256))
    assert info["stages"] == 4 and info["features"] == [64, 128, 256, 512] and info["gflops"] > 1


@pytest.mark.parametrize("backbone", ["cmunext_s", "mobilenetv3_large"])  # a peer, an encoder U-Net
def test_a_one_head_backbone_trains_the_nnunet_preset_less_deep_supervision(backbone, tmp_path, capsys):
    slices = make_store(tmp_path / "slices")
    code = main(["train", str(slices), "--out", str(tmp_path / "run"), "--backbone", backbone,
                 "--preset", "nnunet", "--device", "cpu", "--set", "epochs=1", "--set", "iterations_per_epoch=2",
                 "--set", "batch_size=4", "--set", "num_workers=0"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"{backbone} has one output head; preset nnunet trains it without deep supervision" in err
    # what ran is what is recorded: the rest of the nnunet preset, deep supervision off
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["deep_supervision"] is False and config["optimizer"] == "sgd" and config["augment"] is True
    spec = json.loads((tmp_path / "run" / "model.json").read_text())
    assert spec["backbone"] == backbone and spec["deep_supervision"] is False
    assert (tmp_path / "run" / "best.pt").is_file()


def _workflow_table(name: str) -> dict:
    """A cost table of workflow/rules/resources.smk (plain Python in the .smk file)."""
    text = (ROOT / "workflow" / "rules" / "resources.smk").read_text()
    match = re.search(rf"^{name} = (\{{.*?\}})$", text, re.MULTILINE | re.DOTALL)
    return ast.literal_eval(match[1])  # a literal dict of numbers


def test_the_runtime_table_holds_the_peers_real_cost():
    costs = _workflow_table("PEER_COSTS")
    assert set(costs) == set(PEERS)
    for backbone, (gflops, first_width) in costs.items():
        info = describe_model(ModelSpec(backbone, 3, 2, 256))
        assert gflops == pytest.approx(info["gflops"], abs=0.01) and first_width == info["features"][0]
