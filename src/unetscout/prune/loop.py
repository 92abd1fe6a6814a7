"""Gradual channel pruning during training (STAMP's loop), resumable like training.

A run starts from a freshly initialised plain U-Net whose widths double from `top_width` and
repeats one *step*: train `recovery_epochs` epochs (a fresh optimiser each step, as STAMP's
code), score the network on the validation and test splits (patient-level Dice), log it, rank
the channels (a pass over the training slices), remove `channels_per_step` channels by the
criterion (unetscout.prune.criteria, physically: unetscout.prune.surgery) and update the
targeted dropout. It stops when every layer is down to one channel, or when the validation
Dice has collapsed (below `collapse_fraction` of the best seen) once the network is past the
last checkpoint fraction, so every retraining baseline has its architecture.

Outputs in `out`: `log.tsv` (one row per step: widths of every layer, channels, parameters,
GFLOPs, loss, val and test Dice, seconds, what was removed), `at75/`, `at50/`, `at25/` (the
network at the first step with at most that share of its channels: model.json + best.pt, what
the retrained baselines rebuild), `model.json` + `best.pt` (the step with the best validation
Dice: the unbiased pick `unetscout evaluate` scores), `last.pt` (resume), and last `done.json`.
The run protocol (identity, atomic checkpoints, resume, SIGTERM) is unetscout.runs'.
"""

from __future__ import annotations

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
from unetscout.device import fast_layout, fast_path, resolve_device
from unetscout.errors import UnetscoutError, file_error
from unetscout.models.describe import count_gflops, count_parameters
from unetscout.models.spec import ModelSpec
from unetscout.models.unet import build_model
from unetscout.models.widths import CONVS_PER_STAGE, UNetWidths
from unetscout.progress import fmt_seconds
from unetscout.prune.criteria import ActivationNorms, choose, dropout_probabilities, uniform_dropout, without_channel
from unetscout.prune.log import LOG_COLUMNS
from unetscout.prune.settings import CHECKPOINT_FRACTIONS, PruneSettings
from unetscout.prune.surgery import prunable_blocks, remove_channel
from unetscout.runs import (StopFlag, cpu_state, derived_seed, device_settings, discard_run, environment,
                            exit_resumable, identity_difference, read_record, restore_generator,
                            restore_rng_states, resumable_state, rng_states, save_checkpoint, train_mode)
from unetscout.train.augment import Augmenter, device_batch
from unetscout.train.batch import check_batch_memory
from unetscout.train.loop import build_optimizer, fit_batch_to_data
from unetscout.train.losses import SegmentationLoss
from unetscout.train.presets import TrainConfig
from unetscout.train.sampler import BatchStream, SliceSampler
from unetscout.train.step import optimisation_step
from unetscout.train.validate import patient_dice

RUN_FILES = ("done.json", "last.pt", "best.pt", "log.tsv", "model.json")


def initial_spec(store: SliceStore, settings: PruneSettings, deep_supervision: bool) -> ModelSpec:
    """The plain U-Net a prune run starts from: nnU-Net's stages for the slice size, widths
    doubling from the top width."""
    probe = ModelSpec(backbone="plain", in_channels=len(store.channel_names), num_classes=store.num_classes,
                      image_size=store.size)
    widths = UNetWidths.doubling(settings.top_width, probe.n_stages, CONVS_PER_STAGE)
    return probe.replace(widths=widths.to_json(), deep_supervision=deep_supervision)


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None


