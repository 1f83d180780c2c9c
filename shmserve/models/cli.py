"""``shmserve models list|get|delete|export|import``."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import IO, Any

from .archive import export_model, import_model
from .store import ModelStoreError, Tag, delete, get, list_models, resolve_tag

PROGRESS_MIN_BYTES = 16 << 20
"""Archives smaller than this get no progress bar unless ``--progress`` asks for one."""


def register(subparsers: Any) -> None:
    """Add the ``models`` command group to the shmserve CLI."""
    models = subparsers.add_parser("models", help="manage the local model store ($SHMSERVE_HOME)")
    sub = models.add_subparsers(dest="models_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("list", help="list stored models")
    p.add_argument("name", nargs="?", help="only the versions of this model")
    p.add_argument("--json", action="store_true", help="print the manifests as JSON")
    p.set_defaults(func=_list)

    p = sub.add_parser("get", help="show one model's manifest")
    p.add_argument("tag", help="name, name:latest or name:version")
    p.set_defaults(func=_get)

    p = sub.add_parser("delete", help="delete one model version")
    p.add_argument("tag", help="name:version (name alone means the newest)")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=_delete)

    p = sub.add_parser("export", help="write a model to one archive file")
    p.add_argument("tag")
    p.add_argument("path", help="archive file (.shmmodel, or .tar.gz to compress) or a directory")
    _progress_flags(p)
    p.set_defaults(func=_export)

    p = sub.add_parser("import", help="add a model from an archive file to the store")
    p.add_argument("path")
    _progress_flags(p)
    p.set_defaults(func=_import)


def _progress_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show a progress bar")
    group.add_argument("--no-progress", dest="progress", action="store_false", help="never show a progress bar")


class ProgressBar:
    """A one-line text progress bar, redrawn in place on a terminal (stderr by default)."""

    def __init__(self, label: str, stream: IO[str] | None = None, width: int = 30, min_interval: float = 0.1) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.min_interval = min_interval
        self.started = time.monotonic()
        self._last = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._last < self.min_interval:
            return
        self._last = now
        frac = done / total if total else 1.0
        filled = int(frac * self.width)
        rate = done / max(now - self.started, 1e-9) / 1e6
        line = (
            f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {frac * 100:5.1f}% "
            f"{done / 1e6:.1f}/{total / 1e6:.1f} MB {rate:.0f} MB/s"
        )
        self.stream.write(line)
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """End the bar's line."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def _want_progress(flag: bool | None, size: int) -> bool:
    if flag is not None:
        return flag
    return size >= PROGRESS_MIN_BYTES and sys.stderr.isatty()


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


def _fail(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 1


def _list(args: argparse.Namespace) -> int:
    try:
        models = list_models(Tag.parse(args.name).name if args.name else None)
    except ModelStoreError as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps([m.info for m in models], indent=2))
        return 0
    rows = [("TAG", "FRAMEWORK", "SIZE", "CREATED")]
    rows += [(str(m), m.framework, _size(m.size), m.created_at[:19].replace("T", " ")) for m in models]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _get(args: argparse.Namespace) -> int:
    try:
        model = get(args.tag)
    except ModelStoreError as exc:
        return _fail(exc)
    print(json.dumps(dict(model.info, path=str(model.path)), indent=2))
    return 0


def _delete(args: argparse.Namespace) -> int:
    try:
        model = resolve_tag(args.tag)
        if not args.yes:
            if not sys.stdin.isatty():
                return _fail(ModelStoreError(f"refusing to delete {model} without confirmation; pass --yes"))
            if input(f"delete {model}? [y/N] ").strip().lower() not in ("y", "yes"):
                print("not deleted")
                return 1
        delete(model)
    except ModelStoreError as exc:
        return _fail(exc)
    print(f"deleted {model}")
    return 0


def _export(args: argparse.Namespace) -> int:
    try:
        model = get(args.tag)
        bar = ProgressBar(f"exporting {model}") if _want_progress(args.progress, model.size) else None
        try:
            path = export_model(model, args.path, progress=bar)
        finally:
            if bar is not None:
                bar.close()
    except (ModelStoreError, OSError) as exc:
        return _fail(exc)
    print(f"exported {model} to {path}")
    return 0


def _import(args: argparse.Namespace) -> int:
    try:
        size = os.path.getsize(args.path) if os.path.isfile(args.path) else 0
        bar = ProgressBar(f"importing {args.path}") if _want_progress(args.progress, size) else None
        try:
            model = import_model(args.path, progress=bar)
        finally:
            if bar is not None:
                bar.close()
    except (ModelStoreError, OSError) as exc:
        return _fail(exc)
    print(f"imported {model}")
    if model.options.get("trusted_only"):
        print(
            f"note: {model} is pickle-based ({model.framework}); loading it runs code from the archive, "
            "so serve it only if you trust its source",
            file=sys.stderr,
        )
    return 0
