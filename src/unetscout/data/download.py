"""Resumable, checksummed HTTP downloads (stdlib urllib) and safe archive extraction.

A download streams into `DEST.part`; only a file whose size and checksums check out is
renamed to `DEST`, so `DEST` existing means `DEST` is good. A transfer that stops early
keeps its `.part`, and the next attempt (or the next run) asks the server for the rest
with an HTTP Range request.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import socket
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from unetscout import __version__
from unetscout.errors import UnetscoutError, file_error
from unetscout.progress import Progress

CHUNK_BYTES = 1 << 20
USER_AGENT = f"unetscout/{__version__} (python-urllib)"
# Seconds to wait before retry n >= 2 is RETRY_BACKOFF_S * 2**(n-2), capped; the first
# retry of a transfer that merely stopped short resumes at once.
RETRY_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
# Statuses that say "try again later" rather than "this will never work".
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
HASH_ALGORITHMS = ("md5", "sha256")

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")


class _Interrupted(Exception):
    """A transfer that stopped early; what arrived is kept and the next attempt resumes."""


def part_path(dest: Path) -> Path:
    """Where `dest` grows while it downloads."""
    return dest.with_suffix(dest.suffix + ".part")


def hash_file(path: str | Path, algorithms: tuple[str, ...] = HASH_ALGORITHMS) -> dict[str, str]:
    """Hex digests of a file, streamed in one pass (archives can be tens of GB)."""
    hashers = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            for hasher in hashers.values():
                hasher.update(chunk)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def download(url: str, dest: str | Path, md5: str | None = None, sha256: str | None = None,
             expected_size: int | None = None, retries: int = 3, timeout: float = 60,
             progress: bool = True) -> Path:
    """Download `url` to `dest`, resuming, retrying and verifying; return `dest`."""
    dest = Path(dest)
    expected = {name: value.lower() for name, value in (("md5", md5), ("sha256", sha256)) if value}
    if dest.is_file():
        if _matches(dest, expected, expected_size):
            return dest
        # Only verified files are ever renamed to dest, so this one was damaged or put there by hand.
        print(f"{dest}: does not match its pinned size/checksum; downloading it again",
              file=sys.stderr, flush=True)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)

    failures = 0
    while True:
        try:
            _transfer(url, part, timeout, dest.name if progress else None)
            break
        except _Interrupted as stop:
            failures += 1
            if failures > retries:
                raise UnetscoutError(
                    f"{url}: {stop}, still incomplete after {retries} retries; the partial download "
                    f"{part} was kept, rerun to resume") from None
            print(f"download {dest.name}: {stop}; resuming (retry {failures} of {retries})",
                  file=sys.stderr, flush=True)
            if failures > 1:
                time.sleep(min(RETRY_BACKOFF_S * 2 ** (failures - 2), MAX_BACKOFF_S))

    _verify_part(url, part, expected, expected_size)
    os.replace(part, dest)
    return dest


def _matches(path: Path, expected: dict[str, str], expected_size: int | None) -> bool:
    if expected_size is not None and path.stat().st_size != expected_size:
        return False
    return not expected or hash_file(path, tuple(expected)) == expected


def _verify_part(url: str, part: Path, expected: dict[str, str], expected_size: int | None) -> None:
    size = part.stat().st_size
    if expected_size is not None and size != expected_size:
        part.unlink()
        raise UnetscoutError(f"{url}: size mismatch (expected {expected_size} bytes, got {size}); "
                             "the partial download was removed, rerun to download again")
    if not expected:
        return
    got = hash_file(part, tuple(expected))
    for name, want in expected.items():
        if got[name] != want:
            part.unlink()
            raise UnetscoutError(f"{url}: checksum mismatch ({name} expected {want}, got {got[name]}); "
                                 "the partial download was removed, rerun to download again")


def _open(url: str, part: Path, have: int, timeout: float):
    """The response for the bytes from `have` on, or None when the part is already whole."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        with err:
            if err.code == 416 and have:
                match = _UNSATISFIED_RANGE.fullmatch((err.headers.get("Content-Range") or "").strip())
                if match and int(match.group(1)) == have:
                    return None
                # The part is longer than the remote file (or the server will not say): start over.
                part.unlink()
                raise _Interrupted(f"the server cannot resume at byte {have}; starting again") from None
            if err.code in TRANSIENT_STATUS:
                raise _Interrupted(f"HTTP {err.code} {err.reason}") from None
            raise UnetscoutError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (TimeoutError, socket.timeout) as err:
        raise _Interrupted(f"no answer within {timeout:g} s ({err})") from None
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, (TimeoutError, socket.timeout, ConnectionResetError)):
            raise _Interrupted(f"connection lost ({reason})") from None
        raise UnetscoutError(f"{url}: cannot connect ({reason})") from None
    except (http.client.HTTPException, ConnectionError) as err:
        raise _Interrupted(f"connection lost ({type(err).__name__}: {err})") from None


