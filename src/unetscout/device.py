"""Which torch device a command runs on: one rule for every stage."""

from __future__ import annotations

import socket
from typing import TypeVar

import torch

from unetscout.errors import UnetscoutError

ModuleOrTensor = TypeVar("ModuleOrTensor", torch.nn.Module, torch.Tensor)


def resolve_device(device: str) -> torch.device:
    """`auto` -> the first CUDA GPU if there is one, else the CPU; `cpu`, `cuda`, `cuda:N` as given.

    Asking for CUDA where there is none is an error rather than a silent CPU run: a job meant for
    a GPU node that lands elsewhere should fail fast, not train for days on the CPU.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UnetscoutError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type not in ("cpu", "cuda"):
        raise UnetscoutError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UnetscoutError(f"device {device!r} requested but no CUDA GPU is available on {socket.gethostname()}")
    return resolved


def fast_path(device: torch.device) -> bool:
    """Whether work on `device` takes the GPU path: bf16 autocast for the forward pass and
    channels-last models and batches. On for CUDA only; on the CPU both would be slower, and
    the CPU runs stay bit-reproducible in float32. The one place this is decided."""
    return device.type == "cuda"


def fast_layout(x: ModuleOrTensor, fast: bool) -> ModuleOrTensor:
    """A network or a 4-D batch in the GPU path's memory layout (channels-last) when `fast`,
    else as it is: the one place the layout is set."""
    return x.to(memory_format=torch.channels_last) if fast else x
