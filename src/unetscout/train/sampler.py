"""Training batches of random 2-D slices, read from the slice store's memory maps.

Drawing (which slices) and assembling (reading them) are separate so that background
threads can assemble batches ahead of the loop while the draws stay strictly sequential:
the sampler's state after each draw travels with its batch, and the loop checkpoints the
state of the last batch it actually consumed. Restoring that state replays the following
batches exactly, with or without prefetching.
"""

from __future__ import annotations

import collections
import ctypes
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import torch

from unetscout.errors import UnetscoutError

if TYPE_CHECKING:
    from unetscout.data.slice_store import SliceStore


class SliceSampler:
    """Random slices of one split; a fraction `oversample_foreground` of every batch is drawn
    from slices that contain foreground (the rest uniformly from all slices), like nnU-Net's
    forced-foreground samples at the end of each batch."""

    def __init__(self, store: "SliceStore", split: str, batch_size: int, oversample_foreground: float, seed: int):
        self.cases = list(store.cases(split))
        self.index = np.asarray(store.slice_index(split), dtype=np.int64)  # [N, 2] case number, slice
        if not self.cases or len(self.index) == 0:
            raise UnetscoutError(f"{store.path}: the {split} split has no slices to train on")
        self.batch_size = batch_size
        # nnU-Net's rule: the last batch_size - round(batch_size * (1 - p)) samples are forced.
        self.n_foreground = batch_size - round(batch_size * (1 - oversample_foreground))
        # Memory maps opened once: np.load per batch would re-read every .npy header.
        self.images = [store.image(case) for case in self.cases]
        self.labels = [store.label(case) for case in self.cases]
        self.foreground = np.flatnonzero(self._slices_with_foreground())
        self.rng = np.random.default_rng(seed)

    def _slices_with_foreground(self) -> np.ndarray:
        """Bool [N]: does slice i of the index contain any label > 0 (one pass over each case)."""
        has = np.zeros(len(self.index), dtype=bool)
        for number in np.unique(self.index[:, 0]):
            label = self.labels[number]
            per_slice = label.reshape(label.shape[0], -1).max(axis=1) > 0
            rows = self.index[:, 0] == number
            has[rows] = per_slice[self.index[rows, 1]]
        return has

    def draw(self) -> np.ndarray:
        """Rows of the index [batch_size, 2] for the next batch; advances the generator."""
        n_forced = self.n_foreground if len(self.foreground) else 0
        # Always draw both parts (even when empty) so the generator advances the same way.
        uniform = self.rng.integers(0, len(self.index), size=self.batch_size - n_forced)
        forced = self.foreground[self.rng.integers(0, max(len(self.foreground), 1), size=n_forced)]
        return self.index[np.concatenate([uniform, forced])]

    def assemble(self, picks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Read the picked slices: image float32 [B, C, H, W], label uint8 [B, H, W]."""
        shape_image = self.images[picks[0, 0]].shape[1:]
        shape_label = self.labels[picks[0, 0]].shape[1:]
        image = np.empty((len(picks), *shape_image), dtype=np.float32)
        label = np.empty((len(picks), *shape_label), dtype=np.uint8)
        # One fancy-indexed read per case in the batch rather than one per sample.
        for number in np.unique(picks[:, 0]):
            rows = np.flatnonzero(picks[:, 0] == number)
            slices = picks[rows, 1]
            image[rows] = self.images[number][slices]
            label[rows] = self.labels[number][slices]
        return image, label

    def state_dict(self) -> dict:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["bit_generator"]


# Batches up to this size are served from the heap and reused after free (glibc's thresholds).
_HEAP_BATCH_BYTES = 256 * 2**20
_heap_kept = False


def keep_batch_buffers_in_the_heap() -> None:
    """glibc serves each allocation above its mmap threshold (32 MB at most by default) with a
    fresh mapping that it unmaps on free, so a 256 px batch (32 x 4 x 256² float32, 33.5 MB)
    paid page faults and zeroing every time: bench/loader.py measured 1,700 to 7,900 slices/s
    from run to run, against 8,400 to 10,000 with the batches kept in the heap. Raising the mmap
    and trim thresholds keeps a freed batch's memory for the next one. Process-wide, once; a
    no-op where the C library is not glibc."""
    global _heap_kept
    if _heap_kept:
        return
    _heap_kept = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    mallopt(m_trim_threshold, _HEAP_BATCH_BYTES)
    mallopt(m_mmap_threshold, _HEAP_BATCH_BYTES)


class BatchStream:
    """Endless batches as torch tensors, assembled by `num_workers` threads (0 = inline), each
    paired with the sampler state right after it was drawn."""

    def __init__(self, sampler: SliceSampler, num_workers: int = 0, pin_memory: bool = False):
        keep_batch_buffers_in_the_heap()
        self.sampler = sampler
        self.pin_memory = pin_memory
        self.pool = ThreadPoolExecutor(num_workers) if num_workers > 0 else None
        self.depth = num_workers + 1
        self.pending: collections.deque[tuple[Future, dict]] = collections.deque()

    def _tensors(self, picks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.sampler.assemble(picks)
        image_t, label_t = torch.from_numpy(image), torch.from_numpy(label)
        if self.pin_memory:
            image_t, label_t = image_t.pin_memory(), label_t.pin_memory()
        return image_t, label_t

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor, dict]:
        if self.pool is None:
            picks = self.sampler.draw()
            return (*self._tensors(picks), self.sampler.state_dict())
        while len(self.pending) < self.depth:
            picks = self.sampler.draw()
            self.pending.append((self.pool.submit(self._tensors, picks), self.sampler.state_dict()))
        future, state = self.pending.popleft()
        return (*future.result(), state)

    def __iter__(self) -> "BatchStream":
        return self

    def close(self) -> None:
        if self.pool is not None:
            for future, _ in self.pending:
                future.cancel()
            self.pool.shutdown(wait=True)
            self.pending.clear()
