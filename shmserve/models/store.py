"""The local model store: ``$SHMSERVE_HOME/models/<name>/<version>/``.

Layout::

    $SHMSERVE_HOME/models/
        <name>/<version>/model.json   the manifest (readable JSON, written last)
        <name>/<version>/...          the framework's files
        .tmp/<pid>-<random>/          saves in progress (swept once their process is gone)
        .locks/<name>.lock            flock(2) serialising commits and deletes of one name

A save writes into a private directory under ``.tmp`` and becomes visible with
one ``os.rename`` onto ``<name>/<version>``, so a crash mid-save leaves no half
model behind: readers only ever see a version directory that holds a complete
manifest. Versions are generated under the name's lock from the UTC clock plus
a random suffix, so they sort by commit time and never repeat, and ``name`` /
``name:latest`` resolve to the greatest version.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import logging
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from .. import settings
from ..errors import ConfigError
from ..registry import pid_alive as _pid_alive
from .model import (  # noqa: F401  (re-exported: the store's public names)
    ADAPTERS,
    MANIFEST,
    NAME_RE,
    CorruptModel,
    Model,
    ModelExists,
    ModelInfo,
    ModelNotFound,
    ModelStoreError,
    Tag,
    UnknownFramework,
    adapter_module,
    check_name,
    file_digest,
    new_version,
    normalize_signatures,
    signature_batch_dim,
)
from .objects import save_objects

if TYPE_CHECKING:
    from typing_extensions import Unpack

log = logging.getLogger("shmserve.models")

MANIFEST_SCHEMA = 1
_TMP = ".tmp"
_LOCKS = ".locks"

# -- paths ----------------------------------------------------------------------


def store_home(home: str | os.PathLike[str] | None = None) -> Path:
    """The store root: `home`, else ``$SHMSERVE_HOME``, else ``~/.shmserve``."""
    if home is not None:
        return Path(home).expanduser().resolve()
    env = settings.home()
    return (env if env is not None else Path.home() / ".shmserve").resolve()


def models_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """The directory holding every model name."""
    return store_home(home) / "models"


# -- reading ----------------------------------------------------------------------


def _read_model(home: Path, name: str, version: str, tag_text: str) -> Model:
    path = home / "models" / name / version
    try:
        with open(path / MANIFEST, "rb") as f:
            info = json.loads(f.read())
    except FileNotFoundError:
        raise ModelNotFound(f"model {tag_text!r} not found in {home / 'models'}") from None
    except (OSError, ValueError) as exc:
        raise CorruptModel(
            f"model {name}:{version}: manifest {path / MANIFEST} is unreadable ({exc}); "
            f"delete it with `shmserve models delete {name}:{version}`"
        ) from exc
    if not isinstance(info, dict) or not isinstance(info.get("framework"), dict) or "signatures" not in info:
        raise CorruptModel(
            f"model {name}:{version}: manifest {path / MANIFEST} lacks framework/signatures; "
            f"delete it with `shmserve models delete {name}:{version}`"
        )
    if info.get("name") != name or info.get("version") != version:
        raise CorruptModel(f"model {name}:{version}: manifest names {info.get('name')}:{info.get('version')} instead")
    return Model(Tag(name, version), path, ModelInfo(info), home)


def _versions(home: Path, name: str) -> list[str]:
    try:
        entries = os.listdir(home / "models" / name)
    except FileNotFoundError:
        return []
    return sorted(v for v in entries if NAME_RE.match(v) and (home / "models" / name / v / MANIFEST).exists())


def resolve_tag(tag: "str | Tag", *, home: str | os.PathLike[str] | None = None) -> Tag:
    """The exact ``name:version`` a tag names now (``name`` resolves to the newest)."""
    root = store_home(home)
    parsed = Tag.parse(tag)
    if parsed.version is not None:
        if not (root / "models" / parsed.name / parsed.version).is_dir():
            raise ModelNotFound(f"model {str(tag)!r} not found in {root / 'models'}; see `shmserve models list`")
        return parsed
    versions = _versions(root, parsed.name)
    if not versions:
        raise ModelNotFound(
            f"no model named {parsed.name!r} in {root / 'models'}; "
            "save one with shmserve.<framework>.save_model() or see `shmserve models list`"
        )
    return Tag(parsed.name, versions[-1])


def get(tag: "str | Tag", *, home: str | os.PathLike[str] | None = None) -> Model:
    """The stored model for `tag` (``name``, ``name:latest`` or ``name:version``)."""
    root = store_home(home)
    exact = resolve_tag(tag, home=root)
    assert exact.version is not None
    return _read_model(root, exact.name, exact.version, str(tag))


def list_models(name: str | None = None, *, home: str | os.PathLike[str] | None = None) -> list[Model]:
    """Every stored model (or every version of `name`), sorted by name then version.

    Entries with a corrupt manifest are skipped with a logged warning so that
    one bad entry never hides the rest.
    """
    root = store_home(home)
    try:
        names = [name] if name is not None else sorted(os.listdir(root / "models"))
    except FileNotFoundError:
        return []
    out: list[Model] = []
    for n in names:
        if not NAME_RE.match(n):
            continue  # .tmp, .locks and stray files
        for version in _versions(root, n):
            try:
                out.append(_read_model(root, n, version, f"{n}:{version}"))
            except ModelStoreError as exc:
                log.warning("skipping %s:%s: %s", n, version, exc)
    return out


# -- locking and temp directories -------------------------------------------------


@contextlib.contextmanager
def name_lock(home: Path, name: str) -> Iterator[None]:
    """Hold the store-wide lock of one model name (flock; released if the process dies)."""
    lock_dir = home / "models" / _LOCKS
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock




def sweep_temp(home: str | os.PathLike[str] | None = None) -> int:
    """Remove leftovers of saves whose process died; returns how many were removed."""
    tmp = store_home(home) / "models" / _TMP
    removed = 0
    try:
        entries = os.listdir(tmp)
    except FileNotFoundError:
        return 0
    for entry in entries:
        pid_text = entry.split("-", 1)[0]
        if pid_text.isdigit() and _pid_alive(int(pid_text)):
            continue
        shutil.rmtree(tmp / entry, ignore_errors=True)
        removed += 1
    if removed:
        log.warning("removed %d unfinished model saves of processes that died, from %s", removed, tmp)
    return removed


def make_temp_dir(home: Path) -> Path:
    """A private directory on the store's filesystem (so a rename can publish it)."""
    tmp = home / "models" / _TMP
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"{os.getpid()}-{secrets.token_hex(6)}"
    path.mkdir()
    return path


