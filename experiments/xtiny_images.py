"""XTinyU-Net on a small real-anatomy 2-D image dataset, end to end through the workflow on CPU.

The dataset: every axial slice of nibabel's example head scan (example4d, both time frames) as a
grey PNG, labelled bright tissue against the rest; the two frames of a slice are one patient
(`unetscout_patients`), so no near-duplicate image crosses the split. The run: width scores over
three seeds, the pick, the sweep of the ten caps, nnU-Net, XTinyU-Net, LUnet and the three
lightweight peers on a short CPU schedule, then Table 5 and the width picks table. Writes the
dataset and the workflow copy into the work folder; rerunning resumes.

    python experiments/xtiny_images.py --workdir results/xtiny_images --cores 2
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from rawdata import make_image_dataset, tissue_label  # noqa: E402  (the tests' dataset writer)

PEERS = ["unext", "cmunext_s", "tinyunet"]
# A short CPU schedule: the sweep and the backbones alike (the paper preset, no augmentation).
TRAIN = {"epochs": 6, "iterations_per_epoch": 25, "batch_size": 16, "val_every": 2, "num_workers": 1}


def head_slices() -> tuple[list[np.ndarray], dict[str, str]]:
    """Every axial slice of both frames (uint8) and the case -> patient map (slice = patient)."""
    from nibabel.testing import data_path

    volume = nib.load(str(Path(data_path) / "example4d.nii.gz")).get_fdata()
    scaled = np.clip(volume / volume.max() * 255.0, 0, 255).round().astype(np.uint8)
    images, patients = [], {}
    for z in range(scaled.shape[2]):
        for frame in range(scaled.shape[3]):
            patients[f"img{len(images):03d}"] = f"slice{z:02d}"
            images.append(np.ascontiguousarray(scaled[:, :, z, frame]))
    return images, patients


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    work = args.workdir.resolve()
    data = work / "data" / "head_slices"
    if not data.is_dir():
        images, patients = head_slices()
        make_image_dataset(data, images, [tissue_label(i) for i in images], {"0": "MRI"},
                           unetscout_patients=patients)
    for part in ("Snakefile", "workflow", "config", "profiles", "envs"):
        target = work / part
        if not target.exists():
            (shutil.copytree if (ROOT / part).is_dir() else shutil.copy2)(ROOT / part, target)
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config.update(datasets=[str(data)], backbones=["plain", "xtiny", "lean", *PEERS], presets=["paper"],
                  seeds=[0], train={"paper": TRAIN}, skips={"search_backbones": [], "methods": []})
    config["prune"]["run"] = False  # the Lean U-Net study is not XTinyU-Net's question
    config["slices"] = {"size": 64, "image_fit": "resize"}
    config["width"].update(k="all", seeds=[369, 370, 371], sweep=True, sweep_preset="paper")
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    snakemake = Path(sys.executable).parent / "snakemake"
    return subprocess.run([str(snakemake), "--cores", str(args.cores)], cwd=work).returncode


if __name__ == "__main__":
    sys.exit(main())
