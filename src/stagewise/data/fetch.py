"""`stagewise data fetch`: download a public dataset, verify it, unpack it into its layout.

Steps, each leaving a state a rerun can pick up from:
1. download to ROOT/.downloads/<file>.part, resuming with an HTTP Range request after a break;
2. verify the whole file against the registered checksum; on a mismatch it is deleted;
3. unpack into a temporary folder inside ROOT, then move the dataset folder into place with one
   rename. A failure at any point leaves no dataset folder behind, only (at most) the download.
The mirror can be replaced with --base-url or STAGEWISE_FETCH_BASE_URL (same file names).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from ..errors import DataError
from .hashing import file_digest
from .sources import Source, check_checksum, get_source

BASE_URL_ENV = "STAGEWISE_FETCH_BASE_URL"
MARKER = ".stagewise-fetch.json"
_CHUNK = 1 << 20
_TIMEOUT = 60


def fetch(name: str, root: Path, *, base_url: str | None = None, checksum: str | None = None,
          keep_archive: bool = False, progress: bool = True) -> Path:
    """Download, verify and unpack dataset `name` under `root`; returns the dataset folder.

    Example:
        >>> fetch("cifar10", Path("data"))  # doctest: +SKIP
        PosixPath('data/cifar-10-batches-py')
    """
    src = get_source(name)
    if checksum:
        checksum = check_checksum(checksum, "--checksum")
        src = Source(src.name, src.url, checksum, src.folder, src.layout, None, "given by the user")
    root = Path(root).expanduser()
    dest = root / src.folder
    if (dest / MARKER).is_file():
        _say(progress, f"{name}: already in {dest}")
        return dest
    if dest.exists():
        raise DataError(f"{dest} exists but was not fetched by stagewise; remove it or choose "
                        "another --root")
    url = source_url(src, base_url)
    archive = root / ".downloads" / src.filename
    part = archive.with_name(archive.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    download(url, part, progress, src.size)
    _say(progress, f"verifying {src.algorithm} checksum")
    actual = file_digest(part, src.algorithm)
    if actual != src.digest:
        part.unlink()
        raise DataError(
            f"{name}: checksum mismatch for {url}: expected {src.algorithm} {src.digest}, got "
            f"{actual}; the download was deleted. Retry; if the publisher has re-released the "
            f"archive, check its new checksum and pass --checksum {src.algorithm}:<hex>"
        )
    os.replace(part, archive)
    _say(progress, f"unpacking into {dest}")
    unpack(archive, root, src)
    if not keep_archive:
        archive.unlink()
        _remove_if_empty(archive.parent)
    return dest


def source_url(src: Source, base_url: str | None = None) -> str:
    """The registered URL, or the same file name under a mirror's base URL."""
    base = base_url or os.environ.get(BASE_URL_ENV)
    return f"{base.rstrip('/')}/{src.filename}" if base else src.url


def download(url: str, part: Path, progress: bool = True, size: int | None = None) -> None:
    """Fetch `url` into `part`, continuing after the bytes already there when the server can."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "stagewise-fetch"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=_TIMEOUT)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the file is complete
            return
        raise DataError(f"{url}: HTTP {exc.code} {exc.reason}; check the name, or point "
                        f"--base-url / {BASE_URL_ENV} at a mirror") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(f"{url}: cannot connect ({getattr(exc, 'reason', exc)}); check the network "
                        f"or use --base-url / {BASE_URL_ENV} for a mirror") from None
    with resp:
        resumed = have > 0 and resp.status == 206 and _range_start(resp) == have
        if not resumed:
            have = 0  # the server sent the whole file (no Range support): start over
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else size
        _stream(resp, part, "ab" if resumed else "wb", have, total, url, progress)
    got = part.stat().st_size
    if total is not None and got != total:
        raise DataError(f"{url}: download stopped at {got} of {total} bytes; run the same "
                        "command again to resume")


def _range_start(resp) -> int | None:
    value = resp.headers.get("Content-Range", "")  # "bytes START-END/TOTAL"
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _stream(resp, part: Path, mode: str, have: int, total: int | None, url: str,
            progress: bool) -> None:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar, open(part, mode) as f:
        task = bar.add_task(f"downloading {part.name.removesuffix('.part')}", total=total,
                            completed=have)
        try:
            while chunk := resp.read(_CHUNK):
                f.write(chunk)
                bar.advance(task, len(chunk))
        except (OSError, http.client.HTTPException) as exc:
            raise DataError(f"{url}: connection lost after {f.tell()} bytes ({exc}); run the same "
                            f"command again to resume from {part}") from None


def unpack(archive: Path, root: Path, src: Source) -> None:
    """Unpack into a temporary folder in `root`, then rename the dataset folder into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".unpack-{src.name}-", dir=root))
    try:
        try:
            extract(archive, tmp)
        except (tarfile.TarError, zipfile.BadZipFile, OSError, ValueError) as exc:
            raise DataError(f"{archive}: cannot unpack ({exc}); nothing was installed, the "
                            "verified archive is kept for another try") from None
        produced = tmp / src.folder
        # A link would be moved as a link: dangling, or aiming at ROOT itself, once tmp is gone.
        if produced.is_symlink() or not produced.is_dir():
            found = ", ".join(sorted(p.name for p in tmp.iterdir())[:10]) or "nothing"
            raise DataError(f"{archive}: expected a top-level folder {src.folder}/, found {found}")
        (produced / MARKER).write_text(json.dumps({"name": src.name, "checksum": src.checksum,
                                                   "layout": src.layout}))
        os.replace(produced, root / src.folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def extract(archive: Path, dest: Path) -> None:
    """Unpack a .tar[.gz] or .zip, refusing members that would land outside `dest` and symlinks.

    Python's `data` tar filter already refuses absolute paths, '..', devices and links pointing
    outside `dest`, but it judges a symlink where it points at extraction time, inside the
    temporary folder; once the dataset folder is renamed into place a relative link dangles or
    points elsewhere (a top-level `toyset -> .` became a link to ROOT). Dataset archives need no
    symlinks, so every symlink is refused. Hard links stay allowed: the filter keeps them inside
    `dest` and they unpack as ordinary files, so nothing aliased survives the rename.
    """
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                _check_member(name, archive)
            z.extractall(dest)  # zipfile writes a symlink entry as a small file, never a link
        return
    with tarfile.open(archive) as t:
        if hasattr(tarfile, "data_filter"):
            t.extractall(dest, filter=_dataset_filter(archive))
        else:  # Python before 3.10.12 / 3.11.4: no filters, so no links at all
            for m in t.getmembers():
                _check_member(m.name, archive)
                if m.issym() or m.islnk() or m.isdev():
                    raise DataError(f"{archive}: member {m.name} is a link or device; refused, "
                                    "nothing was installed")
            t.extractall(dest)


def _dataset_filter(archive: Path) -> Callable[[tarfile.TarInfo, str], tarfile.TarInfo | None]:
    def accept(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        if member.issym():
            raise DataError(f"{archive}: member {member.name!r} is a symbolic link (to "
                            f"{member.linkname!r}); dataset archives must hold plain files and "
                            "folders, so nothing was installed. Re-create the archive without "
                            "links (tar --dereference) or unpack it yourself and use data: DIR")
        return tarfile.data_filter(member, dest)

    return accept


def _check_member(name: str, archive: Path) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts:
        raise DataError(f"{archive}: member {name!r} would unpack outside the target folder; refused")


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # other downloads still there
        folder.rmdir()


def _say(progress: bool, text: str) -> None:
    if progress:
        from rich.console import Console

        Console(stderr=True).print(text, markup=False, highlight=False)
