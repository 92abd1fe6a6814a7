"""Predict every slice of a split with a trained model and score each patient.

Slices are predicted in batches (argmax over classes), put back together into each case's
3-D stack [X, Y, S] and scored by `metrics.score_patient_cases`; one row per patient, so
patients with several cases (ACDC ED/ES) count once, with their counts summed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import torch

from unetscout.atomic import atomic_file
from unetscout.device import fast_layout, fast_path, resolve_device
from unetscout.errors import UnetscoutError, file_error
from unetscout.evaluate.metrics import foreground_labels, score_patient_cases
from unetscout.models.spec import ModelSpec, model_channel_names
from unetscout.progress import Progress
from unetscout.runs import load_checkpoint, read_record

CHECKPOINTS = ("best", "last")
DONE = "done.json"            # a run's record, written when it has finished
UNFINISHED = "unfinished"     # patients.tsv's column when an unfinished run was scored (--allow-unfinished)


def _describe_mismatch(expected: dict, found: dict) -> str:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong_shape = [k for k in expected if k in found and tuple(expected[k].shape) != tuple(found[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing tensors (first {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensors (first {unexpected[0]})")
    if wrong_shape:
        key = wrong_shape[0]
        parts.append(f"{len(wrong_shape)} tensors with other shapes (first {key}: "
                     f"{tuple(found[key].shape)} vs {tuple(expected[key].shape)} in model.json's network)")
    return "; ".join(parts)


def load_model(model_dir: Path, checkpoint: str = "best") -> tuple[ModelSpec, torch.nn.Module]:
    """Rebuild the network from `model.json` and load `{checkpoint}.pt`'s weights into it."""
    from unetscout.models.unet import build_model

    if checkpoint not in CHECKPOINTS:
        raise UnetscoutError(f"unknown checkpoint {checkpoint!r}; choose one of {', '.join(CHECKPOINTS)}")
    model_dir = Path(model_dir)
    spec = ModelSpec.load(model_dir / "model.json")
    model = build_model(spec)
    weights = model_dir / f"{checkpoint}.pt"
    # runs' reader, as for every checkpoint of the package: train, train-cell and prune write
    # best.pt / last.pt (and prune its snapshots) through runs.save_checkpoint.
    saved = load_checkpoint(weights)
    if not isinstance(saved.get("model"), dict):
        raise file_error(weights, "not a unetscout checkpoint (expected a dict with a 'model' state_dict)")
    state = saved["model"]
    mismatch = _describe_mismatch(model.state_dict(), state)
    if mismatch:
        raise file_error(weights, f"weights do not match {model_dir / 'model.json'}: {mismatch}")
    model.load_state_dict(state)
    return spec, model


def _check_compatible(spec: ModelSpec, store, model_json: Path, slices: Path) -> None:
    checks = [("input channels", spec.in_channels, len(store.channel_names)),
              ("classes", spec.num_classes, store.num_classes),
              ("image size", spec.image_size, store.size)]
    for what, model_value, data_value in checks:
        if model_value != data_value:
            raise file_error(model_json, f"model has {what} {model_value} but {slices} has {data_value}")
    # As many channels is not enough: the same count in another order (or of other sequences)
    # feeds each learned filter the wrong image. A model.json of an older run records no names.
    trained_on = model_channel_names(model_json)
    if trained_on is not None and trained_on != list(store.channel_names):
        raise file_error(model_json, f"model was trained on channels {', '.join(trained_on)} but {slices} has "
                                     f"{', '.join(store.channel_names)}")


def finished(model_dir: Path) -> bool:
    """Whether the run in `model_dir` has finished, so its weights are the ones it reports: its
    done.json, which train, train-cell and prune write last, is there and readable; or it is a
    snapshot of a finished prune run (at75/ at50/ at25/, no done.json of their own), which that
    run's done.json lists under `snapshots`."""
    model_dir = Path(model_dir).resolve()   # "." has a name only once resolved
    if read_record(model_dir / DONE) is not None:
        return True
    parent = read_record(model_dir.parent / DONE)
    snapshots = parent.get("snapshots") if parent is not None else None
    return isinstance(snapshots, list) and model_dir.name in snapshots


