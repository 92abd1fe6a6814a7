"""Resumable, checksummed downloads against a local HTTP server (no internet)."""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import zipfile

import numpy as np
import pytest
from local_http import LocalServer

from unetscout.data import download as download_module
from unetscout.data.download import download, extract_archive, part_path
from unetscout.errors import UnetscoutError

PAYLOAD = np.random.default_rng(7).integers(0, 256, size=300_000, dtype=np.uint8).tobytes()
MD5 = hashlib.md5(PAYLOAD).hexdigest()
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def server():
    with LocalServer({"/data.bin": PAYLOAD}) as running:
        yield running


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(download_module, "RETRY_BACKOFF_S", 0.0)


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("checksum", [{"md5": MD5}, {"sha256": SHA256}, {"md5": MD5, "sha256": SHA256}])
def test_plain_download_verifies_and_lands_at_dest(server, tmp_path, checksum):
    dest = tmp_path / "cache" / "data.bin"
    assert download(server.url("/data.bin"), dest, **checksum, expected_size=len(PAYLOAD)) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not part_path(dest).exists()
    assert server.ranges("/data.bin") == [None]


def test_checksum_mismatch_names_url_and_leaves_nothing(server, tmp_path):
    server.wrong_bytes.add("/data.bin")
    dest = tmp_path / "data.bin"
    url = server.url("/data.bin")
    with pytest.raises(UnetscoutError) as err:
        download(url, dest, md5=MD5)
    message = _one_line(err)
    assert message.startswith(f"{url}: checksum mismatch (md5 expected {MD5}, got ")
    assert hashlib.md5(bytes(255 - b for b in PAYLOAD)).hexdigest() in message
    assert "rerun to download again" in message
    assert not dest.exists() and not part_path(dest).exists()


def test_expected_size_mismatch_is_an_error(server, tmp_path):
    dest = tmp_path / "data.bin"
    with pytest.raises(UnetscoutError, match="size mismatch"):
        download(server.url("/data.bin"), dest, expected_size=len(PAYLOAD) + 1)
    assert not dest.exists() and not part_path(dest).exists()


def test_404_is_one_line_naming_url_and_status(server, tmp_path):
    url = server.url("/absent.tar")
    with pytest.raises(UnetscoutError) as err:
        download(url, tmp_path / "absent.tar")
    message = _one_line(err)
    assert message.startswith(url) and "404" in message


def test_connection_refused_is_one_line_naming_url(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/data.bin"
    with pytest.raises(UnetscoutError) as err:
        download(url, tmp_path / "data.bin", retries=0)
    message = _one_line(err)
    assert message.startswith(f"{url}: cannot connect")


def test_truncated_transfer_resumes_with_range(server, tmp_path):
    server.truncate_at["/data.bin"] = 100_000
    dest = tmp_path / "data.bin"
    download(server.url("/data.bin"), dest, md5=MD5)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges("/data.bin") == [None, "bytes=100000-"]


def test_transfer_that_keeps_failing_gives_up_and_keeps_the_part(server, tmp_path):
    server.truncate_at["/data.bin"] = 50_000
    server.truncate_requests = 100
    dest = tmp_path / "data.bin"
    url = server.url("/data.bin")
    with pytest.raises(UnetscoutError) as err:
        download(url, dest, md5=MD5, retries=2)
    message = _one_line(err)
    assert message.startswith(url) and "after 2 retries" in message and "rerun to resume" in message
    # three attempts of 50 000 bytes each, resumed where the previous one stopped
    assert part_path(dest).read_bytes() == PAYLOAD[:150_000]
    assert server.ranges("/data.bin") == [None, "bytes=50000-", "bytes=100000-"]
    assert not dest.exists()

    server.truncate_requests = 0  # the network is back: a rerun finishes the same .part
    download(url, dest, md5=MD5)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges("/data.bin")[-1] == "bytes=150000-"


def test_existing_part_is_resumed_from_its_size(server, tmp_path):
    dest = tmp_path / "data.bin"
    part_path(dest).write_bytes(PAYLOAD[:12_345])
    download(server.url("/data.bin"), dest, sha256=SHA256)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges("/data.bin") == ["bytes=12345-"]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.ignore_range.add("/data.bin")
    dest = tmp_path / "data.bin"
    part_path(dest).write_bytes(b"x" * 5_000)  # garbage that must not survive
    download(server.url("/data.bin"), dest, md5=MD5)
    assert dest.read_bytes() == PAYLOAD


def test_whole_part_answered_416_is_verified_and_finished(server, tmp_path):
    dest = tmp_path / "data.bin"
    part_path(dest).write_bytes(PAYLOAD)
    download(server.url("/data.bin"), dest, md5=MD5)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges("/data.bin") == [f"bytes={len(PAYLOAD)}-"]


def test_existing_verified_dest_is_not_downloaded_again(server, tmp_path):
    dest = tmp_path / "data.bin"
    dest.write_bytes(PAYLOAD)
    download(server.url("/data.bin"), dest, md5=MD5)
    assert server.requests == []


def test_existing_dest_that_fails_its_checksum_is_replaced(server, tmp_path):
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"not the file")
    download(server.url("/data.bin"), dest, md5=MD5)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests) == 1


# --- archives ------------------------------------------------------------------------------

def _tar_with(tmp_path, members: list[tuple[tarfile.TarInfo, bytes | None]]):
    path = tmp_path / "archive.tar"
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def test_extract_skips_macos_litter_and_copies_links_inside(tmp_path):
    link = tarfile.TarInfo("top/alias.txt")
    link.type, link.linkname = tarfile.SYMTYPE, "real.txt"
    archive = _tar_with(tmp_path, [(tarfile.TarInfo("top/real.txt"), b"hello"),
                                   (tarfile.TarInfo("top/._real.txt"), b"fork"),
                                   (tarfile.TarInfo("__MACOSX/top/x"), b"fork"),
                                   (link, None)])
    out = extract_archive(archive, tmp_path / "out")
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["top/alias.txt", "top/real.txt"]
    assert (out / "top" / "alias.txt").read_bytes() == b"hello" and not (out / "top" / "alias.txt").is_symlink()


@pytest.mark.parametrize("name", ["../evil.txt", "top/../../evil.txt", "/tmp/evil-unetscout.txt"])
def test_tar_path_traversal_is_rejected(tmp_path, name):
    archive = _tar_with(tmp_path, [(tarfile.TarInfo(name), b"pwned")])
    with pytest.raises(UnetscoutError) as err:
        extract_archive(archive, tmp_path / "out" / "inner")
    assert "unsafe archive member" in _one_line(err) and str(archive) in str(err.value)
    assert not (tmp_path / "out" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()


def test_tar_symlink_escaping_is_rejected(tmp_path):
    link = tarfile.TarInfo("top/passwd")
    link.type, link.linkname = tarfile.SYMTYPE, "../../etc/passwd"
    archive = _tar_with(tmp_path, [(link, None)])
    with pytest.raises(UnetscoutError, match="links to"):
        extract_archive(archive, tmp_path / "out")


def test_zip_path_traversal_is_rejected(tmp_path):
    archive = tmp_path / "archive.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("ok/fine.txt", b"fine")
        zipped.writestr("../evil.txt", b"pwned")
    with pytest.raises(UnetscoutError, match="unsafe archive member"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_not_an_archive_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\x00\x01not an archive" * 10)
    with pytest.raises(UnetscoutError, match="not a tar or zip archive"):
        extract_archive(junk, tmp_path / "out")
