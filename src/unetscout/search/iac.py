"""IAC search (docs/methods.md#iac-search): bilevel, first order, on the train split halved by patient into
train_search and val_search (drawn once per dataset, with its split seed).

An epoch is N / 2 alternations, N = ceil(|train| / B) rounded up to even (one pass over
train_search and val_search together; search/supernet.py): an Adam step on (alpha, beta) with a
val_search batch, then an SGD step on the cell weights with a train_search batch. In the
warm-up alpha and beta are frozen, so the val_search batch of each alternation is replaced
by a second train_search batch for the cell weights (our choice): a warm-up epoch then costs
the same passes as a search epoch, and as an IAC-LTH epoch, and val_search stays unseen by
the cell weights. IAC runs every epoch up to the cap.
"""

from __future__ import annotations

from typing import Callable

import torch

from unetscout.data.slice_store import SliceStore
from unetscout.search.supernet import TRAIN_STREAM, VAL_STREAM, Batch, SupernetSearch, split_search_patients, \
    store_with_train_cases


class IACSearch(SupernetSearch):
    method = "iac"
    batches_per_step = 2

    @staticmethod
    def streams(store: SliceStore) -> dict[str, tuple[SliceStore, int]]:
        train_cases, val_cases = split_search_patients(store, store.split_seed)
        return {"val": (store_with_train_cases(store, val_cases), VAL_STREAM),
                "train": (store_with_train_cases(store, train_cases), TRAIN_STREAM)}

    def _cell_step(self, batch: Batch) -> torch.Tensor:
        loss = self.loss(batch)
        self.backward(loss)
        self.cell_optimizer.step()
        return loss.detach()

    def step(self, draw: Callable[[str], Batch], searching: bool) -> dict[str, torch.Tensor]:
        if not searching:
            first = self._cell_step(draw("train"))
            return {"loss": (first + self._cell_step(draw("train"))) / 2}
        val_loss = self.loss(draw("val"))
        self.backward(val_loss)
        self.arch_optimizer.step()
        return {"val_loss": val_loss.detach(), "loss": self._cell_step(draw("train"))}
