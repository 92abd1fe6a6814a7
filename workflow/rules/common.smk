# Input functions and dataset bookkeeping shared by every stage.

from pathlib import Path


SYNTHETIC = "synthetic"


def _dataset_entries(items):
    """Map dataset name -> where its raw folder comes from: the generator, the registry, or a path."""
    entries = {}
    for item in items:
        if "/" in item or Path(item).is_dir():
            name, source = Path(item).resolve().name, {"path": str(Path(item).resolve())}
        elif item == SYNTHETIC:
            name, source = item, {"synthetic": True}
        else:
            name, source = item, {"registry": item}
        if name in entries:
            raise ValueError(f"config datasets: two entries are both named {name!r}; rename one folder")
        entries[name] = source
    return entries


DATASETS = _dataset_entries(config["datasets"])
REGISTRY_DATASETS = [name for name, source in DATASETS.items() if "registry" in source]


wildcard_constraints:
    dataset="[^/]+",


def raw_dir(wildcards):
    """A user's own nnU-Net raw folder is read in place; everything else lands in resources/raw."""
    source = DATASETS[wildcards.dataset]
    return source.get("path", f"resources/raw/{wildcards.dataset}")


def slices_dir(dataset):
    return f"results/{dataset}/slices"


def all_targets():
    return [slices_dir(dataset) for dataset in DATASETS]