def _fsync_tree(path: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(path):
        for fn in filenames:
            fd = os.open(os.path.join(dirpath, fn), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_table(path: Path) -> dict[str, dict[str, Any]]:
    """``{relpath: {"size", "sha256"}}`` of every file under `path` but the manifest."""
    table: dict[str, dict[str, Any]] = {}
    for dirpath, _dirnames, filenames in os.walk(path):
        for fn in sorted(filenames):
            full = Path(dirpath) / fn
            rel = full.relative_to(path).as_posix()
            if rel == MANIFEST:
                continue
            if full.is_symlink():
                raise ModelStoreError(f"model files must be regular files, {rel!r} is a symlink")
            size, digest = file_digest(full)
            table[rel] = {"size": size, "sha256": digest}
    return table


def publish(home: Path, staged: Path, info: dict[str, Any], *, version: str | None = None) -> Model:
    """Write the manifest into `staged` and rename it into the store, atomically.

    With `version` None a new version is generated under the name's lock.
    """
    name = check_name(info["name"])
    with name_lock(home, name):
        if version is None:
            existing = _versions(home, name)
            version = new_version()
            while existing and version <= existing[-1]:  # the clock stepped back
                version = new_version(_dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(microseconds=1))
        final = home / "models" / name / version
        if final.exists():
            raise ModelExists(f"model {name}:{version} is already in the store; delete it first to replace it")
        info = dict(info, version=version)
        with open(staged / MANIFEST, "wb") as f:
            f.write(json.dumps(info, indent=2, sort_keys=True).encode() + b"\n")
        _fsync_tree(staged)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staged, final)
        _fsync_dir(final.parent)
    return Model(Tag(name, version), final, ModelInfo(info), home)


# -- saving -----------------------------------------------------------------------


class SaveArgs(TypedDict, total=False):
    """The keywords every ``save_model`` (and ``shmserve.models.create``) takes.

    `labels` (str -> str) and `metadata` (JSON-serialisable) are kept in the
    manifest; `custom_objects` are pickled with the model (see `objects`);
    `home` is the store root (default ``$SHMSERVE_HOME``).
    """

    labels: dict[str, str] | None
    metadata: dict[str, Any] | None
    custom_objects: dict[str, Any] | None
    home: str | os.PathLike[str] | None


@dataclass
class ModelDraft:
    """A model being saved: write its files under `path`; it is published on exit.

    Its version is chosen when it is published, so `tag` is ``name:latest``
    inside the ``with`` block and the exact ``name:version`` after it.
    """

    name: str
    path: Path
    model: Model | None = None

    def path_of(self, relpath: str) -> Path:
        """Where to write one of the model's files."""
        return self.path / relpath

    @property
    def tag(self) -> Tag:
        """The published model's tag (``name:latest`` until the ``with`` block ends)."""
        return self.model.tag if self.model is not None else Tag(self.name)


def python_version() -> str:
    """``major.minor.micro`` of this interpreter."""
    return ".".join(str(p) for p in sys.version_info[:3])


@contextlib.contextmanager
def create(
    name: str,
    *,
    framework: str,
    framework_version: str,
    signatures: dict[str, dict[str, Any]],
    labels: dict[str, str] | None = None,
    metadata: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    custom_objects: dict[str, Any] | None = None,
    home: str | os.PathLike[str] | None = None,
) -> Iterator[ModelDraft]:
    """Stage a new model version; adapters write files into ``draft.path``.

    On normal exit the files are checksummed, the manifest written and the
    directory renamed into the store (``draft.model`` is then set). If the
    block raises, or the process dies, nothing becomes visible.
    `custom_objects` are pickled beside the files (see `objects`), which marks
    the model ``trusted_only``.
    """
    from .. import __version__

    check_name(name)
    labels = dict(labels or {})
    for k, v in labels.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ConfigError(f"labels of model {name!r} must map strings to strings, got {k!r}: {v!r}")
    metadata = dict(metadata or {})
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"metadata of model {name!r} must be JSON-serialisable: {exc}") from None
    try:
        json.dumps(options or {})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"options of model {name!r} must be JSON-serialisable: {exc}") from None
    if custom_objects is not None and not isinstance(custom_objects, dict):
        raise ConfigError(f"custom_objects of model {name!r} must be a dict like {{'tokenizer': tok}}, got {custom_objects!r}")
    root = store_home(home)
    sweep_temp(root)
    staged = make_temp_dir(root)
    draft = ModelDraft(name, staged)
    try:
        yield draft
        options = dict(options or {})
        objects_entry = None
        if custom_objects:
            objects_entry = save_objects(staged, custom_objects, name)
            options["trusted_only"] = True
        files = file_table(staged)
        info = {
            "schema": MANIFEST_SCHEMA,
            "name": name,
            "framework": {"name": framework, "version": framework_version},
            "python_version": python_version(),
            "shmserve_version": __version__,
            "signatures": signatures,
            "labels": labels,
            "metadata": metadata,
            "options": options,
            "custom_objects": objects_entry,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "size_bytes": sum(f["size"] for f in files.values()),
            "files": files,
        }
        draft.model = publish(root, staged, info)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)


