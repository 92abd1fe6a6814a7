"""The public datasets unetscout can fetch, and `fetch`: download, verify, extract, convert.

Each registry entry is data (a frozen `DatasetSource`); what differs between datasets is
only which converter in `convert.py` (volumes) or `convert_images.py` (2-D images) reads
their layout. Downloads are kept in a cache folder so an interrupted or repeated fetch
resumes instead of starting over; the converted nnU-Net raw folder appears at `out`
complete or not at all.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from unetscout import __version__
from unetscout.atomic import atomic_directory, write_json_atomic
from unetscout.data import convert, convert_images
from unetscout.data.download import download, extract_archive, hash_file
from unetscout.errors import UnetscoutError, file_error

LAYOUTS = ("msd", "acdc", "kits23", "amos22", "brats2021", "isic2018", "busbra", "fives", "echonet_dynamic")
MSD_BASE = "https://msd-for-monai.s3-us-west-2.amazonaws.com"
MSD_LICENCE = "CC-BY-SA 4.0"
BRATS_ARCHIVE = "BraTS2021_Training_Data.tar"
BRATS_SYNAPSE = "syn25829067"
# KiTS23's public training cases, as the official neheller/kits23 package lists them.
KITS23_CASES = tuple(range(300)) + tuple(range(400, 589))
ISIC_BASE = "https://isic-challenge-data.s3.amazonaws.com/2018"
ECHONET_PAGE = "https://echonet.github.io/dynamic/"
ECHONET_FILES = "FileList.csv, VolumeTracings.csv and Videos/*.avi"
# RAR (FIVES) is beyond Python's standard library; these tools read it, each with its command line.
RAR_SIGNATURES = (b"Rar!\x1a\x07\x00", b"Rar!\x1a\x07\x01\x00")
RAR_TOOLS = {
    "bsdtar": lambda archive, dest: ["bsdtar", "-xf", str(archive), "-C", str(dest)],
    "unrar": lambda archive, dest: ["unrar", "x", "-idq", "-o+", str(archive), f"{dest}{os.sep}"],
    "unar": lambda archive, dest: ["unar", "-q", "-f", "-o", str(dest), str(archive)],
    "7zz": lambda archive, dest: ["7zz", "x", "-y", f"-o{dest}", str(archive)],
}


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset comes from, how it is checked, and which converter reads it."""

    name: str
    title: str
    layout: str
    url: str | None = None            # the archive; for kits23 a per-case template with {case}
    md5: str | None = None            # md5, sha256 and size pin the archive at `url` only
    sha256: str | None = None
    size: int | None = None
    archive_name: str | None = None   # cache file name when the URL does not end in one
    extra_urls: tuple[str, ...] = ()  # further archives of one dataset (ISIC: images, masks), unpinned
    label_url: str | None = None      # kits23: per-case segmentation template with {case}
    cases: tuple[int, ...] = ()       # kits23: the case numbers to fetch
    licence: str = ""
    requires_from: bool = False       # registration only: the user places the files
    note: str = ""

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"{self.name}: layout must be one of {LAYOUTS}, got {self.layout!r}")
        if not self.requires_from and not self.url:
            raise ValueError(f"{self.name}: a downloadable source needs a url")
        if self.layout == "kits23" and not (self.label_url and self.cases):
            raise ValueError(f"{self.name}: kits23 sources need label_url and cases")

    @property
    def pinned(self) -> bool:
        return bool(self.md5 or self.sha256)

    @property
    def cache_name(self) -> str:
        return self.archive_name or Path(urlparse(self.url or "").path).name or f"{self.name}.download"

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url, *self.extra_urls) if self.url else self.extra_urls


def _msd(task: str, md5: str, title: str) -> DatasetSource:
    return DatasetSource(name=task.lower(), title=f"MSD {task}: {title}", layout="msd",
                         url=f"{MSD_BASE}/{task}.tar", md5=md5, licence=MSD_LICENCE)