def _transfer(url: str, part: Path, timeout: float, label: str | None) -> None:
    """Append the missing bytes to `part`; raise _Interrupted when the transfer stops short."""
    have = part.stat().st_size if part.exists() else 0
    response = _open(url, part, have, timeout)
    if response is None:
        return
    with response:
        if response.status == 206:
            match = _CONTENT_RANGE.fullmatch((response.headers.get("Content-Range") or "").strip())
            if not match or int(match.group(1)) != have:
                part.unlink()
                raise _Interrupted(f"the server resumed at the wrong offset "
                                   f"({response.headers.get('Content-Range')!r}); starting again")
            start = have
            total = None if match.group(3) == "*" else int(match.group(3))
        else:
            # A 200 answer is the whole file from byte 0, whether or not we asked for a range.
            start = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        meter = Progress(f"download {label}", total, unit="B", start=start) if label else None
        with open(part, "ab" if start else "wb") as sink:
            try:
                while chunk := response.read(CHUNK_BYTES):
                    sink.write(chunk)
                    if meter:
                        meter.update(len(chunk))
            except (OSError, http.client.HTTPException) as err:
                raise _Interrupted(f"transfer interrupted ({type(err).__name__}: {err})") from None
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Interrupted(f"transfer stopped at byte {size} of {total}")
    if total is not None and size > total:
        part.unlink()
        raise UnetscoutError(f"{url}: received {size} bytes but the server announced {total}; "
                             "the partial download was removed, rerun to download again")
    if meter:
        meter.close()


# ----------------------------------------------------------------------------- archives

def _skipped(name: str) -> bool:
    """macOS resource forks (`._x`) and `__MACOSX/` folders, which every MSD archive carries."""
    parts = PurePosixPath(name).parts
    return any(part == "__MACOSX" or part.startswith("._") for part in parts)


def _safe_target(archive: Path, root: Path, name: str) -> Path:
    """`root/name`, refusing names that would land outside `root`."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or re.match(r"^[A-Za-z]:", name):
        raise file_error(archive, f"unsafe archive member {name!r} (absolute path or '..' would write "
                                  "outside the extraction folder); refusing to extract")
    return root.joinpath(*[part for part in pure.parts if part not in ("", ".")])


def _check_link(archive: Path, member: tarfile.TarInfo) -> None:
    target = PurePosixPath(member.linkname)
    base = PurePosixPath(member.name).parent if member.issym() else PurePosixPath()
    depth = 0
    for part in (base / target).parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            break
    if target.is_absolute() or depth < 0:
        raise file_error(archive, f"unsafe archive member {member.name!r} links to {member.linkname!r} "
                                  "outside the archive; refusing to extract")


def extract_archive(archive: str | Path, dest: str | Path) -> Path:
    """Unpack a tar (any compression) or zip into `dest`, member by member, as plain files.

    Links inside the archive are written as copies of what they point to; members that
    would escape `dest` stop the extraction with a one-line error.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if tarfile.is_tarfile(archive):
        _extract_tar(archive, dest)
    elif zipfile.is_zipfile(archive):
        _extract_zip(archive, dest)
    else:
        raise file_error(archive, "not a tar or zip archive (damaged download?); delete it and rerun")
    return dest


def _extract_tar(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                if _skipped(member.name):
                    continue
                target = _safe_target(archive, dest, member.name)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if member.issym() or member.islnk():
                    _check_link(archive, member)
                elif not member.isfile():
                    continue  # devices and fifos carry no data
                source = tar.extractfile(member)
                if source is None:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink, CHUNK_BYTES)
    except (tarfile.TarError, EOFError, OSError, KeyError) as err:
        # KeyError: a link to a member the archive does not hold.
        raise file_error(archive, f"cannot extract ({type(err).__name__}: {err}); delete it and rerun") from None


def _extract_zip(archive: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zipped:
            for info in zipped.infolist():
                if _skipped(info.filename):
                    continue
                target = _safe_target(archive, dest, info.filename)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zipped.open(info) as source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink, CHUNK_BYTES)
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise file_error(archive, f"cannot extract ({type(err).__name__}: {err}); delete it and rerun") from None