def _batches(n: int, size: int) -> Iterable[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


@torch.no_grad()
def predict_case(model: torch.nn.Module, image: np.ndarray, device: torch.device,
                 batch_size: int, weights: Path, progress: Progress | None = None) -> np.ndarray:
    """Argmax labels uint8 [S, H, W] for a case's slices `image` [S, C, H, W].

    Raises a one-line error naming `weights` if the network produces non-finite logits.
    """
    fast = fast_path(device)
    labels = np.empty((image.shape[0],) + tuple(image.shape[2:]), dtype=np.uint8)
    for rows in _batches(image.shape[0], batch_size):
        # np.array copies: the memory map is read-only, and the copy is the disk read anyway.
        x = fast_layout(torch.from_numpy(np.array(image[rows], dtype=np.float32)).to(device), fast)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
            logits = model(x)
        if isinstance(logits, (list, tuple)):   # deep supervision: highest resolution first
            logits = logits[0]
        if not bool(torch.isfinite(logits).all()):
            raise file_error(weights, "the network produced non-finite logits (NaN/inf weights or inputs?)")
        labels[rows] = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
        if progress is not None:
            progress.update(rows.stop - rows.start)
    return labels


def _to_stack(slices_first: np.ndarray) -> np.ndarray:
    """[S, X, Y] (how slices are stored) -> [X, Y, S] (the volume's axis order for its spacing)."""
    return np.moveaxis(np.asarray(slices_first), 0, -1)


def predict_split(model_dir: Path, slices: Path, split: str = "test", checkpoint: str = "best",
                  device: str = "auto", batch_size: int = 64, allow_unfinished: bool = False) -> pd.DataFrame:
    """Per-patient Dice and HD95 of a trained model on one split of a slices folder.

    An unfinished run (`finished`) is refused: its best.pt is the best of the epochs it got to,
    not of its schedule. With `allow_unfinished` it is scored, and every row says so
    (column `unfinished`, true), so the tables can tell.
    """
    from unetscout.data.slice_store import SliceStore

    if batch_size < 1:
        raise UnetscoutError(f"batch size must be >= 1, got {batch_size}")
    model_dir, slices = Path(model_dir), Path(slices)
    unfinished = not finished(model_dir)
    if unfinished and not allow_unfinished:
        raise file_error(model_dir, f"unfinished run (no {DONE}: its training was interrupted or is still "
                                    f"running); rerun its job to finish it, or pass --allow-unfinished to "
                                    f"score its {checkpoint}.pt anyway")
    store = SliceStore(slices)
    spec, model = load_model(model_dir, checkpoint)
    _check_compatible(spec, store, model_dir / "model.json", slices)
    cases = store.cases(split)
    if not cases:
        raise file_error(slices, f"split {split!r} has no cases")
    target = resolve_device(device)
    model = fast_layout(model.to(target).eval(), fast_path(target))
    weights = model_dir / f"{checkpoint}.pt"

    by_patient: dict[str, list[str]] = {}
    for case in cases:
        by_patient.setdefault(str(store.patient_of(case)), []).append(case)
    total = sum(int(store.image(case).shape[0]) for case in cases)
    progress = Progress(f"evaluate {split}", total=total, unit="slice")
    rows = []
    for patient, patient_cases in sorted(by_patient.items()):
        scored = []
        n_slices = 0
        for case in patient_cases:
            image = store.image(case)
            pred = predict_case(model, image, target, batch_size, weights, progress)
            ref = np.asarray(store.label(case))
            scored.append((case, _to_stack(pred), _to_stack(ref), tuple(store.spacing(case))))
            n_slices += int(image.shape[0])
        rows.append({"patient": patient, "n_cases": len(patient_cases), "n_slices": n_slices,
                     **score_patient_cases(scored, store.labels)})
    progress.close()
    table = _ordered(pd.DataFrame(rows), store.labels)
    if unfinished:
        print(f"unetscout evaluate: {model_dir} is unfinished; scored its {checkpoint}.pt anyway "
              f"(column {UNFINISHED} of the table)", file=sys.stderr, flush=True)
        table[UNFINISHED] = "true"
    return table


def _ordered(df: pd.DataFrame, labels: dict[str, int]) -> pd.DataFrame:
    names = list(foreground_labels(labels))
    columns = (["patient", "n_cases", "n_slices", "dice"] + [f"dice_{n}" for n in names]
               + [f"hd95_{n}" for n in names] + [f"hd95_{n}_note" for n in names])
    return df[columns]


def write_patients_tsv(df: pd.DataFrame, out: Path) -> None:
    """Write the per-patient table as TSV, atomically; missing values as NaN."""
    with atomic_file(out) as tmp:
        df.to_csv(tmp, sep="\t", index=False, na_rep="NaN")


def summarise(df: pd.DataFrame) -> str:
    """Mean +- sd over patients of Dice (overall and per class) and HD95 per class."""
    lines = [f"{len(df)} patients" + (" (an unfinished run)" if UNFINISHED in df.columns else "")]
    dice_columns = ["dice"] + [c for c in df.columns if c.startswith("dice_")]
    for column in dice_columns:
        values = df[column].to_numpy(dtype=float)
        lines.append(f"{column}: {_mean_sd(values)}")
    for column in [c for c in df.columns if c.startswith("hd95_") and not c.endswith("_note")]:
        values = df[column].to_numpy(dtype=float)
        missing = int(np.isnan(values).sum())
        lines.append(f"{column} (mm): {_mean_sd(values)}" + (f" ({missing} missing)" if missing else ""))
    return "\n".join(lines)


def _mean_sd(values: np.ndarray) -> str:
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return "n/a"
    sd = float(finite.std(ddof=1)) if finite.size > 1 else float("nan")
    return f"{finite.mean():.4f} +- {sd:.4f} (n={finite.size})"