SOURCES = (
    _msd("Task01_BrainTumour", "240a19d752f0d9e9101544901065d872", "glioma, 4-channel MRI"),
    _msd("Task02_Heart", "06ee59366e1e5124267b774dbd654057", "left atrium, MRI"),
    _msd("Task04_Hippocampus", "9d24dba78a72977dbd1d2e110310f31b", "hippocampus head/body, MRI (~27 MB)"),
    _msd("Task05_Prostate", "35138f08b1efaef89d7424d2bcc928db", "prostate zones, T2 + ADC MRI"),
    _msd("Task09_Spleen", "410d4a301da4e5b2f6f86ec3ddba524e", "spleen, CT"),
    DatasetSource(
        name="acdc", title="ACDC cardiac cine MRI (RV, myocardium, LV; ED and ES frames)", layout="acdc",
        url=("https://humanheart-project.creatis.insa-lyon.fr/database/api/v1/folder/"
             "637218e573e9f0047faa00fc/download"),
        archive_name="ACDC.zip", licence="CC BY-NC-SA 4.0",
        note="no published checksum: size and sha256 of the download are recorded in OUT/download.json"),
    DatasetSource(
        name="kits23", title="KiTS23 kidney, tumour, cyst in CT (489 cases, per-case files)", layout="kits23",
        url="https://kits19.sfo2.digitaloceanspaces.com/master_{case:05d}.nii.gz",
        label_url="https://raw.githubusercontent.com/neheller/kits23/main/dataset/case_{case:05d}/segmentation.nii.gz",
        cases=KITS23_CASES, licence="CC BY-NC-SA 4.0",
        note="no published checksums: every NIfTI is checked to load and image/label shapes to match"),
    DatasetSource(
        name="amos22", title="AMOS22 15 abdominal organs, CT part (ids <= 500)", layout="amos22",
        url="https://zenodo.org/record/7155725/files/amos22.zip", licence="CC BY 4.0",
        note="md5 unknown here (Zenodo lists one in the record): not verified; size and sha256 are "
             "recorded in OUT/download.json"),
    DatasetSource(
        name="brats2021", title="BraTS 2021 glioma, 4-channel MRI (t1, t1ce, t2, flair)", layout="brats2021",
        requires_from=True, licence="Synapse data use terms",
        note=f"registration only: place {BRATS_ARCHIVE} (Synapse {BRATS_SYNAPSE}) in DIR, then --from DIR"),
    DatasetSource(
        name="isic2018", title="ISIC 2018 task 1 skin lesions, RGB dermoscopy (2,594 training images)",
        layout="isic2018", url=f"{ISIC_BASE}/ISIC2018_Task1-2_Training_Input.zip",
        extra_urls=(f"{ISIC_BASE}/ISIC2018_Task1_Training_GroundTruth.zip",), licence="CC BY-NC 4.0",
        note="no published checksums: size and sha256 of both archives are recorded in OUT/download.json; "
             "the training set only (about 11 GB)"),
    DatasetSource(
        name="busbra", title="BUS-BRA breast ultrasound lesions (1,875 grey images of 1,064 patients)",
        layout="busbra", url="https://zenodo.org/api/records/8231412/files/BUSBRA.zip/content",
        archive_name="BUSBRA.zip", md5="1f8b2be6476d58fc97bfb5e5a1ea9bab", size=133917740, licence="CC BY 4.0",
        note="md5 and size of record 8231412's BUSBRA.zip as a public download script verifies them "
             "(not checked here against the record itself)"),
    DatasetSource(
        name="fives", title="FIVES fundus vessels, RGB 2048 x 2048 (800 images)", layout="fives",
        url="https://figshare.com/ndownloader/files/34969398", archive_name="FIVES.rar", licence="CC BY 4.0",
        note="no published checksum: size and sha256 are recorded in OUT/download.json; a RAR archive "
             "(about 1.8 GB): extracting it needs bsdtar, unrar, unar or 7zz on PATH"),
    DatasetSource(
        name="echonet_dynamic", title="EchoNet-Dynamic echo left ventricle, traced ED and ES frames (10,030 videos)",
        layout="echonet_dynamic", requires_from=True,
        licence="EchoNet-Dynamic Dataset Research Use Agreement (Stanford, non-commercial)",
        note=f"registration only: place the dataset folder ({ECHONET_FILES}) in DIR, then --from DIR"),
)
REGISTRY: dict[str, DatasetSource] = {source.name: source for source in SOURCES}

