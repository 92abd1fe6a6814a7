"""Atomic outputs: a result either exists complete or not at all, and has one writer.

Every writer builds its output under a temporary sibling name and renames it into place
only after it has finished, so a crash, a bad input or a SIGKILL never leaves a
half-written file or directory that a rerun (or Snakemake) would mistake for a result.
A full disk is reported as such (the output, the bytes it needed, the bytes free), never as
a library's traceback. `exclusive_output` keeps a second process (a job left running after
Snakemake was killed, then a rerun) from writing the same output at the same time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

from unetscout.errors import UnetscoutError, file_error

# errno values that mean "the file system has no room for this": full disk, exhausted quota.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# Concurrent writers of one directory (without the lock) can each find the other's rename
# in the way; retrying the move-aside/rename pair this often always settles it.
_REPLACE_ATTEMPTS = 20
# Free bytes under which a failed write without an errno counts as a full disk.
_NEARLY_FULL = 1 << 20


def _make_parents(folder: Path) -> list[Path]:
    """Create `folder` and its missing ancestors; return the ones this call created,
    outermost first, so a writer that fails can take them away again (`_remove_if_empty`)."""
    missing = []
    for candidate in (folder, *folder.parents):
        if candidate.is_dir():
            break
        missing.append(candidate)
    created = []
    for candidate in reversed(missing):
        try:
            candidate.mkdir()
            created.append(candidate)
        except FileExistsError:
            pass  # another writer made it at the same moment: it is not ours to remove
    # Raises the usual error when a component is a file, or the folder cannot be made.
    folder.mkdir(parents=True, exist_ok=True)
    return created


def _remove_if_empty(created: list[Path]) -> None:
    """Remove the folders `_make_parents` created (innermost first) while they are empty: a
    failed write must not leave an empty results folder that looks like the start of a
    result. A folder something else has written into since is kept, and so is every folder
    above it."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            return


def _sibling_temp(path: Path, directory: bool) -> tuple[Path, list[Path]]:
    """A temporary sibling of `path` and the parent folders made for it (see _make_parents)."""
    prefix = f".{path.name}.partial-"
    for _ in range(_REPLACE_ATTEMPTS):
        created = _make_parents(path.parent)
        try:
            if directory:
                return Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent)), created
            fd, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
            os.close(fd)
            return Path(name), created
        except FileNotFoundError:
            # A failed writer of another output removed the (empty) parent we had just
            # made or found: make it again.
            continue
    raise file_error(path.parent, "could not create a temporary file here: the folder keeps disappearing")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace(tmp: Path, final: Path) -> None:
    # mkstemp/mkdtemp create owner-only files; results on a shared cluster follow the umask.
    os.chmod(tmp, (0o777 if tmp.is_dir() else 0o666) & ~_current_umask())
    if not tmp.is_dir():
        os.replace(tmp, final)
        return
    # os.replace cannot overwrite a non-empty directory: move the old one aside (under a name
    # of its own, so two writers never collide on it), then rename. If another writer puts a
    # directory back in between, the rename fails with ENOTEMPTY/EEXIST: move that aside too.
    moved_aside = []
    try:
        for _ in range(_REPLACE_ATTEMPTS):
            if final.is_dir() and not final.is_symlink():
                old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
                try:
                    os.replace(final, old)
                    moved_aside.append(old)
                except FileNotFoundError:
                    old.rmdir()  # another writer moved it first
                except OSError as err:
                    old.rmdir()
                    if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
            try:
                os.replace(tmp, final)
                return
            except OSError as err:
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        raise file_error(final, f"could not rename {tmp.name} into place: another process keeps replacing it")
    finally:
        for old in moved_aside:
            shutil.rmtree(old, ignore_errors=True)


