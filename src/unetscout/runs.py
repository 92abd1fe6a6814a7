"""The run protocol that every long job follows: training (`unetscout train`), cell training
(`unetscout train-cell`, which trains through the same loop) and the cell search.

- **Identity.** A run is described by a JSON-able `identity`: model, settings, the data it
  reads (the slice store's `data_digest`) and what it starts from (the backbone's weights, the
  lottery ticket). A finished run records it; a rerun with the same identity returns at once,
  one with another identity says which part changed, discards the folder's run files and
  starts from scratch (the workflow reruns a job exactly when its inputs or parameters
  changed, so the old run is obsolete).
- **Checkpoints.** Written atomically (temporary sibling + rename, `atomic.py`), so a SIGKILL
  during a write leaves the previous checkpoint intact; verified on load against the CRC-32
  of every archive member (torch.load checks none), so a damaged file is refused by name. A
  checkpoint holds everything needed to continue bit for bit on CPU: weights, optimisers,
  position in the schedule, sampler and RNG states; snapshots are copies (`cpu_state`).
- **One writer.** The CLI holds the output's lock (`atomic.exclusive_output`) for the whole
  run, so a second process on the same output is refused and stale temporaries are removed.
- **SIGTERM** (what Slurm sends before its time limit): the loop finishes the current
  iteration, writes its checkpoint and exits with status 143 (128 + SIGTERM, the shell's
  convention), so Snakemake and Slurm see a failed, resumable job, not a finished one.
- **Device settings.** CPU: deterministic kernels (the bit-exact resume relies on them);
  CUDA: cuDNN autotuning; restored when the run returns.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import platform
import re
import signal
import socket
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Iterable, Iterator, NoReturn

import numpy as np
import torch

from unetscout.atomic import write_bytes_atomic
from unetscout.errors import file_error

SIGTERM_EXIT_CODE = 143
CHECKPOINT_FORMAT_VERSION = 1


# ---------------------------------------------------------------- checkpoints

def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    # Serialised in memory first: the size is known before the disk is touched (a full disk
    # is then our one-line error, not torch's inline_container message without a file name).
    buffer = io.BytesIO()
    torch.save({"format_version": CHECKPOINT_FORMAT_VERSION, **payload}, buffer)
    write_bytes_atomic(path, buffer.getbuffer())


def _damaged_member(path: Path) -> str | None:
    """The first archive member whose bytes fail their stored CRC-32, or None. torch.load
    itself never checks them, so a flipped bit in a tensor would load silently."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except zipfile.BadZipFile:
        return None  # not a zip at all: torch.load's own error says so


