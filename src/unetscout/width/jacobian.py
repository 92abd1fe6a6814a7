"""Training-free width scores (XTinyU-Net, docs/methods.md#sensitivity-score): input-gradient norms at initialisation.

For every width cap the nnU-Net plain U-Net is built from the same RNG state (fresh
initialisation, no training) and scored on unlabeled training images, one per train case (its
central axial slice; all train cases by default, or K of them):

    s(x) = || d/dx sum_{c,h,w} f(x)_{c,h,w} ||_2     (one vector-Jacobian product with ones)
    S    = mean of s(x) over the slices, non-finite values dropped.

Only `SliceStore.image` is ever read: the score must not see labels.
"""

from __future__ import annotations

import contextlib
import random
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from unetscout.atomic import atomic_file
from unetscout.data.slice_store import SliceStore
from unetscout.device import resolve_device
from unetscout.errors import UnetscoutError, file_error
from unetscout.models.describe import count_gflops, count_parameters
from unetscout.models.spec import ModelSpec
from unetscout.models.unet import build_model
from unetscout.progress import Progress
from unetscout.width.knee import CAPS, min_max_normalise

DEFAULT_K: int | None = None                      # width.k: None = every train case ("all")
DEFAULT_SEED = 369                                # xtiny.seed
SCORE_COLUMNS = ("seed", "cap", "params", "gflops", "score", "score_norm")
__all__ = ["CAPS", "DEFAULT_K", "DEFAULT_SEED", "central_slice", "choose_slices", "scoring_cases", "input_gradient_norms", "load_slices",
           "resolve_device", "score_widths", "seed_everything", "sensitivity_score"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every CUDA device included) with one seed."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)




@contextlib.contextmanager
def _deterministic_cudnn() -> Iterator[None]:
    """Same scores on every rerun on a GPU too: no cuDNN autotuning, deterministic kernels."""
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved


