"""The training loop: resumable, reproducible, stoppable.

Outputs in `out`: `model.json`, `config.json`, `environment.json`, `log.tsv`, `last.pt`
(everything needed to resume, rewritten atomically at the end of every epoch), `best.pt`
(weights of the best patient-level validation Dice) and, last, `done.json`.

The run protocol (identity, atomic checkpoints, resume, SIGTERM, device settings) is
`unetscout.runs`'. A rerun on the same `out` continues from `last.pt`; on CPU a run killed at
any moment (SIGKILL included) and rerun ends with bit-identical weights to an uninterrupted
run, because every source of randomness (sampler, augmentation, global torch RNG) and the
position in the schedule are in `last.pt`. After SIGTERM `last.pt` is written mid-epoch and
the rerun continues from that exact iteration.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from unetscout.atomic import write_json_atomic, write_text_atomic
from unetscout.data.slice_store import SliceStore
from unetscout.device import fast_layout, fast_path, resolve_device
from unetscout.errors import UnetscoutError, file_error
from unetscout.models.fingerprint import network_fingerprint
from unetscout.models.spec import ModelSpec
from unetscout.models.unet import build_model
from unetscout.names import ARCHITECTURES
from unetscout.progress import fmt_seconds
from unetscout.runs import (StopFlag, cpu_state, derived_seed, device_settings, discard_run, environment,
                            exit_resumable, identity_difference, read_record, restore_generator,
                            restore_rng_states, resumable_state, rng_states, save_checkpoint, train_mode)
from unetscout.train.augment import Augmenter, device_batch
from unetscout.train.losses import SegmentationLoss
from unetscout.train.presets import TrainConfig
from unetscout.train.batch import capped_batch_size, check_batch_memory
from unetscout.train.sampler import BatchStream, SliceSampler
from unetscout.train.step import optimisation_step
from unetscout.train.validate import patient_dice

LOG_COLUMNS = ("epoch", "loss", "val_dice", "lr", "seconds", "it_per_s")

# Called on the freshly built model before the optimiser is made: it may load weights and
# switch off `requires_grad` (the optimiser only takes trainable parameters).
ModelHook = Callable[[torch.nn.Module], None]




def learning_rate(config: TrainConfig, epoch: int) -> float:
    """Learning rate of a (0-based) epoch; poly is nnU-Net's per-epoch `lr (1 - e/E)^0.9`."""
    if config.schedule == "poly":
        return config.lr * (1 - epoch / config.epochs) ** config.poly_exponent
    return config.lr


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                           weight_decay=config.weight_decay)