def _load_failure(err: BaseException) -> str:
    """Why torch.load failed, in our words. Its own messages advise loading with
    weights_only=False (which runs whatever code the file holds) or filing an issue with torch:
    wrong for a damaged or foreign file, and not a line a user can act on."""
    text = str(err)
    blocked = re.search(r"GLOBAL ([\w.]+)", text)
    if blocked:
        return f"it refers to Python code ({blocked.group(1)}), which checkpoints of this package never hold"
    if isinstance(err, EOFError):
        return "it ends early, empty or cut off"
    # torch's zip reader gives EINVAL for an archive cut off before its central directory.
    if isinstance(err, zipfile.BadZipFile) or "zip archive" in text or getattr(err, "errno", None) == errno.EINVAL:
        return "its zip archive is damaged or cut off"
    if isinstance(err, pickle.UnpicklingError):
        return "neither a zip archive of tensors nor a pickle of plain values"
    # Anything else: torch's first sentence (after the C++ assertion's location), when it gives
    # no advice of its own.
    text = re.sub(r"^\s*\[enforce fail at [^\]]*\]\s*\.?\s*", "", text)
    first = text.strip().splitlines()[0].split(". ")[0] if text.strip() else ""
    return first if first and "weights_only" not in first and "issue" not in first else type(err).__name__


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint of this package, verified against the CRC-32 of every member; only
    tensors and plain Python values are unpickled."""
    path = Path(path)
    remedy = "delete it and rerun the job that wrote it"
    if not path.is_file():
        raise file_error(path, "checkpoint not found")
    damaged = _damaged_member(path)
    if damaged is not None:
        raise file_error(path, f"damaged checkpoint: {damaged} does not match its checksum; {remedy}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, OSError) as err:
        raise file_error(path, f"unreadable checkpoint (not a file torch can load: {_load_failure(err)}); "
                               f"{remedy}") from None
    if not isinstance(payload, dict) or payload.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise file_error(path, f"not a unetscout checkpoint of format version {CHECKPOINT_FORMAT_VERSION}")
    return payload


def cpu_state(module_or_optimizer: Any) -> dict:
    """A copy of the state_dict with tensors on the CPU, so a checkpoint loads on a machine
    without a GPU. A copy on every device: `.cpu()` of a CPU tensor is the tensor itself, and a
    snapshot kept while training goes on (the best epoch's weights) must not follow the updates."""
    def move(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return obj.detach().to("cpu", copy=True)
        if isinstance(obj, dict):
            return {k: move(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [move(v) for v in obj]
        return obj
    return move(module_or_optimizer.state_dict())


# ---------------------------------------------------------------- randomness

def train_mode(model: torch.nn.Module) -> None:
    """Train mode, except for a frozen part (a child module none of whose parameters train):
    it runs in eval mode, so a frozen backbone's BatchNorm statistics and dropout stay as they
    were trained (the encoder U-Nets have BatchNorm; InstanceNorm keeps no statistics)."""
    model.train()
    for child in model.children():
        parameters = list(child.parameters())
        if parameters and not any(p.requires_grad for p in parameters):
            child.eval()


def derived_seed(seed: int, stream: int) -> int:
    """Independent, well-mixed seeds for the separate generators of one run."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


def rng_states(device: torch.device) -> dict[str, Any]:
    """The global torch generators (the model's initialisation drew from them)."""
    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng_states(states: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(states["torch"].cpu())
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"].cpu(), device)


def restore_generator(generator: torch.Generator, state: dict[str, Any], key: str, device: torch.device,
                      reseed: int, command: str) -> None:
    """Put `generator` back where checkpoint `state[key]` left it. A generator's state only fits
    generators of its device type: a run resumed on another device is reseeded with `reseed`,
    and says that the result will not be bit-identical."""
    if state.get("device_type") == device.type and state.get(key) is not None:
        generator.set_state(state[key].cpu())
        return
    generator.manual_seed(reseed)
    print(f"unetscout {command}: resuming a {state.get('device_type')} run on {device.type}; "
          "augmentation is reseeded, so the result will not be bit-identical", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- identity, resume, start afresh

def file_digest(path: Path) -> str:
    """sha256 of a file: how a run's identity names the weights it starts from."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_record(path: Path) -> dict[str, Any] | None:
    """A finished run's JSON record, or None when it is absent or unreadable (then the run is
    not finished: a half-written record never counts)."""
    try:
        recorded = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return recorded if isinstance(recorded, dict) else None


def identity_difference(recorded: Any, identity: dict[str, Any]) -> str:
    """Which parts of a run's identity changed, in words for the discard message."""
    if not isinstance(recorded, dict):
        return "settings"
    changed = [key for key in identity if recorded.get(key) != identity[key]]
    return ", ".join(IDENTITY_PARTS.get(key, key) for key in changed) or "settings"


# The parts a run identity can hold, named for messages (the tables' provenance reads them from
# done.json); unnamed parts are shown by key.
IDENTITY_PARTS = {"data": "data (the slice store changed)", "model": "model", "config": "settings",
                  "init": "initial weights (backbone or lottery ticket)", "method": "method",
                  "backbone": "backbone", "backbone_weights_sha256": "backbone weights",
                  "prune": "pruning settings"}


def discard_run(out: Path, files: Iterable[str], reason_file: Path, command: str, changed: str = "settings") -> None:
    """The folder holds a run of another identity: say so, and delete its run files."""
    print(f"unetscout {command}: {reason_file} belongs to a run with different {changed}; "
          f"discarding it and starting {out} from scratch", file=sys.stderr, flush=True)
    for name in files:
        (out / name).unlink(missing_ok=True)


def resumable_state(path: Path, identity: dict[str, Any], out: Path, files: Iterable[str],
                    command: str) -> dict[str, Any] | None:
    """The checkpoint at `path` if it belongs to this identity; a checkpoint of another run is
    discarded (with `files`) and None returned."""
    if not path.exists():
        return None
    state = load_checkpoint(path, map_location="cpu")
    if state.get("identity") != identity:
        discard_run(out, files, path, command, identity_difference(state.get("identity"), identity))
        return None
    return state


# ---------------------------------------------------------------- SIGTERM

class StopFlag:
    """Set by SIGTERM; a loop polls it between iterations."""

    def __init__(self) -> None:
        self.raised = False
        self._previous: Any = None

    def __enter__(self) -> "StopFlag":
        # signal handlers can only be installed from the main thread.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.raised = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def exit_resumable(command: str, checkpoint: Path, where: str) -> NoReturn:
    """After SIGTERM, once `checkpoint` is written: say how to resume, exit 143."""
    print(f"unetscout {command}: SIGTERM: saved {checkpoint} {where}; rerun the same command to resume",
          file=sys.stderr, flush=True)
    raise SystemExit(SIGTERM_EXIT_CODE)


# ---------------------------------------------------------------- the machine

@contextlib.contextmanager
def device_settings(device: torch.device) -> Iterator[None]:
    """CPU: deterministic kernels; CUDA: cuDNN autotuning. Process-wide flags, restored on exit."""
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark = saved[2]


def environment(device: torch.device) -> dict[str, Any]:
    """Where and with what a run ran (`environment.json`)."""
    return {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "cuda_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu_threads": torch.get_num_threads(),
        "hostname": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