def input_gradient_norms(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    """s(x) for every slice of `images` [N, C, H, W], one image per forward pass (float64 [N]).

    The model is put in eval() mode: the plain U-Net's InstanceNorm keeps no running
    statistics and it has no dropout, so eval() and train() compute the same function; eval()
    guarantees that scoring changes no module state (and stays per-image for any variant with
    batch statistics). A deep-supervision model is scored on its full-resolution output.
    """
    reference = next(iter(model.parameters()), None)
    device = reference.device if reference is not None else images.device
    dtype = reference.dtype if reference is not None else images.dtype
    was_training = model.training
    model.eval()
    norms = np.empty(len(images), dtype=np.float64)
    try:
        for i in range(len(images)):
            x = images[i:i + 1].to(device=device, dtype=dtype).detach().requires_grad_(True)
            output = model(x)
            if isinstance(output, (list, tuple)):
                output = output[0]
            # grad of the summed logits = the vector-Jacobian product with an all-ones vector.
            (gradient,) = torch.autograd.grad(output.sum(), x)
            norms[i] = float(torch.linalg.vector_norm(gradient.detach().double()))
    finally:
        model.train(was_training)
    return norms


def sensitivity_score(model: nn.Module, images: torch.Tensor) -> float:
    """S = mean over slices of s(x), non-finite s(x) dropped; NaN when none is finite."""
    norms = input_gradient_norms(model, images)
    finite = norms[np.isfinite(norms)]
    return float(finite.mean()) if finite.size else float("nan")


def scoring_cases(store: SliceStore, k: int | None, seed: int) -> list[str]:
    """The train cases whose images are scored: all of them (k None, `width.k: all`, the
    authors' protocol), or k of them evenly spread over the sorted train cases from a seeded
    random start (a systematic sample: case floor((i + u) n / k) for i < k, u ~ U[0, 1))."""
    if k is not None and k < 1:
        raise UnetscoutError(f"--k must be 'all' or >= 1 case, got {k}")
    cases = store.cases("train")
    if not cases:
        raise file_error(store.path / "manifest.tsv", "no train cases to score the widths on")
    if k is None or k >= len(cases):
        return cases
    start = np.random.default_rng(seed).random()
    positions = np.floor((np.arange(k) + start) * len(cases) / k).astype(np.int64)
    return [cases[int(p)] for p in positions]


def central_slice(image: np.ndarray) -> int:
    """The authors' central slice of a case [Z, C, H, W] (images only), as an index into it.

    Their scoring script (`score_config` in `src/score_net.py` of alvinkimbowa/nntinyunet) reads
    each train case through nnU-Net's own preprocessing, which first crops the case to the
    bounding box of its nonzero mask (`crop_to_nonzero`: nonzero in any image channel; labels
    play no part), and then takes the slice whose index in the cropped stack is half the
    stack's slice count, rounded down. Here that is `first + (last - first + 1) // 2`, with
    first..last the slices holding a nonzero voxel in any channel: the middle one for an odd
    count, the upper of the two middle ones for an even count. With no nonzero voxel at all
    nnU-Net's bounding box is the whole stack, so the pick is `len(image) // 2`; a 2-D image
    case (one slice) gives 0."""
    occupied = np.flatnonzero(np.asarray(image).reshape(len(image), -1).any(axis=1))
    if occupied.size == 0:
        return len(image) // 2
    first, last = int(occupied[0]), int(occupied[-1])
    return first + (last - first + 1) // 2


def choose_slices(store: SliceStore, k: int | None, seed: int) -> list[tuple[str, int]]:
    """(case, slice) scored: one image per chosen train case, its central axial slice."""
    return [(case, central_slice(store.image(case))) for case in scoring_cases(store, k, seed)]


def load_slices(store: SliceStore, picks: Sequence[tuple[str, int]]) -> torch.Tensor:
    """float32 [K, C, H, W] of the chosen slices (images only)."""
    return torch.from_numpy(np.stack([np.array(store.image(case)[s], dtype=np.float32) for case, s in picks]))


def _check_caps(caps: Sequence[int]) -> tuple[int, ...]:
    values = [int(c) for c in caps]
    if not values:
        raise UnetscoutError("--caps: give at least one width cap")
    if min(values) < 1 or len(set(values)) != len(values):
        raise UnetscoutError(f"--caps must be distinct positive integers, got {' '.join(map(str, values))}")
    return tuple(sorted(values, reverse=True))


def score_widths(slices: Path, out: Path, k: int | None = DEFAULT_K, seeds: Sequence[int] = (DEFAULT_SEED,),
                 caps: Sequence[int] = CAPS, device: str = "auto",
                 slice_seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """Score every (seed, cap) on the same train images (k None: one per train case) and write
    `scores.tsv` atomically.

    Columns: seed, cap, params, gflops, score, score_norm (min-max over the caps of a seed).
    """
    caps = _check_caps(caps)
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise UnetscoutError(f"--seeds: give one or more distinct seeds, got {' '.join(map(str, seeds)) or 'none'}")
    store = SliceStore(slices)
    picks = choose_slices(store, k, slice_seed)
    images = load_slices(store, picks)
    resolved = resolve_device(device)
    patients = len({store.patient_of(case) for case, _ in picks})
    if k is not None and len(picks) < k:
        print(f"score-widths: the train split has only {len(picks)} cases; scoring on all of them "
              f"instead of --k {k}", file=sys.stderr, flush=True)
    print(f"score-widths: the central slices of {len(picks)} train cases from {patients} patient(s) of {store.path}, "
          f"{len(caps)} caps x {len(seeds)} seed(s) on {resolved}", file=sys.stderr, flush=True)
    progress = Progress("score-widths", total=len(seeds) * len(caps), unit="configs")
    rows = []
    with _deterministic_cudnn():
        for seed in seeds:
            for cap in caps:
                spec = ModelSpec("plain", in_channels=len(store.channel_names), num_classes=store.num_classes,
                                 image_size=store.size, cap=cap)
                # The same RNG state before every build: widths differ, initial draws do not.
                seed_everything(seed)
                model = build_model(spec).to(resolved)
                started = time.monotonic()
                score = sensitivity_score(model, images)
                rows.append({"seed": seed, "cap": cap, "params": count_parameters(model),
                             "gflops": count_gflops(model, spec), "score": score})
                progress.label = (f"score-widths seed {seed} cap {cap}: S = {score:.6g} "
                                  f"({time.monotonic() - started:.1f} s)")
                progress.update(force=True)
                del model
    progress.label = "score-widths"
    progress.close()
    table = pd.DataFrame(rows, columns=SCORE_COLUMNS[:-1])
    table["score_norm"] = np.concatenate([min_max_normalise(table.loc[table["seed"] == s, "score"].to_numpy())
                                          for s in seeds])
    with atomic_file(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return table
