"""Physical channel removal from a plain U-Net (models.unet.UNet): no masks.

Removing output channel c of a prunable conv (models.widths names them `enc{s}.{k}`,
`dec{lv}.{k}`) cuts row c of the conv's weight and bias and entry c of its InstanceNorm, then
column c of every layer that reads that output:
- the next conv of the same stage;
- after an encoder stage's last conv: the next stage's first conv and, through the skip, the
  decoder conv that concatenates it (`[up, skip]`, so column `up + c`); after the bottleneck,
  the transposed conv that upsamples it;
- after a decoder stage's last conv: that stage's segmentation head and the transposed conv to
  the next level up.
Each channel is normalised on its own (InstanceNorm) and LeakyReLU is pointwise, so the pruned
network computes exactly what the unpruned one computes with that channel's activation set to
zero (tests/test_prune_surgery.py checks both this and the parameter count of a fresh build).
"""

from __future__ import annotations

import torch
from torch import nn

from unetscout.errors import UnetscoutError
from unetscout.models.skips import IdentitySkip
from unetscout.models.unet import ConvNormAct, UNet
from unetscout.models.widths import parse_layer


def layer_block(model: UNet, layer: str) -> ConvNormAct:
    """The conv block (conv, norm, activation) a layer name denotes."""
    part, index, k = parse_layer(layer)
    n = model.widths.n_stages
    if part == "encoder":
        return model.encoder.stages[index][k]
    return model.decoder.stages[n - 2 - index][k]


def prunable_blocks(model: UNet) -> dict[str, ConvNormAct]:
    """Every prunable conv block by layer name, in computation order."""
    return {name: layer_block(model, name) for name, _ in model.widths.layers()}


def _keep(n: int, channel: int) -> torch.Tensor:
    return torch.tensor([i for i in range(n) if i != channel], dtype=torch.long)


def _cut(param: nn.Parameter, dim: int, keep: torch.Tensor) -> nn.Parameter:
    data = param.data.index_select(dim, keep.to(param.device)).clone()
    return nn.Parameter(data, requires_grad=param.requires_grad)


def _cut_output(block: ConvNormAct, channel: int) -> None:
    conv, norm = block[0], block[1]
    keep = _keep(conv.out_channels, channel)
    conv.weight = _cut(conv.weight, 0, keep)
    if conv.bias is not None:
        conv.bias = _cut(conv.bias, 0, keep)
    conv.out_channels -= 1
    norm.weight, norm.bias = _cut(norm.weight, 0, keep), _cut(norm.bias, 0, keep)
    norm.num_features -= 1


def _cut_input(layer: nn.Conv2d | nn.ConvTranspose2d, channel: int) -> None:
    """Drop input channel `channel`: column 1 of a conv's weight, row 0 of a transposed conv's."""
    dim = 0 if isinstance(layer, nn.ConvTranspose2d) else 1
    layer.weight = _cut(layer.weight, dim, _keep(layer.in_channels, channel))
    layer.in_channels -= 1


def remove_channel(model: UNet, layer: str, channel: int) -> None:
    """Remove output channel `channel` of `layer` and every input that reads it, in place.
    The model's widths and spec follow; parameters are new tensors (rebuild the optimiser)."""
    if not isinstance(model, UNet) or model.spec.backbone != "plain":
        raise UnetscoutError("channel pruning works on the plain U-Net")
    if not all(isinstance(m, IdentitySkip) for m in model.skip_modules):
        raise UnetscoutError("channel pruning needs identity skips (a skip module has its own channels)")
    widths = model.widths
    width = widths.layer_widths().get(layer)
    if width is None:
        raise UnetscoutError(f"no layer {layer} in this U-Net")
    if width <= 1:
        raise UnetscoutError(f"layer {layer} has one channel left; it cannot be pruned further")
    if not 0 <= channel < width:
        raise UnetscoutError(f"layer {layer} has {width} channels; no channel {channel}")
    part, index, k = parse_layer(layer)
    n = widths.n_stages
    _cut_output(layer_block(model, layer), channel)
    if part == "encoder":
        stage = model.encoder.stages[index]
        if k + 1 < len(stage):
            _cut_input(stage[k + 1][0], channel)
        elif index + 1 < n:
            _cut_input(model.encoder.stages[index + 1][0][0], channel)
            _cut_input(model.decoder.stages[n - 2 - index][0][0], widths.up[index] + channel)
        else:  # the bottleneck feeds the deepest upsampler
            _cut_input(model.decoder.upsamplers[0], channel)
    else:
        i = n - 2 - index
        stage = model.decoder.stages[i]
        if k + 1 < len(stage):
            _cut_input(stage[k + 1][0], channel)
        else:
            _cut_input(model.decoder.heads[i], channel)
            if index > 0:
                _cut_input(model.decoder.upsamplers[i + 1], channel)
    model.widths = widths.with_layer(layer, width - 1)
    model.spec = model.spec.replace(widths=model.widths.to_json())