_warned_unpinned: set[str] = set()


def describe_registry() -> str:
    """The registry as a table for `unetscout fetch --list`."""
    rows = []
    for source in SOURCES:
        if source.requires_from:
            check = "registration only (--from DIR)"
        elif source.pinned:
            check = "md5 pinned" if source.md5 else "sha256 pinned"
        else:
            check = "unpinned"
        rows.append((source.name, check, source.title, source.note))
    width = max(len(name) for name, *_ in rows)
    check_width = max(len(check) for _, check, *_ in rows)
    lines = [f"{'name':<{width}}  {'verification':<{check_width}}  dataset"]
    for name, check, title, note in rows:
        lines.append(f"{name:<{width}}  {check:<{check_width}}  {title}")
        if note:
            lines.append(f"{'':<{width}}  {'':<{check_width}}    {note}")
    lines.append("A path to your own nnU-Net raw folder (dataset.json, imagesTr/, labelsTr/) is used as is.")
    return "\n".join(lines)


def fetch(name: str, out: Path, from_dir: Path | None = None, cache_dir: Path | None = None) -> Path:
    """Make dataset `name` available as an nnU-Net raw folder; return where it is."""
    key = name.lower()
    own = Path(name)
    # A bare registry name always means the registry; write ./NAME for a folder of that name.
    if own.is_dir() and (key not in REGISTRY or any(sep in name for sep in ("/", "\\"))):
        return _own_raw_folder(own)
    source = REGISTRY.get(key)
    if source is None:
        raise UnetscoutError(f"{name}: unknown dataset; known: {', '.join(REGISTRY)} "
                             "(or give the path of your own nnU-Net raw folder)")
    out = Path(out)
    if source.requires_from:
        return fetch_placed(source, out, from_dir, cache_dir)
    if from_dir is not None:
        raise UnetscoutError(f"{name}: --from is only for registration-only datasets "
                             f"({', '.join(s.name for s in SOURCES if s.requires_from)}); "
                             f"{name} is downloaded for you")
    return fetch_source(source, out, cache_dir)


def _own_raw_folder(folder: Path) -> Path:
    for part, is_there in (("dataset.json", Path.is_file), ("imagesTr", Path.is_dir), ("labelsTr", Path.is_dir)):
        if not is_there(folder / part):
            raise file_error(folder / part, "missing: not an nnU-Net raw folder "
                                            "(needs dataset.json, imagesTr/ and labelsTr/)")
    return folder


