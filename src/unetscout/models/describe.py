"""Size and cost of a model: parameter count and GFLOPs of one forward pass.

Convention (the one nnU-Net-era papers and fvcore/thop-style counters use): count the
multiply-accumulates (MACs) of convolutions, transposed convolutions and linear layers only
(norms, activations, bias adds and concatenations are left out), and report
GFLOPs = 2 * MACs / 1e9 for one image of [1, in_channels, size, size].
"""

from __future__ import annotations

import torch
from torch import nn

from unetscout.models.spec import ModelSpec
from unetscout.models.unet import build_model


def count_parameters(model: nn.Module) -> int:
    """All parameters, trainable or frozen (every segmentation head included)."""
    return sum(p.numel() for p in model.parameters())


def _macs(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    if isinstance(module, nn.ConvTranspose2d):
        # Each input pixel scatters into a kh x kw window of out_channels / groups outputs.
        kh, kw = module.kernel_size
        return inputs[0].numel() * (module.out_channels // module.groups) * kh * kw
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    return output.numel() * module.in_features  # nn.Linear


def count_macs(model: nn.Module, spec: ModelSpec) -> int:
    """Multiply-accumulates of one forward pass at [1, in_channels, size, size]."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        total += _macs(module, inputs, output)

    counted = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, counted)]
    reference = next(model.parameters())
    x = torch.zeros(1, spec.in_channels, spec.image_size, spec.image_size,
                    device=reference.device, dtype=reference.dtype)
    was_training = model.training
    try:
        model.eval()  # no norm statistics may move while we only measure
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total


def count_gflops(model: nn.Module, spec: ModelSpec) -> float:
    """GFLOPs = 2 * MACs / 1e9 of one forward pass (see the module docstring)."""
    return 2 * count_macs(model, spec) / 1e9


def describe_model(spec: ModelSpec) -> dict:
    """Parameters, GFLOPs, widths and stages of the model a spec describes.

    The model is built on the meta device: shapes only, no memory, no RNG draws, so a
    512-wide network is described instantly and the caller's random state is untouched
    (encoder U-Nets are built on the CPU, their random draws undone).
    """
    if spec.is_encoder_unet:
        # smp/timm encoders keep a few CPU tensors that a meta-device forward trips over: build
        # on the CPU instead (a second at most), with the caller's random state restored.
        with torch.random.fork_rng(devices=[]):
            model = build_model(spec)
    else:
        with torch.device("meta"):
            model = build_model(spec)
    return {
        "spec": spec.to_dict(),
        "params": count_parameters(model),
        "gflops": count_gflops(model, spec),
        "features": model.stage_widths(),
        "stages": len(model.stage_widths()),
        "input_shape": [1, spec.in_channels, spec.image_size, spec.image_size],
    }
