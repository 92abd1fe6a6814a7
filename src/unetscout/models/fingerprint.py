"""A built network's fingerprint: which network it is, and which weights it starts from.

Two runs are the same experiment when they train the same network from the same weights the
same way, whatever the config called them: the XTinyU-Net pick at cap 8 and LUnet at width 8
are one flat 8-channel U-Net, and with one seed one initialisation. The statistics count such
runs as one unit (stats/tables/units.py), so the fingerprint is taken from the built model,
not from its name: the module tree as torch prints it (every layer, its channels, kernel,
stride and norm), and every tensor of the state dict.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def architecture_digest(model: nn.Module) -> str:
    """sha256 of the module tree: equal for networks built alike under different names."""
    return hashlib.sha256(repr(model).encode()).hexdigest()


def weights_digest(model: nn.Module) -> str:
    """sha256 of every state-dict entry's name, dtype, shape and bytes, in order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # Raw bytes whatever the dtype (numpy has no bfloat16): view as bytes, then copy out.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def network_fingerprint(model: nn.Module) -> dict[str, str]:
    """What done.json records under `network`: the architecture and the initial weights."""
    return {"architecture_sha256": architecture_digest(model), "initial_weights_sha256": weights_digest(model)}