def run_identity(spec: ModelSpec, config: TrainConfig, data: str,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a finished or resumable run in `out` must match to be reused: the model, the
    settings, the data (`SliceStore.data_digest`: a regenerated store is other data even under
    the same case names) and, in `extra`, what a `prepare_model` hook brings in (e.g. the
    frozen backbone's weights)."""
    identity = {"model": spec.to_dict(), "config": config.to_dict(), "data": data}
    if extra:
        identity["init"] = extra
    return identity


def _json_number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


class _Trainer:
    def __init__(self, store: SliceStore, out: Path, spec: ModelSpec, config: TrainConfig,
                 device: torch.device, prepare_model: ModelHook | None, identity: dict[str, Any],
                 pretrained: dict[str, torch.Tensor] | None = None):
        self.store, self.out, self.spec, self.config, self.device = store, out, spec, config, device
        self.identity = identity  # train() computes it once, before deciding to resume or discard
        self.fast_path = fast_path(device)  # bf16 autocast + channels-last (CUDA)
        torch.manual_seed(config.seed)
        self.model = build_model(spec)
        if pretrained is not None:  # the encoder's ImageNet start; a resumed run's weights replace it
            self.model.load_state_dict(pretrained, strict=False)
        if prepare_model is not None:
            prepare_model(self.model)
        # Taken before any step (and again on resume, from the same seeded build): the tables
        # count runs with equal fingerprints and training as one unit (stats/tables/units.py).
        self.network = network_fingerprint(self.model)
        check_batch_memory(self.model, (spec.in_channels, spec.image_size, spec.image_size), config.batch_size,
                           device, self.fast_path, out)
        self.model = fast_layout(self.model.to(device), self.fast_path)
        self.optimizer = build_optimizer(self.model, config)
        self.loss_fn = SegmentationLoss.from_config(config)
        self.sampler = SliceSampler(store, "train", config.batch_size, config.oversample_foreground,
                                    seed=derived_seed(config.seed, 1))
        self.augment_rng: torch.Generator | None = None
        self.augmenter: Augmenter | None = None
        if config.augment:
            self.augment_rng = torch.Generator(device=device)
            self.augment_rng.manual_seed(derived_seed(config.seed, 2))
            self.augmenter = Augmenter(config, self.augment_rng)
        # Position and bookkeeping; all of it goes into last.pt.
        self.epoch = 0                 # 0-based epoch in progress
        self.iteration = 0             # iterations of that epoch already done
        self.loss_sum, self.loss_count = 0.0, 0
        self.epoch_seconds = 0.0       # time already spent on this epoch before a resume
        self.sampler_state = self.sampler.state_dict()
        self.best: dict[str, Any] = {"val_dice": None, "epoch": None}
        # The best weights also travel in last.pt: Snakemake deletes a job's declared outputs
        # (best.pt among them) before it reruns the job, and a resume must be able to restore them.
        self.best_model: dict[str, Any] | None = None
        self.log: list[dict[str, float]] = []
        self._pending: tuple[torch.Tensor, int, int] | None = None

    # -- checkpoints ---------------------------------------------------------------------------
    def resume(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        self.sampler_state = state["sampler"]
        if self.augment_rng is not None:
            restore_generator(self.augment_rng, state, "augment_rng", self.device,
                              derived_seed(self.config.seed, 1000 + state["epoch"]), "train")
        restore_rng_states(state["rng"], self.device)
        self.epoch, self.iteration = state["epoch"], state["iteration"]
        self.loss_sum, self.loss_count = state["loss_sum"], state["loss_count"]
        self.epoch_seconds = state["epoch_seconds"]
        self.best, self.log = dict(state["best"]), list(state["log"])
        self.best_model = state.get("best_model")
        if self.best_model is not None and not (self.out / "best.pt").exists():
            self._save_best()

    def _save_best(self) -> None:
        save_checkpoint(self.out / "best.pt", {"model": self.best_model, "epoch": self.best["epoch"],
                                               "val_dice": self.best["val_dice"], "spec": self.spec.to_dict()})

    def _save_last(self) -> None:
        save_checkpoint(self.out / "last.pt", {
            "identity": self.identity,
            "epoch": self.epoch, "iteration": self.iteration,
            "model": cpu_state(self.model), "optimizer": cpu_state(self.optimizer),
            "sampler": self.sampler_state,
            "augment_rng": self.augment_rng.get_state() if self.augment_rng is not None else None,
            "rng": rng_states(self.device), "device_type": self.device.type,
            "loss_sum": self.loss_sum, "loss_count": self.loss_count, "epoch_seconds": self.epoch_seconds,
            "best": self.best, "best_model": self.best_model, "log": self.log,
        })

    def _write_log(self) -> None:
        lines = ["\t".join(LOG_COLUMNS)]
        for row in self.log:
            lines.append("\t".join(str(row["epoch"]) if c == "epoch" else f"{row[c]:.6g}" for c in LOG_COLUMNS))
        write_text_atomic(self.out / "log.tsv", "\n".join(lines) + "\n")

    # -- one iteration ----------------------------------------------------------------------------
    def _step(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        image, label = device_batch(image, label, self.device, self.augmenter, channels_last=self.fast_path)
        return optimisation_step(self.model, self.optimizer, self.loss_fn, image, label,
                                 grad_clip=self.config.grad_clip, mixed_precision=self.fast_path)

    def _settle_pending(self) -> None:
        """Read the previous iteration's loss. Done one iteration late so the CPU never waits
        for the GPU to finish the step it just queued."""
        if self._pending is None:
            return
        loss, epoch, iteration = self._pending
        self._pending = None
        value = float(loss)
        if not math.isfinite(value):
            raise UnetscoutError(f"{self.out}: training loss became {value} at epoch {epoch + 1} iteration "
                                 f"{iteration + 1}; check the slices for NaN/Inf values or lower the learning rate")
        self.loss_sum += value
        self.loss_count += 1

    # -- one epoch ---------------------------------------------------------------------------------
    def _validate(self) -> float:
        score, _ = patient_dice(self.model, self.store, "val", self.device, self.config.val_batch_size,
                                autocast=self.fast_path, channels_last=self.fast_path)
        return score

    def _improves(self, score: float) -> bool:
        best = self.best["val_dice"]
        if best is None:
            return True
        return math.isfinite(score) and (not math.isfinite(best) or score > best)

    def _run_epoch(self, stream: BatchStream, stop: StopFlag) -> None:
        c = self.config
        lr = learning_rate(c, self.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        started, first_iteration = time.monotonic(), self.iteration
        while self.iteration < c.iterations_per_epoch:
            image, label, sampler_state = next(stream)
            loss = self._step(image, label)
            self._settle_pending()
            self._pending = (loss, self.epoch, self.iteration)
            self.iteration += 1
            self.sampler_state = sampler_state
            if stop.raised and self.iteration < c.iterations_per_epoch:
                self._settle_pending()
                self.epoch_seconds += time.monotonic() - started
                self._save_last()
                exit_resumable("train", self.out / "last.pt", f"at epoch {self.epoch + 1} iteration {self.iteration}")
        self._settle_pending()
        train_seconds = time.monotonic() - started
        it_per_s = (c.iterations_per_epoch - first_iteration) / max(train_seconds, 1e-9)
        epoch_number = self.epoch + 1
        val = float("nan")
        if epoch_number % c.val_every == 0 or epoch_number == c.epochs:
            val = self._validate()
            if self._improves(val):
                self.best = {"val_dice": val, "epoch": epoch_number}
                self.best_model = cpu_state(self.model)
                self._save_best()
        seconds = self.epoch_seconds + (time.monotonic() - started)
        self.log.append({"epoch": epoch_number, "loss": self.loss_sum / max(self.loss_count, 1),
                         "val_dice": val, "lr": lr, "seconds": seconds, "it_per_s": it_per_s})
        self.epoch, self.iteration = self.epoch + 1, 0
        self.loss_sum, self.loss_count, self.epoch_seconds = 0.0, 0, 0.0
        self._write_log()
        self._save_last()
        self._report(it_per_s)

    def _report(self, it_per_s: float) -> None:
        row, c = self.log[-1], self.config
        remaining = (c.epochs - self.epoch) * row["seconds"]  # the last epoch's time, validation included
        val = f"{row['val_dice']:.4f}" if math.isfinite(row["val_dice"]) else "-"
        best = self.best["val_dice"]
        best_txt = f" (best {best:.4f} @ {self.best['epoch']})" if best is not None and math.isfinite(best) else ""
        print(f"train: epoch {row['epoch']}/{c.epochs} loss {row['loss']:.4f} val Dice {val}{best_txt} "
              f"{it_per_s:.2f} it/s ETA {fmt_seconds(remaining)}", file=sys.stderr, flush=True)

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        stream = BatchStream(self.sampler, self.config.num_workers, pin_memory=self.device.type == "cuda")
        train_mode(self.model)  # a frozen backbone (cell training) keeps its norm statistics
        try:
            with StopFlag() as stop:
                while self.epoch < self.config.epochs:
                    self._run_epoch(stream, stop)
                    if stop.raised and self.epoch < self.config.epochs:
                        exit_resumable("train", self.out / "last.pt", f"after epoch {self.epoch}")
        finally:
            stream.close()
        if not (self.out / "best.pt").exists():
            # No validation ever scored (all NaN), or a checkpoint from before best weights were
            # carried in last.pt: the final weights are the only candidate, and say so.
            print("unetscout train: no best validation checkpoint to restore; best.pt holds the final weights",
                  file=sys.stderr, flush=True)
            self.best_model = cpu_state(self.model)
            self.best = {"val_dice": self.best["val_dice"], "epoch": self.epoch}
            self._save_best()
        final = self.log[-1]
        return {**self.identity, "network": self.network, "epochs": self.config.epochs,
                "batch_size": self.config.batch_size,
                "final_loss": _json_number(final["loss"]),
                "best_epoch": self.best["epoch"], "best_val_dice": _json_number(self.best["val_dice"]),
                "seconds": sum(row["seconds"] for row in self.log),
                "seconds_this_session": time.monotonic() - started}


def _check_store(spec: ModelSpec, store: SliceStore, slices: Path) -> None:
    meta = slices / "slices.json"
    expected = {"in_channels": len(store.channel_names), "num_classes": store.num_classes,
                "image_size": store.size}
    for name, value in expected.items():
        if getattr(spec, name) != value:
            raise file_error(meta, f"the slices have {name} {value} but the model spec says {getattr(spec, name)}")
    if not store.cases("val"):
        raise file_error(slices / "manifest.tsv", "no val cases: validation (best epoch) needs at least one")


def fit_batch_to_data(config: TrainConfig, store: SliceStore, job: str) -> TrainConfig:
    """The config with its batch no larger than the train split
    (docs/methods.md#batches-and-foreground-oversampling): what is run, recorded as
    done.json's `batch_size`."""
    train_slices = len(store.slice_index("train"))
    return config.replace(batch_size=capped_batch_size(config.batch_size, train_slices, job,
                                                       f"the {train_slices} train slices of {store.path}"))


RUN_FILES = ("done.json", "last.pt", "best.pt", "log.tsv")


def single_output_config(spec: ModelSpec, config: TrainConfig) -> TrainConfig:
    """The preset as a backbone with one output head (encoder U-Nets, the lightweight peers) can
    train it: without deep supervision, which needs a head per decoder stage. Said once, and
    recorded (config.json, done.json) as what was run."""
    if not config.deep_supervision or ARCHITECTURES[spec.backbone].deep_supervision_heads:
        return config
    print(f"unetscout train: {spec.backbone} has one output head; preset {config.preset} trains it without "
          f"deep supervision", file=sys.stderr, flush=True)
    return config.replace(deep_supervision=False)


def train(slices: Path, out: Path, spec: ModelSpec, config: TrainConfig, device: str = "auto",
          prepare_model: ModelHook | None = None, init_identity: dict[str, Any] | None = None,
          weights_cache: Path | None = None) -> Path:
    """Train `spec` on the train split of the slice store `slices` into `out`; returns `out`.

    Reruns resume from `out/last.pt`; a finished run (`done.json` with the same model and
    config) returns at once. `spec.deep_supervision` is taken from the config (off for a
    backbone with one output head, `single_output_config`).
    `prepare_model(model)` runs on the freshly built model before the optimiser is made (e.g.
    load a backbone and freeze it so only the skip modules train); `init_identity` describes
    what it loads and becomes part of the run's identity. An encoder U-Net with
    `encoder_weights: imagenet` starts from the weights in `weights_cache`
    (models.encoder_unet), read before anything is written.
    """
    slices, out = Path(slices), Path(out)
    config = single_output_config(spec, config)
    spec = spec.replace(deep_supervision=config.deep_supervision)
    store = SliceStore(slices)
    _check_store(spec, store, slices)
    # The identity and config.json hold the batch as configured (what the workflow declares, and
    # what a cell training inherits); the batch run is a function of it and the data, recorded
    # as done.json's batch_size.
    identity = run_identity(spec, config, store.data_digest(), init_identity)
    done = out / "done.json"
    if done.exists():
        recorded = read_record(done)
        if recorded is not None and {k: recorded.get(k) for k in identity} == identity:
            print(f"unetscout train: {out} is already trained (done.json matches); nothing to do",
                  file=sys.stderr, flush=True)
            return out
        discard_run(out, RUN_FILES, done, "train", identity_difference(recorded, identity))
    run_config = fit_batch_to_data(config, store, "train")
    pretrained = None
    if spec.encoder_weights is not None:
        from unetscout.models.encoder_unet import pretrained_encoder_state

        pretrained = pretrained_encoder_state(spec, weights_cache)
    resolved = resolve_device(device)
    state = resumable_state(out / "last.pt", identity, out, RUN_FILES, "train")
    with device_settings(resolved):
        # Built (and its batch checked against memory) before anything is written.
        trainer = _Trainer(store, out, spec, run_config, resolved, prepare_model, identity, pretrained)
        out.mkdir(parents=True, exist_ok=True)
        spec.save(out / "model.json", channel_names=store.channel_names)
        write_json_atomic(out / "config.json", config.to_dict())
        write_json_atomic(out / "environment.json", environment(resolved))
        if state is not None:
            trainer.resume(state)
            print(f"unetscout train: resuming {out} at epoch {trainer.epoch + 1} iteration {trainer.iteration}",
                  file=sys.stderr, flush=True)
        summary = trainer.run()
    write_json_atomic(done, summary)
    return out