def _cache(out: Path, cache_dir: Path | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else out.parent / ".downloads"


@contextlib.contextmanager
def _scratch(cache: Path, label: str) -> Iterator[Path]:
    """A temporary extraction folder in the cache, removed whatever happens."""
    cache.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{label}.extract-", dir=cache))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _download_record(source: DatasetSource, files: list[Path], out: Path) -> dict:
    """What was fetched, for OUT/download.json; hashes what no checksum pins, warning once.

    A pin covers the archive at `source.url`, which is `files[0]`; every other file is hashed.
    """
    unpinned = source.urls[1:] if source.pinned else source.urls
    if unpinned and source.name not in _warned_unpinned:
        _warned_unpinned.add(source.name)
        print(f"unetscout: warning: {source.name}: no pinned checksum for {', '.join(unpinned)}; the size and "
              f"sha256 of what was downloaded are recorded in {out / 'download.json'} (compare or pin them)",
              file=sys.stderr, flush=True)
    entries = []
    for index, path in enumerate(files):
        entry = {"file": path.name, "size": path.stat().st_size}
        if source.pinned and index == 0:
            entry.update({key: value for key, value in (("md5", source.md5), ("sha256", source.sha256)) if value})
        else:
            entry["sha256"] = hash_file(path, ("sha256",))["sha256"]
        entries.append(entry)
    record = {"dataset": source.name, "title": source.title, "url": source.url, "pinned": source.pinned,
              "licence": source.licence, "files": entries, "unetscout_version": __version__,
              "fetched_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if source.extra_urls:
        record["urls"] = list(source.urls)
    return record


def unpack(archive: Path, dest: Path) -> Path:
    """Extract a tar, zip or RAR archive into `dest`; RAR through the first tool of RAR_TOOLS on PATH."""
    with open(archive, "rb") as stream:
        head = stream.read(8)
    if not head.startswith(RAR_SIGNATURES):
        return extract_archive(archive, dest)
    command = _rar_command(archive, dest)
    if command is None:
        raise file_error(archive, f"a RAR archive, which Python cannot read: install one of {', '.join(RAR_TOOLS)} "
                                  "(e.g. apt install libarchive-tools, brew install libarchive) and rerun; "
                                  "the download is kept")
    dest.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise file_error(archive, f"{command[0]} could not extract it (exit {done.returncode}"
                                  f"{': ' + said[-1] if said else ''}); delete it and rerun")
    # These tools refuse members outside `dest` themselves; links, which could point anywhere, are refused here.
    links = [path for path in dest.rglob("*") if path.is_symlink()]
    if links:
        raise file_error(archive, f"holds links ({links[0].relative_to(dest)}); refusing to use it")
    return dest


def _rar_command(archive: Path, dest: Path) -> list[str] | None:
    for name, command in RAR_TOOLS.items():
        if shutil.which(name):
            return command(archive, dest)
    if shutil.which("tar"):  # macOS's tar is bsdtar, which reads RAR; GNU tar does not
        try:
            said = subprocess.run(["tar", "--version"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            said = ""
        if "bsdtar" in said:
            return ["tar", "-xf", str(archive), "-C", str(dest)]
    return None


def fetch_source(source: DatasetSource, out: Path, cache_dir: Path | None = None) -> Path:
    """Download `source` into the cache, verify it, and convert it into `out` atomically."""
    out = Path(out)
    if source.requires_from:
        raise UnetscoutError(_placement_message(source, out))
    cache = _cache(out, cache_dir)
    if source.layout == "kits23":
        return _fetch_kits23(source, out, cache)
    archives = [download(source.url, cache / source.cache_name, md5=source.md5, sha256=source.sha256,
                         expected_size=source.size)]
    archives += [download(url, cache / Path(urlparse(url).path).name) for url in source.extra_urls]
    record = _download_record(source, archives, out)
    converter = {"msd": convert.convert_msd, "acdc": convert.convert_acdc, "amos22": convert.convert_amos22,
                 "isic2018": convert_images.convert_isic2018, "busbra": convert_images.convert_busbra,
                 "fives": convert_images.convert_fives}
    with _scratch(cache, archives[0].name) as unpacked:
        for archive in archives:  # several archives of one dataset unpack side by side
            print(f"extract {archive.name}", file=sys.stderr, flush=True)
            unpack(archive, unpacked)
        with atomic_directory(out) as tmp:
            converter[source.layout](unpacked, tmp)
            write_json_atomic(tmp / "download.json", record)
    return out


def _fetch_kits23(source: DatasetSource, out: Path, cache: Path) -> Path:
    folder = cache / source.name
    fetched: list[Path] = []

    def cases() -> Iterator[tuple[str, Path, Path]]:
        # One case downloaded, checked and copied before the next is fetched.
        for number in source.cases:
            case = f"case_{number:05d}"
            image = download(source.url.format(case=number), folder / f"{case}_imaging.nii.gz")
            label = download(source.label_url.format(case=number), folder / f"{case}_segmentation.nii.gz")
            fetched.extend((image, label))
            yield case, image, label

    with atomic_directory(out) as tmp:
        convert.convert_kits23(cases(), tmp, total=len(source.cases))
        write_json_atomic(tmp / "download.json", _download_record(source, fetched, out))
    return out


def _placement_message(source: DatasetSource, out: Path) -> str:
    example = out.parent / "placed" / source.name
    if source.layout == "echonet_dynamic":
        return (f"{source.name}: needs registration, so it cannot be downloaded for you: request it at "
                f"{ECHONET_PAGE} (research use agreement), place the unpacked EchoNet-Dynamic folder "
                f"({ECHONET_FILES}), or the zip it comes in, in a folder DIR (e.g. {example}) and rerun "
                f"with --from DIR")
    return (f"{source.name}: needs registration, so it cannot be downloaded for you: register at "
            f"https://www.synapse.org/#!Synapse:{BRATS_SYNAPSE}, place {BRATS_ARCHIVE} (from Synapse "
            f"{BRATS_SYNAPSE}), or the BraTS2021_NNNNN/ case folders it unpacks to, in a folder DIR "
            f"(e.g. {example}) and rerun with --from DIR")


def _placed_archives(from_dir: Path) -> list[Path]:
    """The archives a user placed in `from_dir` (hidden files skipped), sorted by name."""
    return sorted(p for p in from_dir.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.name.endswith((".tar", ".tar.gz", ".tgz", ".zip")))


def fetch_placed(source: DatasetSource, out: Path, from_dir: Path | None, cache_dir: Path | None = None) -> Path:
    """Validate and convert a registration-only dataset the user placed in `from_dir`."""
    out = Path(out)
    if from_dir is None:
        raise UnetscoutError(_placement_message(source, out))
    from_dir = Path(from_dir)
    if not from_dir.is_dir():
        raise file_error(from_dir, f"--from folder does not exist; {_placement_message(source, out)}")
    if source.layout == "echonet_dynamic":
        return _fetch_echonet_placed(source, out, from_dir, cache_dir)
    folders = convert.brats_case_folders(from_dir)
    if folders:
        with atomic_directory(out) as tmp:
            convert.convert_brats2021(folders, tmp)
        return out
    archives = _placed_archives(from_dir)
    if not archives:
        raise file_error(from_dir, f"holds neither {BRATS_ARCHIVE} nor BraTS2021_NNNNN/ case folders; "
                                   f"{_placement_message(source, out)}")
    archive = next((p for p in archives if p.name == BRATS_ARCHIVE), archives[0])
    with _scratch(_cache(out, cache_dir), archive.name) as unpacked:
        print(f"extract {archive}", file=sys.stderr, flush=True)
        extract_archive(archive, unpacked)
        folders = convert.brats_case_folders(unpacked)
        if not folders:
            raise file_error(archive, "holds no BraTS2021_NNNNN/ case folders")
        with atomic_directory(out) as tmp:
            convert.convert_brats2021(folders, tmp)
    return out


def _fetch_echonet_placed(source: DatasetSource, out: Path, from_dir: Path, cache_dir: Path | None) -> Path:
    """EchoNet-Dynamic placed as its folder (FileList.csv, VolumeTracings.csv, Videos/) or as its zip."""
    if next(from_dir.rglob("VolumeTracings.csv"), None) is not None:
        with atomic_directory(out) as tmp:
            convert_images.convert_echonet_dynamic(from_dir, tmp)
        return out
    archives = _placed_archives(from_dir)
    if not archives:
        raise file_error(from_dir, f"holds neither the EchoNet-Dynamic folder ({ECHONET_FILES}) nor an archive "
                                   f"of it; {_placement_message(source, out)}")
    with _scratch(_cache(out, cache_dir), archives[0].name) as unpacked:
        for archive in archives:
            print(f"extract {archive}", file=sys.stderr, flush=True)
            unpack(archive, unpacked)
        with atomic_directory(out) as tmp:
            convert_images.convert_echonet_dynamic(unpacked, tmp)
    return out
