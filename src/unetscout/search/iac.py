"""IAC search (METHODS §4): a PC-DARTS supernet cell at every skip level of a frozen backbone,
searched bilevel (first order); plus what IAC-LTH (search.lth) shares with it.

Outputs in OUT (the `search/` folder of a skip method):
- `init_state.pt`: the supernet's initial state (cells of every level and alpha/beta), the
  lottery ticket IAC-LTH's final training resets to;
- `state.pt`: everything needed to resume, rewritten at the end of every epoch (and on
  SIGTERM mid-epoch, exit 143), like `unetscout train`'s `last.pt`;
- `search_log.jsonl` (one JSON object per epoch: alpha, beta, capped edge weights, the 98-d
  importance, p, JS per edge, tau, active ops, seconds) and `search_log.tsv` (a summary row
  per epoch);
- `genotype.json` and, last, `search_summary.json` {method, epochs_run, search_seconds,
  genotype, stopped_because, identity}: a rerun with the same identity returns at once.

The backbone is frozen: `requires_grad` off and its modules kept in eval mode, so neither
its weights nor any norm statistics move (the tests check it bit for bit).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetscout.atomic import write_json_atomic, write_text_atomic
from unetscout.data.slice_store import SliceStore
from unetscout.errors import UnetscoutError, file_error
from unetscout.models.cell import (EDGES, N_EDGES, OP_NAMES, ArchitectureParameters, SupernetCell,
                                   capped_edge_weights, edges_into)
from unetscout.models.genotype import N_INPUT_NODES, N_INTERMEDIATE_NODES, INPUTS_PER_NODE, Genotype
from unetscout.models.unet import UNet, build_model
from unetscout.progress import _fmt_seconds
from unetscout.search.config import METHODS, Backbone, SearchConfig, load_backbone
from unetscout.search.js import edge_drift, importance, op_distribution
from unetscout.train.checkpoint import load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from unetscout.train.loop import (SIGTERM_EXIT_CODE, _cpu_state, _device_settings, _StopFlag, derived_seed,
                                  resolve_device)
from unetscout.train.losses import SegmentationLoss
from unetscout.train.sampler import BatchStream, SliceSampler

TSV_COLUMNS = ("epoch", "phase", "loss", "val_loss", "lr", "active_ops", "pruned", "js_mean", "js_max", "seconds")


def cosine_power_lr(epoch: int, epochs: int, lr_max: float, lr_min: float, base: float) -> float:
    """Hundt et al.'s cosine power annealing: p_t = b^(c_t + 1), c_t = (1 + cos(pi t / T)) / 2,
    min-max rescaled from [b, b^2] to [lr_min, lr_max] (t = 0 gives lr_max, t = T lr_min)."""
    c = (1 + math.cos(math.pi * epoch / epochs)) / 2
    power = base ** (c + 1)
    return lr_min + (lr_max - lr_min) * (power - base) / (base ** 2 - base)


def discretise(alpha: torch.Tensor, beta: torch.Tensor, active: torch.Tensor, edge_cap: float,
               residual: bool = False) -> Genotype:
    """Per edge the active op with the largest alpha; per node the 2 incoming edges with the
    largest capped weight w~ (ties: the lower input node)."""
    alpha = alpha.detach().cpu().double().masked_fill(~active.cpu(), float("-inf"))
    weights = capped_edge_weights(beta.detach().cpu().double(), edge_cap).tolist()
    nodes = []
    for node in range(N_INPUT_NODES, N_INPUT_NODES + N_INTERMEDIATE_NODES):
        # sorted() is stable, so equal weights keep input-node order.
        kept = sorted(edges_into(node), key=lambda e: -weights[e])[:INPUTS_PER_NODE]
        nodes.append(tuple(sorted((EDGES[e][0], OP_NAMES[int(alpha[e].argmax())]) for e in kept)))
    return Genotype(tuple(nodes), residual)


def split_search_patients(store: SliceStore, seed: int) -> tuple[list[str], list[str]]:
    """The train split's cases divided 50/50 by patient into (train_search, val_search), seeded."""
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


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_frozen_backbone(model: UNet, backbone: Backbone) -> None:
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


def backbone_eval_mode(model: UNet) -> None:
    """Train mode for the cells, eval mode for the frozen backbone (no statistic moves)."""
    model.train()
    model.encoder.eval()
    model.decoder.eval()


