"""`unetscout search`: run a cell search (or draw the random baseline's genotype) into OUT.

Outputs in OUT (the `search/` folder of a skip method):
- `init_state.pt`: the supernet's initial state (cells of every level and alpha/beta), the
  lottery ticket IAC-LTH's final training resets to;
- `state.pt`: everything needed to resume, rewritten at the end of every epoch (and on
  SIGTERM mid-epoch, exit 143), like `unetscout train`'s `last.pt`;
- `search_log.jsonl` (one JSON object per epoch: alpha, beta, capped edge weights, the 98-d
  importance, p, JS, tau and the stability decision per edge, ops pruned, passes, seconds)
  and `search_log.tsv` (a summary row per epoch);
- `genotype.json` and, last, `search_summary.json` {method, epochs_run, stop_epoch,
  forward_backward_passes, passes_per_epoch, search_seconds, seconds_per_epoch, floor_bound,
  absolute_rule_stop_epoch, absolute_rule_floor_bound (IAC-LTH: when the paper's absolute rule,
  replayed on the search's drift, would have stopped it; null for IAC and random), genotype,
  stopped_because, identity, ...}: a rerun with the same identity returns at once.

Method `random` (our baseline) searches nothing: it draws a genotype uniformly from the same
space (per node two distinct earlier nodes, an op each; seeded) and writes genotype.json and
a summary with zero epochs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from unetscout.atomic import write_json_atomic
from unetscout.data.slice_store import SliceStore
from unetscout.errors import UnetscoutError, file_error
from unetscout.models.ops import OP_NAMES
from unetscout.models.genotype import INPUTS_PER_NODE, N_INPUT_NODES, N_INTERMEDIATE_NODES, Genotype
from unetscout.names import CELL_METHODS, RANDOM_METHOD
from unetscout.search.config import LTH_ONLY_SETTINGS, Backbone, SearchConfig, load_backbone
from unetscout.search.iac import IACSearch
from unetscout.search.lth import LTHSearch
from unetscout.search.supernet import SupernetSearch
from unetscout.train.batch import capped_batch_size
from unetscout.device import resolve_device
from unetscout.runs import (device_settings, discard_run, file_digest, identity_difference, load_checkpoint, read_record,
                            resumable_state, save_checkpoint)

SEARCHES = {"iac": IACSearch, "iac_lth": LTHSearch}
SEARCH_FILES = ("search_summary.json", "genotype.json", "state.pt", "search_log.tsv", "search_log.jsonl")


def random_genotype(seed: int, residual: bool = False, partial_channels: int = 4) -> Genotype:
    """A genotype drawn uniformly from the search space: per node a uniformly chosen pair of
    distinct earlier nodes and, for each, one of the ops uniformly."""
    rng = np.random.default_rng(seed)
    nodes = []
    for node in range(N_INPUT_NODES, N_INPUT_NODES + N_INTERMEDIATE_NODES):
        inputs = sorted(int(i) for i in rng.choice(node, size=INPUTS_PER_NODE, replace=False))
        nodes.append(tuple((i, OP_NAMES[int(rng.integers(len(OP_NAMES)))]) for i in inputs))
    return Genotype(tuple(nodes), residual, partial_channels)


def search_identity(method: str, backbone: Backbone, config: SearchConfig, store: SliceStore) -> dict[str, Any]:
    """What a finished or resumable search in OUT must match to be reused."""
    settings = {k: v for k, v in config.to_dict().items() if method == "iac_lth" or k not in LTH_ONLY_SETTINGS}
    return {"method": method, "backbone": backbone.spec.to_dict(),
            "backbone_weights_sha256": file_digest(backbone.path / "best.pt"), "config": settings,
            "data": store.data_digest()}


def _check_store(backbone: Backbone, store: SliceStore, slices: Path) -> None:
    spec = backbone.spec
    for name, value in (("in_channels", len(store.channel_names)), ("num_classes", store.num_classes),
                        ("image_size", store.size)):
        if getattr(spec, name) != value:
            raise file_error(slices / "slices.json", f"the slices have {name} {value} but the backbone "
                                                     f"{backbone.path / 'model.json'} has {getattr(spec, name)}")


def _fit_batch_to_streams(config: SearchConfig, search: type[SupernetSearch], store: SliceStore) -> SearchConfig:
    """The config with its batch no larger than the smallest stream a step draws from
    (docs/methods.md#batches-and-foreground-oversampling): what is run, and recorded as the
    summary's batch_size."""
    sizes = {name: len(view.slice_index("train")) for name, (view, _) in search.streams(store).items()}
    name = min(sizes, key=sizes.__getitem__)
    smallest = sizes[name]
    where = f"the {smallest} slices of the search's {name} stream" if len(sizes) > 1 \
        else f"the {smallest} train slices of {store.path}"
    return config.replace(batch_size=capped_batch_size(config.batch_size, smallest, "search", where))


def _random_summary(config: SearchConfig, identity: dict[str, Any]) -> dict[str, Any]:
    genotype = random_genotype(config.seed, config.residual, config.partial_channels)
    return {"method": RANDOM_METHOD, "epochs_run": 0, "stop_epoch": 0, "warmup_epochs": 0, "epoch_cap": 0,
            "steps_per_epoch": 0, "batches_per_step": 0, "batch_size": config.batch_size,
            "forward_backward_passes": 0, "passes_per_epoch": 0.0, "search_seconds": 0.0, "seconds_per_epoch": 0.0,
            "floor_bound": None, "unstable_decisions": None, "stability_rule": None,
            "absolute_rule_stop_epoch": None, "absolute_rule_floor_bound": None,
            "genotype": genotype.to_dict(), "stopped_because": "drawn at random (seeded)", "identity": identity}


def run_search(method: str, backbone_dir: str | Path, slices: str | Path, out: str | Path,
               config: SearchConfig, device: str = "auto") -> Path:
    """Search a cell for the frozen backbone in BACKBONE_DIR on the slices' train split; returns OUT.

    Reruns resume from OUT/state.pt; a finished search (matching search_summary.json) returns at once.
    """
    if method not in CELL_METHODS:
        raise UnetscoutError(f"unknown search method {method!r}; choose one of {', '.join(CELL_METHODS)}")
    slices, out = Path(slices), Path(out)
    backbone = load_backbone(backbone_dir)
    store = SliceStore(slices)
    _check_store(backbone, store, slices)
    # The identity holds the batch as configured; the batch run is the summary's batch_size.
    identity = search_identity(method, backbone, config, store)
    summary_path = out / "search_summary.json"
    if summary_path.exists():
        recorded = read_record(summary_path)
        if recorded is not None and recorded.get("identity") == identity:
            print(f"unetscout search: {out} is already searched (search_summary.json matches); nothing to do",
                  file=sys.stderr, flush=True)
            return out
        discard_run(out, SEARCH_FILES, summary_path, "search", identity_difference(recorded, identity))
    if method == RANDOM_METHOD:
        summary = _random_summary(config, identity)
        out.mkdir(parents=True, exist_ok=True)
        Genotype.from_dict(summary["genotype"]).save(out / "genotype.json")
        write_json_atomic(summary_path, summary)
        return out
    config = _fit_batch_to_streams(config, SEARCHES[method], store)
    resolved = resolve_device(device)
    state = resumable_state(out / "state.pt", identity, out, SEARCH_FILES, "search")
    with device_settings(resolved):
        # Built (and its batch checked against memory) before anything is written.
        search = SEARCHES[method](backbone, store, out, config, resolved, identity)
        out.mkdir(parents=True, exist_ok=True)
        init_path = out / "init_state.pt"
        # Rewritten unless it already belongs to this search (a rerun resuming it).
        if not init_path.exists() or load_checkpoint(init_path).get("identity") != identity:
            save_checkpoint(init_path, {**search.initial_state, "seed": config.seed,
                                        "partial_channels": config.partial_channels, "identity": identity})
        if state is not None:
            search.resume(state)
            print(f"unetscout search: resuming {out} at epoch {search.epoch + 1} iteration {search.iteration}",
                  file=sys.stderr, flush=True)
        summary = search.run()
    Genotype.from_dict(summary["genotype"]).save(out / "genotype.json")
    write_json_atomic(summary_path, summary)
    return out