CUSTOM_FRAMEWORK = "custom"


@contextlib.contextmanager
def create_model(
    name: str,
    *,
    signatures: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    **save: Unpack[SaveArgs],
) -> Iterator[ModelDraft]:
    """A new model version whose files you write yourself (``shmserve.models.create``)::

        with shmserve.models.create("my_model", metadata={"acc": 0.9}) as draft:
            (draft.path / "weights.bin").write_bytes(data)
        print(draft.tag)                                   # my_model:<version>
        path = shmserve.models.get("my_model").path_of("weights.bin")

    The folder is published atomically when the block ends, like every save;
    if the block raises, nothing is stored. Such a model has no adapter: load
    its files in your own Runnable. `signatures` are only recorded.
    """
    from .. import __version__

    sigs = normalize_signatures(signatures, {}) if signatures else {}
    with create(
        name,
        framework=CUSTOM_FRAMEWORK,
        framework_version=__version__,
        signatures=sigs,
        options=options,
        **save,
    ) as draft:
        yield draft


def delete(tag: "str | Tag", *, home: str | os.PathLike[str] | None = None) -> Tag:
    """Remove one model version (``name`` alone means the newest); returns its exact tag.

    The version disappears with one rename, so a concurrent reader sees the
    whole model or none of it. A version whose manifest is corrupt can be
    deleted by its full tag.
    """
    root = store_home(home)
    exact = resolve_tag(tag, home=root)
    assert exact.version is not None
    path = root / "models" / exact.name / exact.version
    with name_lock(root, exact.name):
        trash = root / "models" / _TMP / f"{os.getpid()}-del-{secrets.token_hex(6)}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            raise ModelNotFound(f"model {exact.name}:{exact.version} was deleted by another process") from None
        with contextlib.suppress(OSError):
            os.rmdir(path.parent)  # only succeeds when no version is left
    shutil.rmtree(trash, ignore_errors=True)
    return exact