class SupernetSearch:
    """The shared machinery; subclasses define `method`, the batch streams and `step`."""

    method = ""

    def __init__(self, backbone: Backbone, store: SliceStore, out: Path, config: SearchConfig,
                 device: torch.device, identity: dict[str, Any]):
        self.backbone, self.store, self.out, self.config, self.device = backbone, store, out, config, device
        self.identity = identity
        self.cuda = device.type == "cuda"
        c = config
        torch.manual_seed(c.seed)
        self.model = build_model(backbone.spec)
        load_frozen_backbone(self.model, backbone)
        self.arch = ArchitectureParameters()
        self.model.replace_skips(lambda s, u: SupernetCell(s, u, self.arch, c.partial_channels, c.edge_cap, c.residual))
        self.model.to(device)
        self.arch.to(device)
        self.initial_state = {"skip_modules": _cpu_state(self.model.skip_modules), "arch": _cpu_state(self.arch)}
        self.loss_fn = SegmentationLoss.from_config(backbone.config)
        self.cell_optimizer = self._cell_optimizer()
        self.arch_optimizer = torch.optim.Adam(self.arch.parameters(), lr=c.arch_lr)
        self.samplers = self._samplers()
        self.sampler_states = {name: s.state_dict() for name, s in self.samplers.items()}
        # Position and bookkeeping; all of it goes into state.pt.
        self.epoch, self.iteration = 0, 0
        self.sums = {"loss": 0.0, "val_loss": 0.0, "count": 0, "val_count": 0}
        self.epoch_seconds = 0.0
        self.tau = np.full(N_EDGES, c.tau0)
        self.previous_p = self._snapshot()["p"]
        self.log: list[dict[str, Any]] = []
        self.stopped_because: str | None = None

    # -- pieces subclasses fill in ----------------------------------------------------------------
    def _samplers(self) -> dict[str, SliceSampler]:
        raise NotImplementedError

    def step(self, batches: dict[str, tuple[torch.Tensor, torch.Tensor]], searching: bool) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def after_epoch(self, snapshot: dict[str, Any], searching: bool) -> dict[str, Any]:
        """JS per edge (post-warm-up); IAC-LTH also prunes here. Returns log fields."""
        js = edge_drift(snapshot["p"], self.previous_p, snapshot["active"], self.config.js_smoothing)
        return {"js": js.tolist() if searching else None, "tau": None, "pruned": []}

    # -- helpers ---------------------------------------------------------------------------------
    def _sampler(self, store: SliceStore, stream: int) -> SliceSampler:
        return SliceSampler(store, "train", self.config.batch_size, self.backbone.config.oversample_foreground,
                            seed=derived_seed(self.config.seed, stream))

    def _cell_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.skip_modules.parameters(), lr=self.config.cell_lr, momentum=0.0,
                               weight_decay=0.0)

    def loss(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        image = image.to(self.device, non_blocking=True)
        label = label.to(self.device, non_blocking=True).long()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
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
                edge = cell.edges[f"{EDGES[e][0]}_{EDGES[e][1]}"]
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

    # -- checkpoints ---------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"identity": self.identity, "epoch": self.epoch, "iteration": self.iteration,
                "arch": _cpu_state(self.arch), "skip_modules": _cpu_state(self.model.skip_modules),
                "cell_optimizer": _cpu_state(self.cell_optimizer), "arch_optimizer": _cpu_state(self.arch_optimizer),
                "samplers": self.sampler_states, "rng": rng_states(self.device), "sums": dict(self.sums),
                "epoch_seconds": self.epoch_seconds, "tau": self.tau.tolist(),
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
        restore_rng_states(state["rng"], self.device)
        self.epoch, self.iteration = state["epoch"], state["iteration"]
        self.sums, self.epoch_seconds = dict(state["sums"]), state["epoch_seconds"]
        self.tau = np.asarray(state["tau"], dtype=np.float64)
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
                      "lr": row["lr"], "active_ops": sum(len(a) for a in row["active"]),
                      "pruned": len(row["pruned"]), "js_mean": float(np.mean(js)) if js else None,
                      "js_max": float(np.max(js)) if js else None, "seconds": row["seconds"]}
            lines.append("\t".join("NaN" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))
                                   for v in values.values()))
        write_text_atomic(self.out / "search_log.tsv", "\n".join(lines) + "\n")

    # -- the loop --------------------------------------------------------------------------------
    def _run_epoch(self, streams: dict[str, BatchStream], stop: _StopFlag) -> None:
        c = self.config
        searching = self.epoch >= c.warmup_epochs
        lr = cosine_power_lr(self.epoch, c.epochs, c.cell_lr, c.cell_lr_min, c.cosine_power_base)
        for group in self.cell_optimizer.param_groups:
            group["lr"] = lr
        started = time.monotonic()
        while self.iteration < c.iterations_per_epoch:
            batches = {}
            for name, stream in streams.items():
                image, label, sampler_state = next(stream)
                batches[name] = (image, label)
                self.sampler_states[name] = sampler_state
            losses = self.step(batches, searching)
            for name, value in losses.items():
                value = float(value)
                if not math.isfinite(value):
                    raise UnetscoutError(f"{self.out}: search {name} became {value} at epoch {self.epoch + 1} "
                                         f"iteration {self.iteration + 1}; lower cell_lr or arch_lr")
                self.sums[name] += value
                self.sums["count" if name == "loss" else "val_count"] += 1
            self.iteration += 1
            if stop.raised and self.iteration < c.iterations_per_epoch:
                self.epoch_seconds += time.monotonic() - started
                self._save_state()
                print(f"unetscout search: SIGTERM: saved {self.out / 'state.pt'} at epoch {self.epoch + 1} "
                      f"iteration {self.iteration}; rerun the same command to resume", file=sys.stderr, flush=True)
                raise SystemExit(SIGTERM_EXIT_CODE)
        seconds = self.epoch_seconds + (time.monotonic() - started)
        snapshot = self._snapshot()
        extra = self.after_epoch(snapshot, searching)
        self.previous_p = snapshot["p"]
        s = self.sums
        self.log.append({
            "epoch": self.epoch + 1, "phase": "search" if searching else "warmup",
            "loss": s["loss"] / max(s["count"], 1), "val_loss": s["val_loss"] / s["val_count"] if s["val_count"] else None,
            "lr": lr, "seconds": seconds,
            "alpha": snapshot["alpha"].tolist(), "beta": snapshot["beta"].tolist(),
            "edge_weights": snapshot["edge_weights"].tolist(),
            "importance": snapshot["importance"].reshape(-1).tolist(), "p": snapshot["p"].tolist(),
            "active": [[OP_NAMES[o] for o in np.flatnonzero(row)] for row in snapshot["active"]],
            **extra})
        self.epoch, self.iteration = self.epoch + 1, 0
        self.sums = {"loss": 0.0, "val_loss": 0.0, "count": 0, "val_count": 0}
        self.epoch_seconds = 0.0
        self._write_logs()
        self._save_state()
        row = self.log[-1]
        print(f"search {self.method}: epoch {row['epoch']}/{c.epochs} ({row['phase']}) loss {row['loss']:.4f} "
              f"active ops {sum(len(a) for a in row['active'])} {seconds:.1f} s "
              f"ETA {_fmt_seconds((c.epochs - self.epoch) * seconds)}", file=sys.stderr, flush=True)

    def finished(self) -> str | None:
        """Why the search stops now, or None to go on."""
        return "epoch cap" if self.epoch >= self.config.epochs else None

    def run(self) -> dict[str, Any]:
        streams = {name: BatchStream(s, self.config.num_workers, pin_memory=self.cuda)
                   for name, s in self.samplers.items()}
        backbone_eval_mode(self.model)
        try:
            with _StopFlag() as stop:
                while (reason := self.finished()) is None:
                    self._run_epoch(streams, stop)
                    if stop.raised and self.finished() is None:
                        print(f"unetscout search: SIGTERM: saved {self.out / 'state.pt'} after epoch {self.epoch}; "
                              "rerun the same command to resume", file=sys.stderr, flush=True)
                        raise SystemExit(SIGTERM_EXIT_CODE)
        finally:
            for stream in streams.values():
                stream.close()
        genotype = discretise(self.arch.alpha, self.arch.beta, self.arch.active, self.config.edge_cap,
                              self.config.residual)
        return {"method": self.method, "epochs_run": self.epoch,
                "search_seconds": sum(row["seconds"] for row in self.log),
                "genotype": genotype.to_dict(), "stopped_because": reason, "identity": self.identity}


