"""Export a stored model to one archive file and import it back.

An archive is a tar file (gzip-compressed when its name ends in ``.gz`` or
``.tgz``) whose first member is the manifest ``model.json``, followed by the
model's files at the same relative paths as in the store. Import checks every
member's path, extracts into a private directory, verifies the sizes and
SHA-256 sums listed in the manifest, and publishes with one rename, exactly as
a save does.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import IO, Any

from .store import (
    MANIFEST,
    CorruptModel,
    Model,
    ModelStoreError,
    Tag,
    check_name,
    file_table,
    get,
    make_temp_dir,
    publish,
    store_home,
    sweep_temp,
)

Progress = Callable[[int, int], None]
"""Called as ``progress(done_bytes, total_bytes)`` while an archive is written or read."""

ARCHIVE_SUFFIX = ".shmmodel"
_CHUNK = 1 << 20


class _CountingReader(io.RawIOBase):
    """Wraps a binary file and reports how many bytes were read through it."""

    def __init__(self, f: IO[bytes], on_read: Callable[[int], None]) -> None:
        self._f = f
        self._on_read = on_read

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._f.read(len(b))
        n = len(data)
        b[:n] = data
        self._on_read(n)
        return n


def _compressed(path: Path) -> bool:
    return path.name.endswith((".gz", ".tgz"))


def _open_write(path: Path, gz: bool) -> tarfile.TarFile:
    return tarfile.open(path, "w:gz") if gz else tarfile.open(path, "w")


def _open_read(path: Path) -> tarfile.TarFile:
    return tarfile.open(path, "r:gz") if _compressed(path) else tarfile.open(path, "r:")


def _open_stream(path: Path, fileobj: IO[bytes]) -> tarfile.TarFile:
    # Stream mode reads members in order without seeking back, so progress is monotone.
    if _compressed(path):
        return tarfile.open(fileobj=fileobj, mode="r|gz")
    return tarfile.open(fileobj=fileobj, mode="r|")


def export_model(
    tag: "str | Tag | Model",
    path: str | os.PathLike[str],
    *,
    home: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> Path:
    """Write one model version to a single archive file; returns its path.

    If `path` is an existing directory the file is named
    ``<name>-<version>.shmmodel`` inside it. The archive is written to a
    temporary name first, so an interrupted export leaves no partial file.
    """
    model = tag if isinstance(tag, Model) else get(tag, home=home)
    out = Path(path)
    if out.is_dir():
        out = out / f"{model.name}-{model.version}{ARCHIVE_SUFFIX}"
    files = dict(model.info.get("files", {}))
    total = sum(int(f["size"]) for f in files.values())
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    partial = out.with_name(out.name + ".partial")
    try:
        with _open_write(partial, _compressed(out)) as tar:
            tar.add(model.path / MANIFEST, arcname=MANIFEST, recursive=False)
            for relpath in files:
                src = model.path / relpath
                info = tar.gettarinfo(str(src), arcname=relpath)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(src, "rb") as f:
                    tar.addfile(info, fileobj=_CountingReader(f, advance))  # type: ignore[arg-type]
        os.replace(partial, out)
    finally:
        if partial.exists():
            partial.unlink()
    if progress is not None and total == 0:
        progress(0, 0)
    return out


def _safe_member(member: tarfile.TarInfo) -> str:
    rel = PurePosixPath(member.name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise CorruptModel(f"archive member {member.name!r} escapes the model directory; refusing to import it")
    if not (member.isfile() or member.isdir()):
        raise CorruptModel(f"archive member {member.name!r} is not a regular file; refusing to import it")
    return rel.as_posix()


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of an archive, without extracting anything else."""
    with _open_read(Path(path)) as tar:
        member = tar.next()
        if member is None or member.name != MANIFEST:
            raise CorruptModel(f"{path} is not a shmserve model archive (its first member is not {MANIFEST})")
        f = tar.extractfile(member)
        assert f is not None
        return dict(json.loads(f.read()))


def import_model(
    path: str | os.PathLike[str],
    *,
    home: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> Model:
    """Add the model in an archive file to the store, keeping its tag.

    Raises ModelExists if that exact version is already stored. Pickle-based
    models (see the manifest's ``options.trusted_only``) run code when loaded:
    import only archives from people you trust.
    """
    src = Path(path)
    if not src.is_file():
        raise ModelStoreError(f"cannot import {src}: no such file")
    root = store_home(home)
    total = src.stat().st_size
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(min(done, total), total)

    sweep_temp(root)
    staged = make_temp_dir(root)
    try:
        with open(src, "rb") as raw:
            reader = io.BufferedReader(_CountingReader(raw, advance), _CHUNK)
            try:
                with _open_stream(src, reader) as tar:
                    for member in tar:
                        rel = _safe_member(member)
                        dest = staged / rel
                        if member.isdir():
                            dest.mkdir(parents=True, exist_ok=True)
                            continue
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        f = tar.extractfile(member)
                        assert f is not None
                        with open(dest, "wb") as out:
                            shutil.copyfileobj(f, out, _CHUNK)
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise CorruptModel(f"cannot read model archive {src}: {exc}") from exc
        try:
            info = json.loads((staged / MANIFEST).read_bytes())
        except (OSError, ValueError) as exc:
            raise CorruptModel(f"{src} is not a shmserve model archive: its {MANIFEST} is missing or unreadable") from exc
        name, version = info.get("name"), info.get("version")
        tag_text = f"{name}:{version}"
        check_name(str(name), tag=tag_text)
        check_name(str(version), what="model version", tag=tag_text)
        if file_table(staged) != info.get("files"):
            raise CorruptModel(f"archive {src} of model {tag_text}: files do not match the manifest checksums")
        return publish(root, staged, info, version=str(version))
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
