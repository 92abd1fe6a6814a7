"""What IAC and IAC-LTH share (docs/methods.md#supernet): a PC-DARTS supernet cell at every skip level of a
frozen backbone, the epoch and its accounting, logging, checkpoints and the loop.

Subclasses (`search.iac.IACSearch`, `search.lth.LTHSearch`) say which batches a step takes
and what happens after an epoch; neither imports the other.

Epoch accounting: an epoch is one pass over the search's training data at the search batch
size (rounded up to an even number of batches), and both methods push the same number of samples forward and backward through the
supernet per epoch (`batches_per_step` x `steps_per_epoch` x batch size). The counts are
logged per epoch (`passes`) and summed in `search_summary.json`, so epochs and wall-clock
compare between the methods.

The backbone is frozen: `requires_grad` off and its modules kept in eval mode, so neither
its weights nor any norm statistics move (the tests check it bit for bit).
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from unetscout.atomic import write_text_atomic
from unetscout.data.slice_store import SliceStore
from unetscout.device import fast_layout, fast_path
from unetscout.errors import UnetscoutError, file_error
from unetscout.models.cell import N_EDGES, EDGES, ArchitectureParameters, SupernetCell, edge_name
from unetscout.models.ops import OP_NAMES
from unetscout.models.genotype import Genotype
from unetscout.models.unet import UNet, build_model
from unetscout.progress import fmt_seconds
from unetscout.runs import (StopFlag, cpu_state, derived_seed, exit_resumable, restore_generator, restore_rng_states,
                            rng_states, save_checkpoint, train_mode)
from unetscout.search.config import Backbone, SearchConfig
from unetscout.search.discretise import discretise_weights
from unetscout.search.js import edge_drift, importance, op_distribution
from unetscout.train.augment import Augmenter, device_batch
from unetscout.train.losses import SegmentationLoss
from unetscout.train.batch import check_batch_memory
from unetscout.train.sampler import BatchStream, SliceSampler

TSV_COLUMNS = ("epoch", "phase", "loss", "val_loss", "lr", "passes", "active_ops", "unstable", "pruned",
               "js_mean", "js_max", "seconds")

# An epoch's batches are rounded up to a multiple of IAC's batches per step (two: a val_search
# batch for the architecture, a train_search batch for the weights), so that both methods push
# exactly the same number of samples through the supernet per epoch, however the data divides.
EPOCH_BATCH_MULTIPLE = 2

# Independent random streams of one search (derived_seed(seed, stream)).
TRAIN_STREAM, VAL_STREAM, AUGMENT_STREAM = 1, 2, 3

Batch = tuple[torch.Tensor, torch.Tensor]


def cosine_power_lr(epoch: int, epochs: int, lr_max: float, lr_min: float, base: float) -> float:
    """Hundt et al.'s cosine power annealing: p_t = b^(c_t + 1), c_t = (1 + cos(pi t / T)) / 2,
    min-max rescaled from [b, b^2] to [lr_min, lr_max] (t = 0 gives lr_max, t = T lr_min)."""
    c = (1 + math.cos(math.pi * epoch / epochs)) / 2
    power = base ** (c + 1)
    return lr_min + (lr_max - lr_min) * (power - base) / (base ** 2 - base)


def split_search_patients(store: SliceStore, seed: int) -> tuple[list[str], list[str]]:
    """The train split's cases divided 50/50 by patient into (train_search, val_search), seeded
    (callers pass the dataset's split seed: the division is a property of the dataset)."""
    cases = store.cases("train")
    patients = sorted({store.patient_of(c) for c in cases})
    if len(patients) < 2:
        raise file_error(store.path / "manifest.tsv", f"IAC needs at least 2 train patients to split into "
                                                      f"train_search / val_search, found {len(patients)}")
    order = [patients[i] for i in np.random.default_rng(seed).permutation(len(patients))]
    train_patients = set(order[: (len(order) + 1) // 2])
    return ([c for c in cases if store.patient_of(c) in train_patients],
            [c for c in cases if store.patient_of(c) not in train_patients])


def store_with_train_cases(store: SliceStore, cases: list[str]) -> SliceStore:
    """A view of `store` whose "train" split is exactly `cases` (others: no split), so the
    ordinary SliceSampler draws from a search subset without a copy of the data."""
    view = copy.copy(store)
    view.manifest = store.manifest.assign(split=np.where(store.manifest["case"].isin(cases), "train", "-"))
    return view


def load_frozen_backbone(model: torch.nn.Module, backbone: Backbone) -> None:
    """Load the backbone's trained weights into `model` (strict outside the skip modules) and
    freeze them."""
    expected = model.backbone_state_dict()
    state = {k: v for k, v in backbone.state.items() if not k.startswith("skip_modules.")}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        first = (missing or unexpected or wrong)[0]
        raise file_error(backbone.path / "best.pt", f"weights do not match model.json ({len(missing)} missing, "
                                                    f"{len(unexpected)} unexpected, {len(wrong)} of other shape; "
                                                    f"first {first})")
    model.load_state_dict(state, strict=False)
    for name, parameter in model.named_parameters():
        if not name.startswith("skip_modules."):
            parameter.requires_grad_(False)


class SupernetSearch:
    """The shared machinery. Subclasses set `method` and `batches_per_step` and define
    `_samplers` and `step`; IAC-LTH also
    `after_epoch` and `finished`."""

    method = ""
    batches_per_step = 1

    def __init__(self, backbone: Backbone, store: SliceStore, out: Path, config: SearchConfig,
                 device: torch.device, identity: dict[str, Any], mixed_precision: bool | None = None):
        """`mixed_precision`: the GPU path (bf16 autocast, channels-last supernet and batches);
        by default `unetscout.device.fast_path(device)` (CUDA only); a test may switch it on on the CPU."""
        self.backbone, self.store, self.out, self.config, self.device = backbone, store, out, config, device
        self.identity = identity
        self.fast_path = fast_path(device) if mixed_precision is None else mixed_precision
        c = config
        torch.manual_seed(c.seed)
        self.model = build_model(backbone.spec)
        load_frozen_backbone(self.model, backbone)
        self.arch = ArchitectureParameters()
        self.model.replace_skips(lambda s, u: SupernetCell(s, u, self.arch, c.partial_channels, c.edge_cap, c.residual))
        spec = backbone.spec
        check_batch_memory(self.model, (spec.in_channels, spec.image_size, spec.image_size), c.batch_size, device,
                           self.fast_path, out)
        self.model = fast_layout(self.model.to(device), self.fast_path)
        self.arch.to(device)
        self.initial_state = {"skip_modules": cpu_state(self.model.skip_modules), "arch": cpu_state(self.arch)}
        self.loss_fn = SegmentationLoss.from_config(backbone.config)
        self.cell_optimizer = self._cell_optimizer()
        self.arch_optimizer = torch.optim.Adam(self.arch.parameters(), lr=c.arch_lr)
        # Search augments exactly when the backbone's preset does (docs/methods.md#supernet).
        self.augment_rng: torch.Generator | None = None
        self.augmenter: Augmenter | None = None
        if backbone.config.augment:
            self.augment_rng = torch.Generator(device=device)
            self.augment_rng.manual_seed(derived_seed(c.seed, AUGMENT_STREAM))
            self.augmenter = Augmenter(backbone.config, self.augment_rng)
        self.samplers = self._samplers()
        self.sampler_states = {name: s.state_dict() for name, s in self.samplers.items()}
        self.steps_per_epoch = self._batches_per_epoch() // self.batches_per_step
        # Position and bookkeeping; all of it goes into state.pt.
        self.epoch, self.iteration = 0, 0
        self.sums = {"loss": 0.0, "val_loss": 0.0, "count": 0, "val_count": 0, "passes": 0}
        self.epoch_seconds = 0.0
        self.tau = np.full(N_EDGES, c.tau0_absolute if c.tau_rule == "absolute" else np.nan)
        self.js_reference: np.ndarray | None = None
        self.previous_p = self._snapshot()["p"]
        self.log: list[dict[str, Any]] = []

    # -- pieces subclasses fill in ----------------------------------------------------------------
    @staticmethod
    def streams(store: SliceStore) -> dict[str, tuple[SliceStore, int]]:
        """The batch streams a step draws from: name -> (a view of `store` whose train split is
        the stream's slices, the stream's seed offset)."""
        raise NotImplementedError

    def _samplers(self) -> dict[str, SliceSampler]:
        return {name: self._sampler(view, stream) for name, (view, stream) in self.streams(self.store).items()}

    def _batches_per_epoch(self) -> int:
        """One pass over the search's training data (every sampler's slices: train_search and
        val_search for IAC, the train split for IAC-LTH) at the search batch size, or the
        `iterations_per_epoch` override; rounded up to a multiple of EPOCH_BATCH_MULTIPLE."""
        batches = self.config.iterations_per_epoch or -(-sum(len(s.index) for s in self.samplers.values())
                                                         // self.config.batch_size)
        return EPOCH_BATCH_MULTIPLE * -(-batches // EPOCH_BATCH_MULTIPLE)

    def step(self, draw: Callable[[str], Batch], searching: bool) -> dict[str, torch.Tensor]:
        """One optimisation step; `draw(name)` gives the next batch of stream `name`."""
        raise NotImplementedError

    def after_epoch(self, snapshot: dict[str, Any], searching: bool) -> dict[str, Any]:
        """Log fields of the epoch's drift; IAC-LTH also tests stability and prunes here."""
        js = edge_drift(snapshot["p"], self.previous_p, snapshot["active"], self.config.js_smoothing)
        return {"js": js.tolist() if searching else None, "tau": None,
                "decision": ["search" if searching else "warmup"] * N_EDGES, "pruned": []}

    def finished(self) -> str | None:
        """Why the search stops now, or None to go on."""
        return "epoch cap" if self.epoch >= self.config.epochs else None

    def summary_fields(self) -> dict[str, Any]:
        """Method-specific entries of search_summary.json."""
        return {"floor_bound": None, "unstable_decisions": None, "stability_rule": None,
                "absolute_rule_stop_epoch": None, "absolute_rule_floor_bound": None}

    # -- helpers ---------------------------------------------------------------------------------
    def _sampler(self, store: SliceStore, stream: int) -> SliceSampler:
        return SliceSampler(store, "train", self.config.batch_size, self.backbone.config.oversample_foreground,
                            seed=derived_seed(self.config.seed, stream))

    def _cell_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.skip_modules.parameters(), lr=self.config.cell_lr, momentum=0.0,
                               weight_decay=0.0)

    def loss(self, batch: Batch) -> torch.Tensor:
        image, label = batch
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.fast_path):
            outputs = self.model(image)
        return self.loss_fn(outputs, label)

    def backward(self, loss: torch.Tensor) -> None:
        self.cell_optimizer.zero_grad(set_to_none=True)
        self.arch_optimizer.zero_grad(set_to_none=True)
        loss.backward()

    def remove_pruned_ops(self) -> None:
        """Delete from every cell the ops the active mask has switched off (after a prune or
        on resume); the cell optimiser is rebuilt over the remaining weights."""
        active = self.arch.active.cpu()
        for cell in self.model.skip_modules:
            for e in range(N_EDGES):
                edge = cell.edges[edge_name(*EDGES[e])]
                for name in list(edge.ops):
                    if not active[e, OP_NAMES.index(name)]:
                        edge.remove(name)
        self.cell_optimizer = self._cell_optimizer()

    @torch.no_grad()
    def _snapshot(self) -> dict[str, Any]:
        ops = self.arch.op_weights().double().cpu().numpy()
        edges = self.arch.edge_weights(self.config.edge_cap).double().cpu().numpy()
        active = self.arch.active.cpu().numpy().copy()  # pruning must not rewrite a logged snapshot
        imp = importance(ops, edges)
        return {"alpha": self.arch.alpha.detach().cpu().double().numpy(),
                "beta": self.arch.beta.detach().cpu().double().numpy(),
                "edge_weights": edges, "importance": imp, "p": op_distribution(imp, active), "active": active}

    def genotype(self) -> Genotype:
        snapshot = self._snapshot()
        return discretise_weights(snapshot["alpha"], snapshot["edge_weights"], snapshot["active"],
                                  self.config.residual, self.config.partial_channels)

    # -- checkpoints ---------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"identity": self.identity, "epoch": self.epoch, "iteration": self.iteration,
                "arch": cpu_state(self.arch), "skip_modules": cpu_state(self.model.skip_modules),
                "cell_optimizer": cpu_state(self.cell_optimizer), "arch_optimizer": cpu_state(self.arch_optimizer),
                "samplers": self.sampler_states, "rng": rng_states(self.device), "device_type": self.device.type,
                "augment_rng": self.augment_rng.get_state() if self.augment_rng is not None else None,
                "sums": dict(self.sums), "epoch_seconds": self.epoch_seconds, "tau": self.tau.tolist(),
                "js_reference": None if self.js_reference is None else self.js_reference.tolist(),
                "previous_p": self.previous_p.tolist(), "log": self.log}

    def resume(self, state: dict[str, Any]) -> None:
        self.arch.load_state_dict(state["arch"])
        self.remove_pruned_ops()
        self.model.skip_modules.load_state_dict(state["skip_modules"])
        self.cell_optimizer.load_state_dict(state["cell_optimizer"])
        self.arch_optimizer.load_state_dict(state["arch_optimizer"])
        for name, sampler in self.samplers.items():
            sampler.load_state_dict(state["samplers"][name])
        self.sampler_states = state["samplers"]
        if self.augment_rng is not None:
            restore_generator(self.augment_rng, state, "augment_rng", self.device,
                              derived_seed(self.config.seed, 1000 + state["epoch"]), "search")
        restore_rng_states(state["rng"], self.device)
        self.epoch, self.iteration = state["epoch"], state["iteration"]
        self.sums, self.epoch_seconds = dict(state["sums"]), state["epoch_seconds"]
        self.tau = np.asarray(state["tau"], dtype=np.float64)
        reference = state.get("js_reference")
        self.js_reference = None if reference is None else np.asarray(reference, dtype=np.float64)
        self.previous_p = np.asarray(state["previous_p"], dtype=np.float64)
        self.log = list(state["log"])

    def _save_state(self) -> None:
        save_checkpoint(self.out / "state.pt", self.state())

    def _write_logs(self) -> None:
        write_text_atomic(self.out / "search_log.jsonl", "".join(json.dumps(row) + "\n" for row in self.log))
        lines = ["\t".join(TSV_COLUMNS)]
        for row in self.log:
            js = [v for v in (row["js"] or []) if v is not None]
            values = {"epoch": row["epoch"], "phase": row["phase"], "loss": row["loss"], "val_loss": row["val_loss"],
                      "lr": row["lr"], "passes": row["passes"], "active_ops": sum(len(a) for a in row["active"]),
                      "unstable": row["decision"].count("unstable"), "pruned": len(row["pruned"]),
                      "js_mean": float(np.mean(js)) if js else None,
                      "js_max": float(np.max(js)) if js else None, "seconds": row["seconds"]}
            lines.append("\t".join("NaN" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))
                                   for v in values.values()))
        write_text_atomic(self.out / "search_log.tsv", "\n".join(lines) + "\n")

    # -- the loop --------------------------------------------------------------------------------
    def _drawer(self, streams: dict[str, BatchStream]) -> Callable[[str], Batch]:
        """Batches on the device, augmented when the preset augments, counted as passes."""
        def draw(name: str) -> Batch:
            image, label, sampler_state = next(streams[name])
            self.sampler_states[name] = sampler_state
            image, label = device_batch(image, label, self.device, self.augmenter, channels_last=self.fast_path)
            self.sums["passes"] += int(image.shape[0])
            return image, label
        return draw

    def _run_epoch(self, streams: dict[str, BatchStream], stop: StopFlag) -> None:
        c = self.config
        searching = self.epoch >= c.warmup_epochs
        lr = cosine_power_lr(self.epoch, c.epochs, c.cell_lr, c.cell_lr_min, c.cosine_power_base)
        for group in self.cell_optimizer.param_groups:
            group["lr"] = lr
        draw = self._drawer(streams)
        started = time.monotonic()
        while self.iteration < self.steps_per_epoch:
            losses = self.step(draw, searching)
            for name, value in losses.items():
                value = float(value)
                if not math.isfinite(value):
                    raise UnetscoutError(f"{self.out}: search {name} became {value} at epoch {self.epoch + 1} "
                                         f"iteration {self.iteration + 1}; lower cell_lr or arch_lr")
                self.sums[name] += value
                self.sums["count" if name == "loss" else "val_count"] += 1
            self.iteration += 1
            if stop.raised and self.iteration < self.steps_per_epoch:
                self.epoch_seconds += time.monotonic() - started
                self._save_state()
                exit_resumable("search", self.out / "state.pt", f"at epoch {self.epoch + 1} iteration {self.iteration}")
        seconds = self.epoch_seconds + (time.monotonic() - started)
        snapshot = self._snapshot()
        extra = self.after_epoch(snapshot, searching)
        self.previous_p = snapshot["p"]
        s = self.sums
        self.log.append({
            "epoch": self.epoch + 1, "phase": "search" if searching else "warmup",
            "loss": s["loss"] / max(s["count"], 1), "val_loss": s["val_loss"] / s["val_count"] if s["val_count"] else None,
            "lr": lr, "steps": self.steps_per_epoch, "passes": s["passes"], "seconds": seconds,
            "alpha": snapshot["alpha"].tolist(), "beta": snapshot["beta"].tolist(),
            "edge_weights": snapshot["edge_weights"].tolist(),
            "importance": snapshot["importance"].reshape(-1).tolist(), "p": snapshot["p"].tolist(),
            "active": [[OP_NAMES[o] for o in np.flatnonzero(row)] for row in snapshot["active"]],
            **extra})
        self.epoch, self.iteration = self.epoch + 1, 0
        self.sums = {"loss": 0.0, "val_loss": 0.0, "count": 0, "val_count": 0, "passes": 0}
        self.epoch_seconds = 0.0
        self._write_logs()
        self._save_state()
        row = self.log[-1]
        unstable = row["decision"].count("unstable")
        print(f"search {self.method}: epoch {row['epoch']}/{c.epochs} ({row['phase']}) loss {row['loss']:.4f} "
              f"active ops {sum(len(a) for a in row['active'])} unstable edges {unstable} pruned {len(row['pruned'])} "
              f"{seconds:.1f} s ETA {fmt_seconds((c.epochs - self.epoch) * seconds)}", file=sys.stderr, flush=True)

    def run(self) -> dict[str, Any]:
        streams = {name: BatchStream(s, self.config.num_workers, pin_memory=self.device.type == "cuda")
                   for name, s in self.samplers.items()}
        train_mode(self.model)  # the frozen backbone in eval mode, the cells in train mode
        try:
            with StopFlag() as stop:
                while (reason := self.finished()) is None:
                    self._run_epoch(streams, stop)
                    if stop.raised and self.finished() is None:
                        exit_resumable("search", self.out / "state.pt", f"after epoch {self.epoch}")
        finally:
            for stream in streams.values():
                stream.close()
        passes = sum(row["passes"] for row in self.log)
        seconds = sum(row["seconds"] for row in self.log)
        epochs = max(self.epoch, 1)
        return {"method": self.method, "epochs_run": self.epoch, "stop_epoch": self.epoch,
                "warmup_epochs": self.config.warmup_epochs, "epoch_cap": self.config.epochs,
                "steps_per_epoch": self.steps_per_epoch, "batches_per_step": self.batches_per_step,
                "batch_size": self.config.batch_size, "forward_backward_passes": passes,
                "passes_per_epoch": passes / epochs, "search_seconds": seconds, "seconds_per_epoch": seconds / epochs,
                **self.summary_fields(),
                "genotype": self.genotype().to_dict(), "stopped_because": reason, "identity": self.identity}