class IACSearch(SupernetSearch):
    """Bilevel, first order: per step an Adam step on (alpha, beta) with a val_search batch,
    then an SGD step on the cell weights with a train_search batch (warm-up: the latter only)."""

    method = "iac"

    def _samplers(self) -> dict[str, SliceSampler]:
        train_cases, val_cases = split_search_patients(self.store, self.config.seed)
        return {"val": self._sampler(store_with_train_cases(self.store, val_cases), 2),
                "train": self._sampler(store_with_train_cases(self.store, train_cases), 1)}

    def step(self, batches, searching):
        losses = {}
        if searching:
            val_loss = self.loss(*batches["val"])
            self.backward(val_loss)
            self.arch_optimizer.step()
            losses["val_loss"] = val_loss.detach()
        loss = self.loss(*batches["train"])
        self.backward(loss)
        self.cell_optimizer.step()
        losses["loss"] = loss.detach()
        return losses


SEARCH_FILES = ("search_summary.json", "genotype.json", "state.pt", "search_log.tsv", "search_log.jsonl")


def _start_afresh(out: Path, reason_file: Path) -> None:
    """A search of another backbone, method or config: the workflow reruns a job exactly when
    its inputs or parameters changed, so the old search is obsolete. Say so and search anew."""
    print(f"unetscout search: {reason_file} belongs to a search with another backbone, method or config; "
          f"discarding it and searching {out} from scratch", file=sys.stderr, flush=True)
    for name in SEARCH_FILES:
        (out / name).unlink(missing_ok=True)