class _Pruner:
    def __init__(self, store: SliceStore, out: Path, spec: ModelSpec, config: TrainConfig,
                 settings: PruneSettings, device: torch.device, identity: dict[str, Any]):
        self.store, self.out, self.config, self.settings, self.device = store, out, config, settings, device
        self.identity = identity
        self.fast_path = fast_path(device)  # bf16 autocast + channels-last (CUDA)
        torch.manual_seed(config.seed)
        self.initial_channels = UNetWidths.from_json(spec.widths).total_channels()
        model = build_model(spec)
        check_batch_memory(model, (spec.in_channels, spec.image_size, spec.image_size), config.batch_size,
                           device, self.fast_path, out)
        self.model = self._placed(model)
        self.loss_fn = SegmentationLoss.from_config(config)
        self.sampler = SliceSampler(store, "train", config.batch_size, config.oversample_foreground,
                                    seed=derived_seed(config.seed, 1))
        self.augment_rng: torch.Generator | None = None
        self.augmenter: Augmenter | None = None
        if config.augment:
            self.augment_rng = torch.Generator(device=device)
            self.augment_rng.manual_seed(derived_seed(config.seed, 2))
            self.augmenter = Augmenter(config, self.augment_rng)
        self.choice_rng = np.random.default_rng(derived_seed(config.seed, 3))
        self.dropout = uniform_dropout((name for name, _ in self.model.widths.layers()), settings.base_dropout)
        self.optimizer = build_optimizer(self.model, config)
        # Position: step in progress, and the iterations of its recovery training done.
        self.step, self.iteration = 0, 0
        self.loss_sum, self.loss_count, self.step_seconds = 0.0, 0, 0.0
        self.sampler_state = self.sampler.state_dict()
        self.log: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"val_dice": None, "step": None}
        self.best_model: dict[str, Any] | None = None
        self.best_spec: dict[str, Any] | None = None
        self.snapshots: list[float] = []   # checkpoint fractions already written
        self._apply_dropout()

    # -- state ---------------------------------------------------------------------------------
    @property
    def spec(self) -> ModelSpec:
        return self.model.spec

    def _apply_dropout(self) -> None:
        """Channel dropout after each prunable conv block (appended once, probability updated)."""
        for name, block in prunable_blocks(self.model).items():
            if not isinstance(block[-1], torch.nn.Dropout2d):
                block.append(torch.nn.Dropout2d(self.dropout[name]))
            block[-1].p = self.dropout[name]

    def _placed(self, model: torch.nn.Module) -> torch.nn.Module:
        """On the device, in the GPU path's layout (surgery's new tensors are contiguous)."""
        return fast_layout(model.to(self.device), self.fast_path)

    def _rebuild(self, spec: ModelSpec, weights: dict[str, torch.Tensor]) -> None:
        self.model = self._placed(build_model(spec))
        self.model.load_state_dict(weights)
        self._apply_dropout()
        self.optimizer = build_optimizer(self.model, self.config)

    def resume(self, state: dict[str, Any]) -> None:
        self.dropout = dict(state["dropout"])
        self._rebuild(ModelSpec.from_dict(state["spec"]), state["model"])
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        self.sampler_state = state["sampler"]
        if self.augment_rng is not None:
            restore_generator(self.augment_rng, state, "augment_rng", self.device,
                              derived_seed(self.config.seed, 1000 + state["step"]), "prune")
        restore_rng_states(state["rng"], self.device)
        self.choice_rng.bit_generator.state = state["choice_rng"]
        self.step, self.iteration = state["step"], state["iteration"]
        self.loss_sum, self.loss_count, self.step_seconds = state["loss_sum"], state["loss_count"], state["step_seconds"]
        self.log, self.best, self.snapshots = list(state["log"]), dict(state["best"]), list(state["snapshots"])
        self.best_model, self.best_spec = state["best_model"], state["best_spec"]
        if self.best_model is not None and not (self.out / "best.pt").exists():
            self._save_best()

    def _save_last(self, mid_step: bool) -> None:
        save_checkpoint(self.out / "last.pt", {
            "identity": self.identity, "step": self.step, "iteration": self.iteration,
            "spec": self.spec.to_dict(), "model": cpu_state(self.model),
            # Each step starts a fresh optimiser; only a step cut short by SIGTERM needs its state.
            "optimizer": cpu_state(self.optimizer) if mid_step else None,
            "sampler": self.sampler_state,
            "augment_rng": self.augment_rng.get_state() if self.augment_rng is not None else None,
            "rng": rng_states(self.device), "device_type": self.device.type,
            "choice_rng": self.choice_rng.bit_generator.state, "dropout": self.dropout,
            "loss_sum": self.loss_sum, "loss_count": self.loss_count, "step_seconds": self.step_seconds,
            "log": self.log, "best": self.best, "best_model": self.best_model, "best_spec": self.best_spec,
            "snapshots": self.snapshots,
        })

    def _save_best(self) -> None:
        ModelSpec.from_dict(self.best_spec).save(self.out / "model.json", channel_names=self.store.channel_names)
        save_checkpoint(self.out / "best.pt", {"model": self.best_model, "step": self.best["step"],
                                               "val_dice": self.best["val_dice"], "spec": self.best_spec})

    def _save_snapshot(self, fraction: float) -> None:
        folder = self.out / f"at{round(fraction * 100)}"
        folder.mkdir(exist_ok=True)
        self.spec.save(folder / "model.json", channel_names=self.store.channel_names)
        save_checkpoint(folder / "best.pt", {"model": cpu_state(self.model), "step": self.step,
                                             "spec": self.spec.to_dict()})

    def _write_log(self) -> None:
        lines = ["\t".join(LOG_COLUMNS)]
        for row in self.log:
            lines.append("\t".join(_cell(row[c]) for c in LOG_COLUMNS))
        write_text_atomic(self.out / "log.tsv", "\n".join(lines) + "\n")

    # -- one step ------------------------------------------------------------------------------
    def _recover(self, stream: BatchStream, stop: StopFlag) -> None:
        """The step's recovery training; on SIGTERM saves mid-step and exits 143."""
        c = self.config
        total = self.settings.recovery_epochs * c.iterations_per_epoch
        started = time.monotonic()
        train_mode(self.model)
        while self.iteration < total:
            image, label, sampler_state = next(stream)
            image, label = device_batch(image, label, self.device, self.augmenter, channels_last=self.fast_path)
            loss = optimisation_step(self.model, self.optimizer, self.loss_fn, image, label,
                                     grad_clip=c.grad_clip, mixed_precision=self.fast_path)
            value = float(loss)
            if not math.isfinite(value):
                raise UnetscoutError(f"{self.out}: training loss became {value} at pruning step {self.step} "
                                     f"iteration {self.iteration + 1}; lower the learning rate")
            self.loss_sum += value
            self.loss_count += 1
            self.iteration += 1
            self.sampler_state = sampler_state
            if stop.raised and self.iteration < total:
                self.step_seconds += time.monotonic() - started
                self._save_last(mid_step=True)
                exit_resumable("prune", self.out / "last.pt", f"at step {self.step} iteration {self.iteration}")
        self.step_seconds += time.monotonic() - started

    def _dice(self, split: str) -> float:
        score, _ = patient_dice(self.model, self.store, split, self.device, self.config.val_batch_size,
                                autocast=self.fast_path, channels_last=self.fast_path)
        return score

    @torch.no_grad()
    def _rank(self) -> dict[str, np.ndarray]:
        """STAMP's criterion over one pass of the training slices (eval mode: no dropout)."""
        self.model.eval()
        norms = ActivationNorms(prunable_blocks(self.model))
        batch = self.config.val_batch_size
        try:
            for case in self.store.cases("train"):
                image = self.store.image(case)
                for start in range(0, image.shape[0], batch):
                    x = fast_layout(torch.from_numpy(np.array(image[start:start + batch])).to(self.device),
                                    self.fast_path)
                    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.fast_path):
                        self.model(x)
        finally:
            ranks = norms.close()
        return ranks

    def _prune(self, ranks: dict[str, np.ndarray]) -> list[str]:
        removed = []
        for _ in range(self.settings.channels_per_step):
            if all(width == 1 for _, width in self.model.widths.layers()):
                break
            layer, channel = choose(self.settings.criterion, ranks, self.model.widths, self.choice_rng)
            remove_channel(self.model, layer, channel)
            ranks = without_channel(ranks, layer, channel)
            removed.append(f"{layer}:{channel}")
        self.model = self._placed(self.model)
        self.dropout = dropout_probabilities(ranks, self.settings.base_dropout)
        self._apply_dropout()
        self.optimizer = build_optimizer(self.model, self.config)
        return removed

    def _finished(self, val: float) -> str | None:
        """Why the run stops after the step just scored, or None."""
        if all(width == 1 for _, width in self.model.widths.layers()):
            return "every layer is down to one channel"
        best = self.best["val_dice"]
        past_snapshots = len(self.snapshots) == len(CHECKPOINT_FRACTIONS)
        if past_snapshots and best is not None and math.isfinite(val) and val < self.settings.collapse_fraction * best:
            return (f"validation Dice collapsed ({val:.4f} < {self.settings.collapse_fraction:g} x best "
                    f"{best:.4f})")
        return None

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        stream = BatchStream(self.sampler, self.config.num_workers, pin_memory=self.device.type == "cuda")
        reason = None
        try:
            with StopFlag() as stop:
                while True:
                    self._recover(stream, stop)
                    reason = self._score_step()
                    if reason is not None:
                        break  # done.json follows; a run killed before it redoes this step from last.pt
                    removed = self._prune(self._rank())
                    self.log[-1]["removed"] = " ".join(removed)
                    self._write_log()
                    self.step, self.iteration = self.step + 1, 0
                    self.loss_sum, self.loss_count, self.step_seconds = 0.0, 0, 0.0
                    self._save_last(mid_step=False)
                    if stop.raised:
                        exit_resumable("prune", self.out / "last.pt", f"after step {self.step - 1}")
        finally:
            stream.close()
        print(f"prune: stopped after step {self.step}: {reason}", file=sys.stderr, flush=True)
        return self._summary(reason, time.monotonic() - started)

    def _score_step(self) -> str | None:
        val, test = self._dice("val"), self._dice("test")
        widths = self.model.widths
        channels = widths.total_channels()
        fraction = channels / self.initial_channels
        self.log.append({
            "step": self.step, "channels": channels, "fraction": fraction,
            "params": count_parameters(self.model), "gflops": count_gflops(self.model, self.spec),
            "loss": self.loss_sum / max(self.loss_count, 1), "val_dice": val, "test_dice": test,
            "seconds": self.step_seconds, "removed": "", "widths": json.dumps(widths.layer_widths(), separators=(",", ":")),
        })
        best = self.best["val_dice"]
        if math.isfinite(val) and (best is None or val > best):
            self.best = {"val_dice": val, "step": self.step, "test_dice": _number(test)}
            self.best_model, self.best_spec = cpu_state(self.model), self.spec.to_dict()
            self._save_best()
        for f in CHECKPOINT_FRACTIONS:
            if fraction <= f and f not in self.snapshots:
                self._save_snapshot(f)
                self.snapshots.append(f)
        self._write_log()
        best_txt = f"{self.best['val_dice']:.4f} @ {self.best['step']}" if self.best["val_dice"] is not None else "-"
        print(f"prune: step {self.step} channels {channels} ({fraction:.0%}) params {self.log[-1]['params']} "
              f"val Dice {val:.4f} test Dice {test:.4f} (best val {best_txt}) {fmt_seconds(self.step_seconds)}",
              file=sys.stderr, flush=True)
        return self._finished(val)

    def _summary(self, reason: str, seconds_this_session: float) -> dict[str, Any]:
        scored = [row for row in self.log if math.isfinite(row["test_dice"])]
        biased = max(scored, key=lambda row: row["test_dice"]) if scored else None
        best_val = self.best["val_dice"]
        return {**self.identity, "steps": len(self.log), "stopped": reason, "batch_size": self.config.batch_size,
                "best_val_step": self.best["step"], "best_val_dice": best_val,
                "best_val_test_dice": self.best.get("test_dice"),
                "max_test_step": biased["step"] if biased else None,
                "max_test_dice": biased["test_dice"] if biased else None,
                "snapshots": [f"at{round(f * 100)}" for f in self.snapshots],
                "seconds": sum(row["seconds"] for row in self.log),
                "seconds_this_session": seconds_this_session}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _check_store(store: SliceStore, slices: Path) -> None:
    for split in ("val", "test"):
        if not store.cases(split):
            raise file_error(slices / "manifest.tsv", f"no {split} cases: pruning scores every step on val and test")


