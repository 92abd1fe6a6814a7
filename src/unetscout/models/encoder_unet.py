"""U-Nets with a classification encoder: segmentation-models-pytorch's `Unet`, skip hook added.

The IAC-LTH backbone grid (docs/methods.md#encoder-u-nets) pairs a U-Net decoder with VGG-16,
ResNet-50, MobileNetV3-Large and EfficientNetV2-S/M encoders. smp builds encoder, decoder and
head; this module keeps them under smp's own attribute names (`encoder`, `decoder`,
`segmentation_head`), so an `smp.Unet`'s state dict loads here as it is and the parameter count
is smp's to the unit. Nothing of smp is re-implemented: the only change is the order in which
the decoder's blocks are driven, so that the skip modules see the encoder's skip features
(first as a whole, `SkipModules.transform_skips`, then each before its block concatenates it,
`[up, skip_module(skip, up)]`), as in models/unet.py.
"""

from __future__ import annotations

import os
import re
import shlex
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from unetscout.errors import UnetscoutError, file_error
from unetscout.models.padding import crop_back, pad_to_multiple
from unetscout.models.skips import SkipFactory, SkipHost, SkipModules
from unetscout.models.spec import ModelSpec
from unetscout.names import ARCHITECTURES, ENCODER_WEIGHTS_CACHE, IMAGENET

ENCODER_DEPTH = 5   # smp's default: five downsamplings, total stride 32
WEIGHTS_FILE = "model.safetensors"   # what smp, and timm for the 'tu-' encoders, read from the hub
_COMMIT = re.compile(r"[0-9a-f]{40}")


def smp_encoder_name(backbone: str) -> str:
    encoder = ARCHITECTURES[backbone].smp_encoder
    if encoder is None:
        raise UnetscoutError(f"backbone {backbone!r} is not an encoder U-Net")
    return encoder


@contextmanager
def _weights_cache(cache: Path, offline: bool) -> Iterator[None]:
    """Point huggingface_hub at `cache` (and, offline, forbid the network) for one call."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_CACHE", "HF_HUB_OFFLINE")}
    os.environ["HF_HUB_CACHE"] = str(Path(cache).resolve())
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    import huggingface_hub.constants as hub  # reads the variables at import; set them live as well

    saved_hub = (hub.HF_HUB_CACHE, hub.HF_HUB_OFFLINE)
    hub.HF_HUB_CACHE, hub.HF_HUB_OFFLINE = os.environ["HF_HUB_CACHE"], offline or hub.HF_HUB_OFFLINE
    try:
        yield
    finally:
        hub.HF_HUB_CACHE, hub.HF_HUB_OFFLINE = saved_hub
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def imagenet_weights_repo(backbone: str) -> tuple[str, str | None]:
    """(huggingface repository, revision) an encoder's ImageNet weights come from: smp's pinned
    commit for its own encoders; timm's default pretrained tag for the 'tu-' ones, whose revision
    is the tag's (None: the main branch)."""
    encoder = smp_encoder_name(backbone)
    if encoder.startswith("tu-"):
        from timm.models import get_pretrained_cfg

        repo, _, revision = get_pretrained_cfg(encoder[3:]).hf_hub_id.partition("@")
        return repo, revision or None
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders[encoder]["pretrained_settings"][IMAGENET]
    return settings["repo_id"], settings["revision"]


def imagenet_weights_folder(backbone: str, cache: str | Path) -> Path:
    """The encoder's repository folder in `cache` (huggingface_hub's layout): all that
    `unetscout fetch-weights` stores of it."""
    from huggingface_hub.file_download import repo_folder_name

    repo, _ = imagenet_weights_repo(backbone)
    return Path(cache) / repo_folder_name(repo_id=repo, repo_type="model")


def imagenet_weights_file(backbone: str, cache: str | Path) -> Path:
    """The file of the encoder's ImageNet weights in `cache`, as huggingface_hub finds it offline:
    `<repository folder>/snapshots/<commit>/model.safetensors`. The commit is smp's pinned one,
    or the one the cache's `refs/<branch>` names (timm's encoders follow the main branch); while
    that ref is missing its path is returned instead: the first file an offline load misses."""
    folder = imagenet_weights_folder(backbone, cache)
    _, revision = imagenet_weights_repo(backbone)
    revision = revision or "main"
    ref = folder / "refs" / revision
    if ref.is_file():
        revision = ref.read_text().strip()
    elif not _COMMIT.fullmatch(revision):
        return ref
    return folder / "snapshots" / revision / WEIGHTS_FILE


def fetch_weights_command(backbone: str, cache: str | Path) -> str:
    """The command that puts the encoder's ImageNet weights into `cache` (cli.py's fetch-weights)."""
    return f"unetscout fetch-weights {backbone} --cache {shlex.quote(str(cache))}"


