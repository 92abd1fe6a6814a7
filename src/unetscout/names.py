"""The one registry of names: backbones, skip modules, skip methods, presets, and their labels.

Every other place that needs one of these lists (the config schema's enums, the CLI's choices,
the workflow's wildcards, the tables and the figures) reads it from here, so adding a name is
one line here plus the code that implements it (docs/extending.md). Plain data only: the
Snakefile imports this module before anything heavier, and `--help` must not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    """A network family a `ModelSpec.backbone` can name (models/unet.py's ENCODERS builds it)."""

    label: str
    # True: every stage has `width` channels (LUnet's flat width); False: stage i has
    # min(cap, 32 * 2**i, 512) channels (nnU-Net's doubling, capped).
    constant_width: bool = False
    # segmentation-models-pytorch's encoder name for a U-Net with a classification encoder
    # (models/encoder_unet.py); None for the nnU-Net-style designs of models/unet.py.
    smp_encoder: str | None = None
    # The module of models/peers/ that builds a lightweight peer network (XTinyU-Net's
    # comparison): a fixed design of its paper, no width settings and no skip hook.
    peer: str | None = None

    @property
    def deep_supervision_heads(self) -> bool:
        """Only the nnU-Net-style designs have a head per decoder stage; the others one output."""
        return self.smp_encoder is None and self.peer is None

    @property
    def skip_hook(self) -> bool:
        """Whether skip modules (and searched cells) can be implanted: not into a peer's own design."""
        return self.peer is None


ARCHITECTURES: dict[str, Architecture] = {
    "plain": Architecture("nnU-Net"),
    "lean": Architecture("LUnet", constant_width=True),
    "resenc": Architecture("ResEnc U-Net"),
    # The IAC-LTH backbone grid's encoder U-Nets (docs/methods.md#encoder-u-nets).
    "vgg16": Architecture("VGG-16 U-Net", smp_encoder="vgg16"),
    "resnet50": Architecture("ResNet-50 U-Net", smp_encoder="resnet50"),
    "mobilenetv3_large": Architecture("MobileNetV3-L U-Net", smp_encoder="tu-tf_mobilenetv3_large_100"),
    "efficientnetv2_s": Architecture("EfficientNetV2-S U-Net", smp_encoder="tu-tf_efficientnetv2_s"),
    "efficientnetv2_m": Architecture("EfficientNetV2-M U-Net", smp_encoder="tu-tf_efficientnetv2_m"),
    # XTinyU-Net's lightweight peers (docs/methods.md#lightweight-peers).
    "unext": Architecture("UNeXt", peer="unext"),
    "cmunext_s": Architecture("CMUNeXt-S", peer="cmunext"),
    "tinyunet": Architecture("TinyU-Net", peer="tinyunet"),
}
ENCODER_UNETS: tuple[str, ...] = tuple(name for name, a in ARCHITECTURES.items() if a.smp_encoder)
PEERS: tuple[str, ...] = tuple(name for name, a in ARCHITECTURES.items() if a.peer)
IMAGENET = "imagenet"                                       # the one pretrained start smp offers every encoder
ENCODER_WEIGHTS: tuple[str, ...] = ("none", IMAGENET)     # config spelling; "none" = from scratch
ENCODER_WEIGHTS_CACHE = "resources/weights"                 # default folder of downloaded encoder weights

# The workflow's backbone names: the architectures, plus `xtiny`, the plain U-Net at the
# width that `select-width` picks (XTinyU-Net).
XTINY = "xtiny"
BACKBONE_LABELS: dict[str, str] = {**{name: a.label for name, a in ARCHITECTURES.items()}, XTINY: "XTinyU-Net"}
BACKBONES: tuple[str, ...] = tuple(BACKBONE_LABELS)

# Skip modules at the U-Net's skip connections (models/skips.py implements each). `identity`
# is the plain U-Net's own skip, the reference ("Ref") every other skip is compared with.
IDENTITY_SKIP = "identity"
SKIP_KIND_LABELS: dict[str, str] = {
    IDENTITY_SKIP: "Ref",
    "attention": "Attention",
    "nested": "Nested",
    "resattention": "Residual Att.",
}
SKIP_KINDS: tuple[str, ...] = tuple(SKIP_KIND_LABELS)
# Hand-designed skips trained in place of the identity, with their whole network from scratch.
BASELINE_SKIPS: tuple[str, ...] = tuple(name for name in SKIP_KINDS if name != IDENTITY_SKIP)

# Searched cells (a supernet is trained) and the baseline that draws a genotype at random.
SEARCH_METHOD_LABELS: dict[str, str] = {"iac": "IAC", "iac_lth": "IAC-LTH"}
SEARCH_METHODS: tuple[str, ...] = tuple(SEARCH_METHOD_LABELS)
RANDOM_METHOD = "random"
CELL_METHODS: tuple[str, ...] = (*SEARCH_METHODS, RANDOM_METHOD)  # cells trained on the frozen backbone

# The skip stage's methods, in the tables' order, with the label tables and figures show.
METHOD_LABELS: dict[str, str] = {
    **{name: SKIP_KIND_LABELS[name] for name in BASELINE_SKIPS},
    RANDOM_METHOD: "Random cell",
    **SEARCH_METHOD_LABELS,
}
SKIP_METHODS: tuple[str, ...] = tuple(METHOD_LABELS)
REFERENCE = "ref"  # the tables' and figures' name for the identity-skip backbone itself
REFERENCE_LABEL = SKIP_KIND_LABELS[IDENTITY_SKIP]

# Training presets (train/presets.py defines each), in the tables' order.
PRESETS: tuple[str, ...] = ("paper", "nnunet_noaug", "nnunet")

# Channel-pruning criteria of the Lean U-Net study (prune/criteria.py implements each), with
# the label tables and figures show.
PRUNE_CRITERION_LABELS: dict[str, str] = {"stamp": "STAMP", "stamp_random_in_block": "STAMP block, random channel",
                                          "widest_block": "Widest block, random channel"}
PRUNE_CRITERIA: tuple[str, ...] = tuple(PRUNE_CRITERION_LABELS)

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
MODALITIES: tuple[str, ...] = ("mri", "ct")

# What the config schema's `x-names: <key>` fills into an `enum`, and `x-keys: <key>` into an
# object's keys (workflow/rules/config_check.smk).
SCHEMA_NAMES: dict[str, tuple[str, ...]] = {
    "backbones": BACKBONES,
    "architectures": tuple(ARCHITECTURES),
    "encoder_weights": ENCODER_WEIGHTS,
    "skip_methods": SKIP_METHODS,
    "cell_methods": CELL_METHODS,
    "prune_criteria": PRUNE_CRITERIA,
    "presets": PRESETS,
    "devices": DEVICES,
    "modalities": MODALITIES,
}


def backbone_label(name: str) -> str:
    """A backbone's display label; names outside the registry (e.g. a sweep's `cap16`) as they are."""
    return BACKBONE_LABELS.get(name, name)
