"""Encoder U-Nets (the IAC-LTH backbone grid): smp.Unet's parameters and cost to the unit, the
skip hook at every decoder level, any input size, ImageNet weights from a local cache, and an
IAC-LTH search plus cell training on two of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from test_search import ALWAYS_STABLE, CASES, tiny_search
from test_train import make_store, tiny_config
from unetscout.cli import main
from unetscout.errors import UnetscoutError
from unetscout.models.describe import describe_model
from unetscout.models.spec import ModelSpec
from unetscout.models.unet import build_model
from unetscout.names import ARCHITECTURES, ENCODER_UNETS
from unetscout.runs import load_checkpoint
from unetscout.search.cell_training import train_cell
from unetscout.search.run import run_search
from unetscout.train import loop

# The encoder names the paper's grid uses, written out here rather than read from the registry.
SMP_NAMES = {"vgg16": "vgg16", "resnet50": "resnet50", "mobilenetv3_large": "tu-tf_mobilenetv3_large_100",
             "efficientnetv2_s": "tu-tf_efficientnetv2_s", "efficientnetv2_m": "tu-tf_efficientnetv2_m"}


def reference_unet(backbone: str, in_channels: int, classes: int) -> torch.nn.Module:
    return smp.Unet(SMP_NAMES[backbone], encoder_weights=None, in_channels=in_channels, classes=classes)


def test_the_registry_names_the_papers_five_encoders():
    assert set(ENCODER_UNETS) == set(SMP_NAMES)
    assert {name: ARCHITECTURES[name].smp_encoder for name in ENCODER_UNETS} == SMP_NAMES


@pytest.mark.slow
@pytest.mark.parametrize("backbone", sorted(SMP_NAMES))
@pytest.mark.parametrize("in_channels, classes, size", [(4, 4, 128), (1, 2, 96)])
def test_describe_model_gives_smp_unets_parameters_and_flops(backbone, in_channels, classes, size):
    info = describe_model(ModelSpec(backbone, in_channels, classes, size))
    reference = reference_unet(backbone, in_channels, classes).eval()
    assert info["params"] == sum(p.numel() for p in reference.parameters())
    # torch's own FLOP counter on smp's model (2 FLOPs per multiply-add of convs and matmuls)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        reference(torch.zeros(1, in_channels, size, size))
    assert info["gflops"] == pytest.approx(counter.get_total_flops() / 1e9, rel=1e-12)
    assert info["features"] == list(reference.encoder.out_channels[1:])


def test_describe_model_command_prints_smps_count(capsys):
    main(["describe-model", "--backbone", "mobilenetv3_large", "--in-channels", "4", "--classes", "4",
          "--size", "128", "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == sum(p.numel() for p in reference_unet("mobilenetv3_large", 4, 4).parameters())


@pytest.mark.parametrize("backbone", ["resnet50", "mobilenetv3_large", "vgg16"])
def test_identity_hook_gives_smp_unets_output_with_the_same_weights(backbone):
    torch.manual_seed(0)
    model = build_model(ModelSpec(backbone, 3, 3, 64))
    reference = reference_unet(backbone, 3, 3)
    reference.load_state_dict(model.state_dict())  # same keys: smp's own names, no skip parameters
    x = torch.randn(2, 3, 64, 64)
    for mode in ("eval", "train"):
        getattr(model, mode)()
        getattr(reference, mode)()
        with torch.no_grad():
            assert torch.equal(model(x), reference(x)), mode


def test_skip_modules_see_each_encoder_feature_and_its_gating_signal():
    model = build_model(ModelSpec("resnet50", 1, 2, 64))
    reference = reference_unet("resnet50", 1, 2)
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self, skip_channels, up_channels):
            super().__init__()
            self.channels = (skip_channels, up_channels)

        def forward(self, skip, up):
            assert (skip.shape[1], up.shape[1]) == self.channels and skip.shape[2:] == up.shape[2:]
            seen.append(skip.shape[1])
            return torch.zeros_like(skip)

    model.replace_skips(Recorder)
    with torch.no_grad():
        model.eval()(torch.randn(1, 1, 64, 64))
    widths = list(reference.encoder.out_channels)          # input, then five stages
    assert seen == widths[1:-1][::-1]                       # every skip level, deepest first
    assert [s for s, _ in model.skip_channels()] == widths[1:-1]


def test_a_non_identity_skip_changes_the_output_not_the_backbone():
    torch.manual_seed(0)
    model = build_model(ModelSpec("mobilenetv3_large", 2, 3, 64))
    before = {k: v.clone() for k, v in model.backbone_state_dict().items()}
    x = torch.randn(1, 2, 64, 64)
    with torch.no_grad():
        plain = model.eval()(x)
        model.replace_skips("attention")
        gated = model.eval()(x)
    assert not torch.equal(plain, gated)
    assert all(torch.equal(before[k], v) for k, v in model.backbone_state_dict().items())


def test_an_input_not_divisible_by_the_stride_is_padded_and_cropped_back():
    torch.manual_seed(0)
    model = build_model(ModelSpec("resnet50", 2, 3, 64)).eval()
    reference = reference_unet("resnet50", 2, 3).eval()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(1, 2, 50, 70)                     # pads to 64 x 96: 7 + 7 rows, 13 + 13 columns
    with torch.no_grad():
        out = model(x)
        expected = reference(F.pad(x, (13, 13, 7, 7)))[..., 7:57, 13:83]
    assert out.shape == (1, 3, 50, 70)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("change, words", [
    (dict(deep_supervision=True), "no deep-supervision heads"),
    (dict(stages=4), "stages cannot be set"),
])
def test_encoder_unet_refuses_what_smp_cannot_build(change, words):
    with pytest.raises(UnetscoutError, match=words):
        build_model(ModelSpec("resnet50", 1, 2, 64, **change))


def test_encoder_weights_are_only_for_encoder_unets():
    with pytest.raises(UnetscoutError, match="encoder_weights is for encoder U-Nets"):
        ModelSpec("plain", 1, 2, 64, encoder_weights="imagenet")
    with pytest.raises(UnetscoutError, match="imagenet or absent"):
        ModelSpec("resnet50", 1, 2, 64, encoder_weights="coco")


# -- ImageNet weights from a local cache --------------------------------------------------------------

RESNET50_REVISION = "00cb74e366966d59cd9a35af57e618af9f88efe9"   # smp 0.6.0's pinned commit of the weights


def fabricated_imagenet_cache(root: Path) -> dict[str, torch.Tensor]:
    """A huggingface_hub cache holding 'ImageNet' resnet50 weights (random numbers, 3 channels) in
    the layout smp reads; returns the weights written."""
    from safetensors.torch import save_file

    encoder = smp.encoders.get_encoder("resnet50", in_channels=3, weights=None)
    generator = torch.Generator().manual_seed(7)
    state = {k: (torch.randn(v.shape, generator=generator) if v.is_floating_point() else v).contiguous()
             for k, v in encoder.state_dict().items()}
    snapshot = root / "models--smp-hub--resnet50.imagenet" / "snapshots" / RESNET50_REVISION
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    save_file(state, str(snapshot / "model.safetensors"))
    return state


@pytest.mark.slow
def test_imagenet_start_reads_the_cache_and_adapts_the_first_conv(tmp_path):
    cache = tmp_path / "weights"
    state = fabricated_imagenet_cache(cache)
    slices = make_store(tmp_path / "slices", cases=CASES)
    spec = ModelSpec("resnet50", 2, 3, 32, encoder_weights="imagenet")
    config = tiny_config("paper", epochs="1", iterations_per_epoch="1", num_workers="0")
    start = {}
    # prepare_model sees the freshly built model, after the ImageNet start and before any step
    out = loop.train(slices, tmp_path / "run", spec, config, device="cpu", weights_cache=cache,
                     prepare_model=lambda model: start.update({k: v.clone() for k, v in model.state_dict().items()}))
    assert all(torch.equal(start[f"encoder.{k}"], v) for k, v in state.items()
               if k != "conv1.weight" and v.is_floating_point())
    # two input channels from three: smp repeats the RGB filters and rescales by 3 / 2
    rgb = state["conv1.weight"]
    expected = torch.cat([rgb, rgb], dim=1)[:, :2] * 3 / 2
    assert torch.allclose(start["encoder.conv1.weight"], expected)
    assert ModelSpec.load(out / "model.json").encoder_weights == "imagenet"


def test_imagenet_start_without_the_cache_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    slices = make_store(tmp_path / "slices", cases=CASES)
    code = main(["train", str(slices), "--out", str(tmp_path / "run"), "--backbone", "resnet50",
                 "--encoder-weights", "imagenet", "--weights-cache", str(tmp_path / "empty"),
                 "--preset", "paper", "--device", "cpu", "--set", "batch_size=4"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code != 0
    assert str(tmp_path / "empty") in err and "fetch-weights resnet50" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


# -- search and cell training on encoder backbones ------------------------------------------------------

@pytest.mark.slow
# resnet50's wide skips; the workflow's grid run searches mobilenetv3_large and efficientnetv2_s.
@pytest.mark.parametrize("backbone", ["resnet50"])
def test_iac_lth_search_and_cell_training_on_an_encoder_unet(backbone, tmp_path):
    slices = make_store(tmp_path / "slices", cases=CASES)
    spec = ModelSpec(backbone, 2, 3, 32)
    config = tiny_config("paper", epochs="1", iterations_per_epoch="1", num_workers="0")
    backbone_dir = loop.train(slices, tmp_path / "backbone", spec, config, device="cpu")
    search = run_search("iac_lth", backbone_dir, slices, tmp_path / "search",
                        tiny_search(epochs="12", **ALWAYS_STABLE), device="cpu")
    summary = json.loads((search / "search_summary.json").read_text())
    assert summary["stopped_because"] == "every edge has one op"
    out = train_cell(backbone_dir, slices, search / "genotype.json", "iac_lth", tmp_path / "cell",
                     {"epochs": "1", "iterations_per_epoch": "1", "num_workers": "0"}, device="cpu")
    best = load_checkpoint(out / "best.pt")["model"]
    original = load_checkpoint(backbone_dir / "best.pt")["model"]
    assert all(torch.equal(best[k], v) for k, v in original.items())            # backbone frozen
    # each level's cell reads and writes the encoder's skip width (its 1x1 projections)
    widths = list(reference_unet(backbone, 2, 3).encoder.out_channels[1:-1])
    assert [best[f"skip_modules.{i}.preprocess_skip.weight"].shape[1] for i in range(len(widths))] == widths
    assert [best[f"skip_modules.{i}.output.weight"].shape[0] for i in range(len(widths))] == widths
    assert json.loads((out / "done.json").read_text())["init"]["method"] == "iac_lth"


def test_a_frozen_backbone_stays_in_eval_mode_through_training_and_validation(tmp_path):
    from unetscout.data.slice_store import SliceStore
    from unetscout.runs import train_mode
    from unetscout.train.validate import patient_dice

    model = build_model(ModelSpec("mobilenetv3_large", 2, 3, 32))
    model.replace_skips("attention")
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("skip_modules."))
    train_mode(model)
    frozen = [model.encoder, model.decoder, model.segmentation_head]
    assert not any(m.training for part in frozen for m in part.modules())
    assert all(m.training for m in model.skip_modules.modules())
    patient_dice(model, SliceStore(make_store(tmp_path / "slices", cases=CASES)), "val", torch.device("cpu"), 4)
    assert not any(m.training for part in frozen for m in part.modules())   # validation restores per module
    assert all(m.training for m in model.skip_modules.modules())
