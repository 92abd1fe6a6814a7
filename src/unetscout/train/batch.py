"""The batch a job trains with: no larger than the data it is drawn from, and refused only when
it cannot fit in the device's memory.

Both rules are shared by every job that trains (`train`, `search`, `prune`, the benchmarks).

**The cap.** A batch_size larger than the slices of the split it is drawn from is lowered to that
count, said in one line and recorded as what was run (done.json's or the search summary's
batch_size; the identity keeps the configured value, which with the data determines it). The
sampler draws with replacement, so a larger batch would only repeat slices within every batch.
nnU-Net caps harder (a batch covers at most 5 % of the dataset, at least 2), but that rule would
lower the IAC-LTH paper's batch of 128 on its own data (ACDC, about 1,900 slices: 5 % is 95);
the cap here changes nothing a paper's setting asks for on a dataset it fits.

**The guard.** What cannot fit is known before the first step: the tensors autograd keeps for
the backward pass grow linearly with the batch. They are measured on the model as it will
train (frozen parts stay frozen, bf16 under the GPU path's autocast), at batches of 2 and 3, and
the line through them gives the bytes for the configured batch. That is a lower bound of what
training needs (no gradients, optimiser state or workspace in it), so the guard never refuses
a batch that would have fitted.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

from unetscout.errors import file_error
from unetscout.runs import train_mode

GIB = 2 ** 30


def capped_batch_size(batch_size: int, slices: int, job: str, where: str) -> int:
    """`batch_size`, or `slices` when it is larger (said on stderr as `unetscout JOB: ...`);
    `where` names the slices ("the 14 train slices")."""
    if batch_size <= slices:
        return batch_size
    print(f"unetscout {job}: batch_size {batch_size} lowered to {slices}, {where} "
          f"(a batch never holds more slices than it is drawn from)", file=sys.stderr, flush=True)
    return slices


def backward_bytes(model: torch.nn.Module, in_shape: tuple[int, int, int], mixed_precision: bool) -> tuple[int, int]:
    """(fixed, per slice) bytes of the tensors autograd saves for the backward pass of one
    training forward of `model` on [B, *in_shape] inputs: measured at B = 2 and 3 on a copy
    (the model's own buffers, e.g. batch-norm statistics, and the global RNG stay untouched)."""
    probe = copy.deepcopy(model).cpu()
    train_mode(probe)  # frozen parts in eval mode, as the loops run them

    def saved(batch: int) -> int:
        storages: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            # In-place activations and views share storage: count each storage once.
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.random.fork_rng(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed_precision):
            probe(torch.zeros(batch, *in_shape))
        return sum(storages.values())

    # Batches of 2 and 3, not 1: batch norm in train mode refuses one value per channel (an
    # ImageNet encoder's 1 x 1 bottleneck at a batch of 1).
    two, three = saved(2), saved(3)
    per_slice = max(three - two, 0)
    return max(two - 2 * per_slice, 0), per_slice


def available_bytes(device: torch.device) -> int | None:
    """Free memory of `device`: the GPU's free bytes, or the kernel's MemAvailable on the CPU;
    None where it cannot be read (the guard then stays silent)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_batch_memory(model: torch.nn.Module, in_shape: tuple[int, int, int], batch_size: int,
                       device: torch.device, mixed_precision: bool, path: Path) -> None:
    """Refuse, naming `path` (the file the batch_size came from or applies to), a batch whose
    saved activations alone exceed the free memory of `device`."""
    free = available_bytes(device)
    if free is None:
        return
    fixed, per_slice = backward_bytes(model, in_shape, mixed_precision)
    needed = fixed + batch_size * per_slice
    if needed <= free:
        return
    fits = max((free - fixed) // per_slice, 0) if per_slice else batch_size
    raise file_error(path, f"batch_size {batch_size} needs at least {memory_size(needed)} for the activations "
                           f"kept for the backward pass ({memory_size(per_slice)} a slice of "
                           f"{'x'.join(map(str, in_shape))}), more than the {memory_size(free)} free on {device}; "
                           f"at most {fits} fit (--set batch_size=N)")


def memory_size(nbytes: int) -> str:
    """Bytes in MiB below a GiB, else in GiB, one decimal."""
    return f"{nbytes / 2 ** 20:.1f} MiB" if nbytes < GIB else f"{nbytes / GIB:.1f} GiB"