def _remove(path: Path) -> None:
    """Delete a temporary file or directory tree; already gone is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _bytes_under(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def disk_full_error(path: Path, needed: int | None, written: int | None = None) -> UnetscoutError:
    """`PATH: no space left on the device ...`, with the bytes it needs (exact when the size
    was known in advance, else more than what was written before the disk filled) and free."""
    free = shutil.disk_usage(path.parent if path.parent.exists() else Path.cwd()).free
    if needed:
        need = f"needs {needed:,} bytes"
    elif written:
        need = f"needs more than the {written:,} bytes written before the disk filled"
    else:
        need = "the disk filled"
    return file_error(path, f"no space left on the device ({need}; {free:,} bytes free); "
                            "free some space or write the results elsewhere, then rerun")


def is_no_space(err: BaseException, where: Path | None = None) -> bool:
    """Did `err` come from a full file system? Some writers report a short write without an
    errno (numpy's `tofile`: "N requested and M written"); on the file system at `where`
    that is a full disk when (almost) nothing is free."""
    if not isinstance(err, OSError):
        return False
    if err.errno in _NO_SPACE:
        return True
    return err.errno is None and where is not None and shutil.disk_usage(where).free < _NEARLY_FULL


@contextlib.contextmanager
def _written_or_removed(tmp: Path, final: Path, size: int | None, created: list[Path]) -> Iterator[None]:
    """Remove `tmp` (and the parent folders made for it, `created`, while empty) if the block
    fails; a full disk becomes a one-line error about `final`."""
    try:
        yield
    except BaseException as err:
        written = _bytes_under(tmp) if tmp.exists() else 0
        _remove(tmp)
        # Measure the free space before the folders go: disk_full_error looks at final.parent.
        no_space = is_no_space(err, final.parent)
        error = disk_full_error(final, size, written) if no_space else None
        _remove_if_empty(created)
        if error is not None:
            raise error from None
        raise


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes `path` when the block ends without error."""
    final = Path(path)
    tmp, created = _sibling_temp(final, directory=True)
    with _written_or_removed(tmp, final, None, created):
        yield tmp
        _replace(tmp, final)


@contextlib.contextmanager
def atomic_file(path: str | Path, size: int | None = None) -> Iterator[Path]:
    """Yield a temporary file path that becomes `path` when the block ends without error.
    `size`, when the caller knows it, is checked against the free space first."""
    final = Path(path)
    tmp, created = _sibling_temp(final, directory=False)
    if size is not None and shutil.disk_usage(tmp.parent).free < size:
        tmp.unlink(missing_ok=True)
        error = disk_full_error(final, size)
        _remove_if_empty(created)
        raise error
    with _written_or_removed(tmp, final, size, created):
        yield tmp
        _replace(tmp, final)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_file(path, size=len(data)) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# ---------------------------------------------------------------- one writer per output

def lock_path(output: Path) -> Path:
    """The lock of `output`: a hidden sibling, so it exists before the output does and
    outlives its replacement."""
    return output.parent / f".{output.name}.lock"


def _remove_stale_partials(output: Path) -> None:
    """Temporary siblings (and, in a directory output, temporary files) that only a dead
    writer can have left: the caller holds the output's lock."""
    stale = list(output.parent.glob(f".{output.name}.partial-*")) + list(output.parent.glob(f".{output.name}.old-*"))
    if output.is_dir():
        stale += list(output.glob(".*.partial-*"))
    for path in stale:
        _remove(path)


def _acquire(lock: Path, output: Path) -> Any:
    """Open and flock `lock`; retried when the file was replaced between open and flock (a
    holder removes it on release), so two writers never hold locks on different inodes."""
    while True:
        try:
            handle = open(lock, "a+")
        except FileNotFoundError:
            # A failed writer of another output in the same new folder removed it (empty)
            # between our mkdir and this open: make it again.
            lock.parent.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise file_error(output, f"is being written by {holder}; wait for it to finish or stop it, "
                                     "then rerun (one writer per output)") from None
        try:
            if os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()


@contextlib.contextmanager
def exclusive_output(output: str | Path, command: str) -> Iterator[None]:
    """Hold the exclusive lock of `output` for the block; a second writer gets a one-line
    error naming the holder. flock locks die with their process, so a killed writer never
    blocks the rerun (its lock file stays, free); Linux maps flock to POSIX locks on NFS."""
    output = Path(output)
    lock = lock_path(output)
    created = _make_parents(lock.parent)
    handle = _acquire(lock, output)
    try:
        try:
            # Unbuffered: a write the full disk refused must not come back at close().
            os.ftruncate(handle.fileno(), 0)
            os.pwrite(handle.fileno(), f"unetscout {command} (pid {os.getpid()} on {socket.gethostname()})\n".encode(), 0)
        except OSError as err:
            if not is_no_space(err):
                raise
            # Naming the holder is a courtesy; the disk being full is the command's to report.
        _remove_stale_partials(output)
        yield
    finally:
        lock.unlink(missing_ok=True)  # while still held: see _acquire
        handle.close()
        # The lock needed the output's folder; when the command failed before writing
        # anything there, the folders made for it go too (a result keeps them non-empty).
        _remove_if_empty(created)