def initial_weights(model_dir: Path, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """The weights of a trained plain U-Net folder (model.json + best.pt) to start pruning from;
    its network must be the one the prune run starts with."""
    from unetscout.evaluate.predict import load_model

    trained, model = load_model(model_dir)
    convs = CONVS_PER_STAGE
    if trained.backbone != "plain" or trained.unet_widths(convs) != spec.unet_widths(convs) or any(
            getattr(trained, key) != getattr(spec, key) for key in ("in_channels", "num_classes", "image_size")):
        widths = trained.unet_widths(convs).stage_outputs() if trained.backbone == "plain" else trained.backbone
        raise file_error(Path(model_dir) / "model.json",
                         f"a different architecture from the one pruning starts with ({trained.backbone} "
                         f"{widths}, {trained.in_channels} -> {trained.num_classes} at {trained.image_size} px; "
                         f"expected plain {spec.features()}, {spec.in_channels} -> {spec.num_classes} at "
                         f"{spec.image_size} px)")
    return model.state_dict()


def prune(slices: Path, out: Path, config: TrainConfig, settings: PruneSettings, device: str = "auto",
          init: Path | None = None) -> Path:
    """Prune a plain U-Net gradually while training on `slices` into `out`; returns `out`.
    `init`: a trained plain U-Net folder to start from (default: a fresh initialisation).
    Reruns resume from `out/last.pt`; a finished run with the same identity returns at once."""
    from unetscout.runs import file_digest

    slices, out = Path(slices), Path(out)
    store = SliceStore(slices)
    spec = initial_spec(store, settings, config.deep_supervision)
    start = initial_weights(init, spec) if init is not None else None
    _check_store(store, slices)
    # The identity and config.json hold the batch as configured; the batch run (train/loop.py's
    # fit_batch_to_data) is done.json's batch_size.
    identity = {"model": spec.to_dict(), "config": config.to_dict(), "prune": settings.to_dict(),
                "data": store.data_digest()}
    if init is not None:
        identity["init"] = {"weights_sha256": file_digest(Path(init) / "best.pt")}
    done = out / "done.json"
    if done.exists():
        recorded = read_record(done)
        if recorded is not None and {k: recorded.get(k) for k in identity} == identity:
            print(f"unetscout prune: {out} is already pruned (done.json matches); nothing to do",
                  file=sys.stderr, flush=True)
            return out
        discard_run(out, RUN_FILES, done, "prune", identity_difference(recorded, identity))
    run_config = fit_batch_to_data(config, store, "prune")
    resolved = resolve_device(device)
    state = resumable_state(out / "last.pt", identity, out, RUN_FILES, "prune")
    with device_settings(resolved):
        # Built (and its batch checked against memory) before anything is written.
        pruner = _Pruner(store, out, spec, run_config, settings, resolved, identity)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "config.json", {"train": config.to_dict(), "prune": settings.to_dict()})
        write_json_atomic(out / "environment.json", environment(resolved))
        if start is not None:
            pruner.model.load_state_dict(start)
        if state is not None:
            pruner.resume(state)
            print(f"unetscout prune: resuming {out} at step {pruner.step} iteration {pruner.iteration}",
                  file=sys.stderr, flush=True)
        summary = pruner.run()
    write_json_atomic(done, summary)
    return out
