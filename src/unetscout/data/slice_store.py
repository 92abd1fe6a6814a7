"""Read a slice store written by `unetscout slices`: the one reader training and evaluation use."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from unetscout.data.slices import FORMAT_VERSION
from unetscout.data.splits import SPLITS
from unetscout.errors import file_error

_REQUIRED_KEYS = ("format_version", "channel_names", "labels", "size")
_REQUIRED_COLUMNS = ("case", "patient", "split", "slices", "spacing_x", "spacing_y", "spacing_z")
# `sha256` (per-case content digest) is optional: stores written before it still load.
_STRING_COLUMNS = {"case": str, "patient": str, "split": str, "sha256": str}


class SliceStore:
    """Metadata in memory, slices as read-only memory maps opened on demand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.meta = self._read_meta(self.path / "slices.json")
        self.channel_names: list[str] = list(self.meta["channel_names"])
        self.labels: dict[str, int] = {str(k): int(v) for k, v in self.meta["labels"].items()}
        self.size: int = int(self.meta["size"])
        # The bytes are kept so data_digest describes the manifest this object read, even if
        # the store is rewritten on disk while it is open.
        self._manifest_bytes = self._read_bytes(self.path / "manifest.tsv")
        self.manifest = self._parse_manifest(self.path / "manifest.tsv", self._manifest_bytes)
        self._rows = self.manifest.set_index("case", drop=False)

    def data_digest(self) -> str:
        """sha256 identifying the data: the manifest (with each case's content sha256, when
        the store has that column) and slices.json without `source`, so moving the raw folder
        keeps the digest while any change of data, split, normalisation, labels or size
        changes it. Stores written before the sha256 column get a weaker digest (names,
        counts and statistics only)."""
        meta = {key: value for key, value in self.meta.items() if key != "source"}
        digest = hashlib.sha256(self._manifest_bytes)
        digest.update(json.dumps(meta, sort_keys=True).encode())
        return digest.hexdigest()

    @property
    def split_seed(self) -> int:
        """The seed of the dataset's patient split (slices.json); 0 for stores that record none.
        Splits drawn once per dataset (IAC's train_search / val_search) use it, not a run seed."""
        return int(self.meta.get("split", {}).get("seed", 0))

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def cases(self, split: str) -> list[str]:
        """Cases of one split ("train", "val" or "test"), in manifest (sorted) order."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        return self.manifest.loc[self.manifest["split"] == split, "case"].tolist()

    def patient_of(self, case: str) -> str:
        return str(self._row(case)["patient"])

    def spacing(self, case: str) -> tuple[float, float, float]:
        row = self._row(case)
        return float(row["spacing_x"]), float(row["spacing_y"]), float(row["spacing_z"])

    def image(self, case: str) -> np.ndarray:
        """float32 [S, C, size, size], read-only memory map."""
        expected = (self._slices(case), len(self.channel_names), self.size, self.size)
        return self._open(self.path / "cases" / f"{case}_image.npy", expected, np.float32)

    def label(self, case: str) -> np.ndarray:
        """uint8 [S, size, size], read-only memory map."""
        expected = (self._slices(case), self.size, self.size)
        return self._open(self.path / "cases" / f"{case}_label.npy", expected, np.uint8)

    def slice_index(self, split: str) -> np.ndarray:
        """int64 [N, 2]: (position of the case in `cases(split)`, slice number) for every slice."""
        counts = np.array([self._slices(c) for c in self.cases(split)], dtype=np.int64)
        case_numbers = np.repeat(np.arange(len(counts)), counts)
        # Slice number = running index minus the start offset of the slice's case.
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        return np.stack([case_numbers, np.arange(counts.sum()) - starts], axis=1).astype(np.int64)

    def _row(self, case: str) -> pd.Series:
        if case not in self._rows.index:
            raise KeyError(f"{self.path / 'manifest.tsv'}: no case {case!r}")
        return self._rows.loc[case]

    def _slices(self, case: str) -> int:
        return int(self._row(case)["slices"])

    @staticmethod
    def _read_meta(path: Path) -> dict:
        try:
            meta = json.loads(path.read_text())
        except FileNotFoundError:
            raise file_error(path, "missing: not a slice store (write one with `unetscout slices`)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise file_error(path, f"unreadable or corrupt slice store metadata: {exc}") from None
        if not isinstance(meta, dict):
            raise file_error(path, "corrupt slice store metadata: not a JSON object")
        missing = [k for k in _REQUIRED_KEYS if k not in meta]
        if missing:
            raise file_error(path, f"corrupt slice store metadata: missing key(s) {', '.join(missing)}")
        if meta["format_version"] != FORMAT_VERSION:
            raise file_error(path, f"format_version {meta['format_version']!r}, this unetscout reads "
                                   f"{FORMAT_VERSION}: rerun `unetscout slices`")
        return meta

    @staticmethod
    def _read_bytes(path: Path) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise file_error(path, "missing from the slice store") from None
        except OSError as exc:
            raise file_error(path, f"unreadable or corrupt manifest: {exc}") from None

    @staticmethod
    def _parse_manifest(path: Path, data: bytes) -> pd.DataFrame:
        try:
            # Case and patient ids are strings ("001" must not become 1, "NA" not NaN), and so
            # is a digest (an all-digit hex string is not a number).
            manifest = pd.read_csv(io.BytesIO(data), sep="\t", dtype=_STRING_COLUMNS, keep_default_na=False)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise file_error(path, f"unreadable or corrupt manifest: {exc}") from None
        missing = [c for c in _REQUIRED_COLUMNS if c not in manifest.columns]
        if missing:
            raise file_error(path, f"corrupt manifest: missing column(s) {', '.join(missing)}")
        if manifest["case"].duplicated().any():
            raise file_error(path, "corrupt manifest: a case is listed twice")
        return manifest

    @staticmethod
    def _open(path: Path, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        try:
            array = np.load(path, mmap_mode="r")
        except FileNotFoundError:
            raise file_error(path, "missing from the slice store") from None
        except (OSError, ValueError) as exc:
            raise file_error(path, f"unreadable or corrupt slice array: {exc}") from None
        if array.shape != shape or array.dtype != dtype:
            raise file_error(path, f"holds {array.dtype} {array.shape}, manifest and slices.json "
                                   f"promise {np.dtype(dtype)} {shape}")
        return array