def build_smp_unet(spec: ModelSpec, pretrained_from: Path | None = None, offline: bool = True) -> nn.Module:
    """smp.Unet for the spec, from scratch; with `pretrained_from`, the encoder starts from its
    ImageNet weights, read from that folder in huggingface_hub's layout (smp and timm download
    through huggingface_hub; `unetscout fetch-weights` fills the folder). smp adapts the first
    conv to any channel count."""
    import segmentation_models_pytorch as smp

    encoder = smp_encoder_name(spec.backbone)
    arguments = dict(encoder_depth=ENCODER_DEPTH, in_channels=spec.in_channels, classes=spec.num_classes)
    if pretrained_from is None:
        return smp.Unet(encoder, encoder_weights=None, **arguments)
    # timm encoders ('tu-') take True for their default pretrained tag; smp's own take the name.
    weights: str | bool = True if encoder.startswith("tu-") else IMAGENET
    from safetensors import SafetensorError

    cache = Path(pretrained_from)
    try:
        with _weights_cache(cache, offline):
            return smp.Unet(encoder, encoder_weights=weights, **arguments)
    except SafetensorError as err:
        # The hub found the file in the cache (online too: a pinned or cached commit is not
        # downloaded again), so only deleting it helps. The whole repository folder: the file
        # may be a link to a blob, which the hub would link again without a download.
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise file_error(imagenet_weights_file(spec.backbone, cache),
                         f"corrupt ImageNet weights of encoder {encoder} (not a whole safetensors file: "
                         f"{reason}); delete {imagenet_weights_folder(spec.backbone, cache)} and run "
                         f"`{fetch_weights_command(spec.backbone, cache)}` again") from None
    except (OSError, ValueError, RuntimeError) as err:  # huggingface_hub's missing-file / offline errors
        if not offline:
            raise UnetscoutError(f"{cache}: could not download the ImageNet weights of encoder {encoder} "
                                 f"({type(err).__name__}); check the connection to huggingface.co") from None
        raise UnetscoutError(
            f"{cache}: ImageNet weights of encoder {encoder} not found offline ({type(err).__name__}); on a "
            f"machine with internet run `{fetch_weights_command(spec.backbone, cache)}` "
            "and copy that folder here") from None


def pretrained_encoder_state(spec: ModelSpec, cache: Path | None) -> dict[str, torch.Tensor]:
    """The encoder weights a spec with `encoder_weights: imagenet` starts from (`encoder.*` keys)."""
    net = build_smp_unet(spec, Path(cache if cache is not None else ENCODER_WEIGHTS_CACHE))
    return {f"encoder.{k}": v for k, v in net.encoder.state_dict().items()}


class EncoderUNet(SkipHost):
    """An smp.Unet with a skip module at every decoder level that has a skip.

    `skip_modules[i]` refines skip level i (shallowest first), like models.unet.UNet. Inputs
    whose size is not a multiple of the total stride are zero-padded evenly and the logits
    cropped back, so any slice size works. No deep supervision: smp's U-Net has one head.
    """

    deep_supervision = False

    def __init__(self, spec: ModelSpec, smp_unet: nn.Module):
        super().__init__()
        if spec.deep_supervision:
            raise UnetscoutError(f"backbone {spec.backbone} has no deep-supervision heads (smp's U-Net has "
                                 "one output); train it with deep_supervision false (the paper preset)")
        self.spec = spec
        self.encoder = smp_unet.encoder
        self.decoder = smp_unet.decoder
        self.segmentation_head = smp_unet.segmentation_head
        self.size_divisor = 2 ** ENCODER_DEPTH
        self.skip_modules = SkipModules()

    def skip_channels(self) -> list[tuple[int, int]]:
        """(skip channels, up channels) per skip level, shallowest first. The up channels are
        what each decoder block's first conv reads besides the skip."""
        skips = list(self.encoder.out_channels[1:-1])        # smp drops the input-resolution feature
        blocks = list(self.decoder.blocks)[:len(skips)]      # deepest first
        deep_first = skips[::-1]
        ups = [_first_conv(block).in_channels - skip for block, skip in zip(blocks, deep_first)]
        return list(zip(deep_first, ups))[::-1]

    def stage_widths(self) -> list[int]:
        """Channels of every encoder feature the decoder reads, shallowest first."""
        return list(self.encoder.out_channels[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, padding = pad_to_multiple(x, self.size_divisor)
        features = self.encoder(x)
        sizes = [f.shape[-2:] for f in features[:-1]][::-1]   # target size of each block, deepest first
        deep_first = features[1:][::-1]
        # The skip modules see smp's skip features as a whole, shallowest first (as skip_channels);
        # the blocks then take them deepest first.
        skips = self.skip_modules.transform_skips(features[1:-1])[::-1]
        y = self.decoder.center(deep_first[0])
        for i, block in enumerate(self.decoder.blocks):
            size = sizes[i]
            if i < len(skips):
                # smp's block upsamples then concatenates; upsampling here first hands the skip module
                # its gating signal. The block's own resize to the same size is then exact (nearest).
                up = F.interpolate(y, size=size, mode=block.interpolation_mode)
                level = len(skips) - 1 - i
                y = block(up, size[0], size[1], skip_connection=self.skip_modules[level](skips[i], up))
            else:
                y = block(y, size[0], size[1])
        return crop_back(self.segmentation_head(y), padding)


def _first_conv(block: nn.Module) -> nn.Conv2d:
    return next(m for m in block.modules() if isinstance(m, nn.Conv2d))


def build_encoder_unet(spec: ModelSpec, skip: SkipFactory | str) -> EncoderUNet:
    """Build the encoder U-Net with smp's initialisation, then its skips. ImageNet weights are
    a training start (`pretrained_encoder_state`), loaded by `unetscout train` on a fresh run
    only: rebuilding a trained model never needs them."""
    model = EncoderUNet(spec, build_smp_unet(spec))
    model.replace_skips(skip)
    return model