def search_identity(method: str, backbone: Backbone, config: SearchConfig) -> dict[str, Any]:
    """What a finished or resumable search in OUT must match to be reused."""
    return {"method": method, "backbone": backbone.spec.to_dict(),
            "backbone_weights_sha256": file_digest(backbone.path / "best.pt"), "config": config.to_dict()}


def _check_store(backbone: Backbone, store: SliceStore, slices: Path) -> None:
    spec = backbone.spec
    for name, value in (("in_channels", len(store.channel_names)), ("num_classes", store.num_classes),
                        ("image_size", store.size)):
        if getattr(spec, name) != value:
            raise file_error(slices / "slices.json", f"the slices have {name} {value} but the backbone "
                                                     f"{backbone.path / 'model.json'} has {getattr(spec, name)}")


def run_search(method: str, backbone_dir: str | Path, slices: str | Path, out: str | Path,
               config: SearchConfig, device: str = "auto") -> Path:
    """Search a cell for the frozen backbone in BACKBONE_DIR on the slices' train split; returns OUT.

    Reruns resume from OUT/state.pt; a finished search (matching search_summary.json) returns at once.
    """
    from unetscout.search.lth import LTHSearch

    classes = {"iac": IACSearch, "iac_lth": LTHSearch}
    if method not in classes:
        raise UnetscoutError(f"unknown search method {method!r}; choose one of {', '.join(METHODS)}")
    slices, out = Path(slices), Path(out)
    backbone = load_backbone(backbone_dir)
    store = SliceStore(slices)
    _check_store(backbone, store, slices)
    identity = search_identity(method, backbone, config)
    summary_path = out / "search_summary.json"
    if summary_path.exists():
        try:
            recorded = json.loads(summary_path.read_text())
        except (OSError, json.JSONDecodeError):
            recorded = None
        if isinstance(recorded, dict) and recorded.get("identity") == identity:
            print(f"unetscout search: {out} is already searched (search_summary.json matches); nothing to do",
                  file=sys.stderr, flush=True)
            return out
        _start_afresh(out, summary_path)
    resolved = resolve_device(device)
    out.mkdir(parents=True, exist_ok=True)
    state = None
    if (out / "state.pt").exists():
        state = load_checkpoint(out / "state.pt")
        if state.get("identity") != identity:
            _start_afresh(out, out / "state.pt")
            state = None
    with _device_settings(resolved):
        search = classes[method](backbone, store, out, config, resolved, identity)
        init_path = out / "init_state.pt"
        # Rewritten unless it already belongs to this search (a rerun resuming it).
        if not init_path.exists() or load_checkpoint(init_path).get("identity") != identity:
            save_checkpoint(init_path, {**search.initial_state, "seed": config.seed, "identity": identity})
        if state is not None:
            search.resume(state)
            print(f"unetscout search: resuming {out} at epoch {search.epoch + 1} iteration {search.iteration}",
                  file=sys.stderr, flush=True)
        summary = search.run()
    Genotype.from_dict(summary["genotype"]).save(out / "genotype.json")
    write_json_atomic(summary_path, summary)
    return out
