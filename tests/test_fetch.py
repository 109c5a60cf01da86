"""`stagewise data fetch` against a local HTTP server on 127.0.0.1 serving generated archives."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import make_image_folder
from stagewise.cli import main
from stagewise.data import sources
from stagewise.data.fetch import MARKER, fetch
from stagewise.data.layouts import load_dataset
from stagewise.data.sources import Source, register_source
from stagewise.errors import DataError


class _Handler(BaseHTTPRequestHandler):
    """Serves `files`; honours Range unless `ranges` is off; can drop a reply after `cut` bytes."""

    files: dict[str, bytes] = {}
    requests: list[tuple[str, str | None]] = []
    ranges = True
    cut: int | None = None

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        name = self.path.lstrip("/")
        rng = self.headers.get("Range")
        self.requests.append((name, rng))
        if name not in self.files:
            self.send_error(404)
            return
        body, start = self.files[name], 0
        if rng and self.ranges:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        self.wfile.write(payload[: self.cut] if self.cut is not None else payload)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    handler = type("Handler", (_Handler,), {"files": {}, "requests": [], "ranges": True, "cut": None})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    handler.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield handler
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _isolated_registry(monkeypatch):
    monkeypatch.setattr(sources, "SOURCES", dict(sources.SOURCES))
    monkeypatch.delenv("STAGEWISE_FETCH_BASE_URL", raising=False)


def tgz_of(folder: Path, arcname: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        t.add(folder, arcname=arcname)
    return buf.getvalue()


@pytest.fixture
def toy_archive(tmp_path: Path) -> bytes:
    """A small image-folder dataset packed as toyset/{train,val}/<class>/*.png."""
    src = make_image_folder(tmp_path / "src", per_class=6, size=32)
    return tgz_of(src, "toyset")


def register(server, name: str, data: bytes, checksum: str | None = None, archive="toy.tgz",
             folder="toyset") -> Source:
    server.files[archive] = data
    src = Source(name, f"{server.base}/{archive}",
                 checksum or f"sha256:{hashlib.sha256(data).hexdigest()}", folder, "folder")
    register_source(src)
    return src


def test_fetch_verifies_unpacks_and_is_idempotent(tmp_path: Path, server, toy_archive) -> None:
    register(server, "toy", toy_archive)
    root = tmp_path / "data"
    folder = fetch("toy", root, progress=False)
    assert folder == root / "toyset" and (folder / MARKER).is_file()
    assert load_dataset(folder).num_classes == 3
    assert sorted(p.name for p in root.iterdir()) == ["toyset"]  # no archive, no temp folders
    assert fetch("toy", root, progress=False) == folder
    assert len(server.requests) == 1  # the second call found it in place


def test_md5_checksums_are_accepted(tmp_path: Path, server, toy_archive) -> None:
    register(server, "toy", toy_archive, checksum=f"md5:{hashlib.md5(toy_archive).hexdigest()}")
    assert (fetch("toy", tmp_path, progress=False) / "train").is_dir()


def test_checksum_mismatch_leaves_nothing_behind(tmp_path: Path, server, toy_archive) -> None:
    register(server, "toy", toy_archive, checksum="sha256:" + "0" * 64)
    root = tmp_path / "data"
    with pytest.raises(DataError, match="checksum mismatch.*download was deleted"):
        fetch("toy", root, progress=False)
    leftovers = [p for p in root.rglob("*") if p.is_file()]
    assert leftovers == [] and not (root / "toyset").exists()


def test_partial_download_resumes_with_range(tmp_path: Path, server, toy_archive) -> None:
    register(server, "toy", toy_archive)
    half = len(toy_archive) // 2
    part = tmp_path / ".downloads" / "toy.tgz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(toy_archive[:half])
    fetch("toy", tmp_path, progress=False)
    assert server.requests == [("toy.tgz", f"bytes={half}-")]
    assert (tmp_path / "toyset" / "train").is_dir()


def test_complete_part_file_is_verified_not_downloaded_again(tmp_path: Path, server,
                                                             toy_archive) -> None:
    register(server, "toy", toy_archive)
    part = tmp_path / ".downloads" / "toy.tgz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(toy_archive)  # a run that died after the last byte, before verifying
    fetch("toy", tmp_path, progress=False)
    assert server.requests == [("toy.tgz", f"bytes={len(toy_archive)}-")]  # answered 416
    assert (tmp_path / "toyset" / MARKER).is_file()


def test_dropped_connection_keeps_the_part_and_the_rerun_resumes(tmp_path: Path, server,
                                                                 toy_archive) -> None:
    register(server, "toy", toy_archive)
    server.cut = 1000
    with pytest.raises(DataError, match="again to resume"):
        fetch("toy", tmp_path, progress=False)
    part = tmp_path / ".downloads" / "toy.tgz.part"
    assert part.stat().st_size == 1000 and not (tmp_path / "toyset").exists()
    server.cut = None
    fetch("toy", tmp_path, progress=False)
    assert server.requests[-1] == ("toy.tgz", "bytes=1000-")
    assert (tmp_path / "toyset" / MARKER).is_file()


def test_server_without_range_support_starts_over(tmp_path: Path, server, toy_archive) -> None:
    register(server, "toy", toy_archive)
    server.ranges = False
    part = tmp_path / ".downloads" / "toy.tgz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage that must not be kept")
    fetch("toy", tmp_path, progress=False)
    assert (tmp_path / "toyset" / "val").is_dir()


def test_base_url_override_and_cli(tmp_path: Path, server, toy_archive, capsys) -> None:
    src = register(server, "toy", toy_archive)
    register_source(Source("toy", "https://unreachable.invalid/toy.tgz", src.checksum, "toyset",
                           "folder"))
    code = main(["data", "fetch", "toy", "--root", str(tmp_path), "--base-url", server.base,
                 "--quiet"])
    assert code == 0 and "toyset" in capsys.readouterr().out
    assert (tmp_path / "toyset" / "train").is_dir()


def test_archive_escaping_its_folder_is_refused(tmp_path: Path, server) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("toyset/train/a/x.txt", "ok")
        z.writestr("../../evil.txt", "pwned")
    register(server, "evil", buf.getvalue(), archive="evil.zip")
    root = tmp_path / "deep" / "data"
    with pytest.raises(DataError, match="outside the target folder"):
        fetch("evil", root, progress=False)
    assert not (tmp_path / "evil.txt").exists() and not (root / "toyset").exists()
    assert not list(root.glob(".unpack-*"))


def test_archive_without_expected_folder(tmp_path: Path, server, toy_archive) -> None:
    register(server, "toy", toy_archive, folder="other-name")
    with pytest.raises(DataError, match="expected a top-level folder other-name/, found toyset"):
        fetch("toy", tmp_path, progress=False)
    assert not list(tmp_path.glob(".unpack-*")) and not (tmp_path / "toyset").exists()


def test_imagenet_prints_instructions_without_downloading(tmp_path: Path, server, capsys) -> None:
    assert main(["data", "fetch", "imagenet", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "licence" in err and "LOC_val_solution.csv" in err
    assert server.requests == [] and list(tmp_path.iterdir()) == []


def test_existing_foreign_folder_is_not_overwritten(tmp_path: Path, server, toy_archive) -> None:
    register(server, "toy", toy_archive)
    (tmp_path / "toyset").mkdir()
    (tmp_path / "toyset" / "mine.txt").write_text("keep")
    with pytest.raises(DataError, match="not fetched by stagewise"):
        fetch("toy", tmp_path, progress=False)
    assert (tmp_path / "toyset" / "mine.txt").read_text() == "keep" and server.requests == []


def test_registry_has_every_advertised_dataset() -> None:
    for name in ("imagenette", "imagenette-160", "imagewoof-160", "tiny-imagenet", "cifar10",
                 "cifar100"):
        src = sources.SOURCES[name]
        assert sources.check_checksum(src.checksum, name) == src.checksum
        assert src.layout in {"imagenette", "imagewoof", "tiny-imagenet", "cifar"}
