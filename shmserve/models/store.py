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
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, ShmserveError
from ..runnable import BatchDim, MethodSignature

if TYPE_CHECKING:
    from ..runner import Runner

log = logging.getLogger("shmserve.models")

MANIFEST = "model.json"
MANIFEST_SCHEMA = 1
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_TMP = ".tmp"
_LOCKS = ".locks"

# framework name -> adapter module (imported only when a model of it is used)
ADAPTERS: dict[str, str] = {
    "pytorch": "shmserve.models.pytorch",
    "sklearn": "shmserve.models.sklearn",
    "onnx": "shmserve.models.onnx",
    "picklable": "shmserve.models.picklable",
}


class ModelStoreError(ShmserveError):
    """The model store cannot do what was asked (bad tag, corrupt entry, clash)."""


class ModelNotFound(ModelStoreError, LookupError):
    """No model in the store matches the tag."""

    http_status = 404


class CorruptModel(ModelStoreError):
    """A stored model's manifest or files are unreadable or inconsistent."""


class UnknownFramework(ModelStoreError):
    """A model was saved by a framework adapter this shmserve does not have."""


class ModelExists(ModelStoreError):
    """A model with this exact tag is already in the store (e.g. importing twice)."""


# -- paths ----------------------------------------------------------------------


def store_home(home: str | os.PathLike[str] | None = None) -> Path:
    """The store root: `home`, else ``$SHMSERVE_HOME``, else ``~/.shmserve``."""
    if home is not None:
        return Path(home).expanduser().resolve()
    env = os.environ.get("SHMSERVE_HOME")
    return (Path(env).expanduser() if env else Path.home() / ".shmserve").resolve()


def models_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """The directory holding every model name."""
    return store_home(home) / "models"


# -- tags -----------------------------------------------------------------------


@dataclass(frozen=True)
class Tag:
    """A model tag ``name:version``; `version` None means the newest."""

    name: str
    version: str | None = None

    @classmethod
    def parse(cls, tag: "str | Tag") -> "Tag":
        """Parse ``name``, ``name:latest`` or ``name:version``."""
        if isinstance(tag, Tag):
            return tag
        if not isinstance(tag, str):
            raise ModelStoreError(f"a model tag must be a string like 'name:version', got {tag!r}")
        name, sep, version = tag.partition(":")
        check_name(name, what="model name", tag=tag)
        if not sep or version == "latest":
            return cls(name, None)
        check_name(version, what="model version", tag=tag)
        return cls(name, version)

    def __str__(self) -> str:
        return f"{self.name}:{self.version or 'latest'}"


def check_name(value: str, *, what: str = "model name", tag: str | None = None) -> str:
    """Validate a model name or version (the same rules as runner names)."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        where = f" in tag {tag!r}" if tag is not None and tag != value else ""
        raise ModelStoreError(
            f"invalid {what} {value!r}{where}: use 1-63 lowercase letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return value


def new_version(now: _dt.datetime | None = None) -> str:
    """A fresh version string: UTC time to the microsecond plus a random suffix.

    Fixed width, so lexicographic order is creation order.
    """
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y%m%d-%H%M%S-%f") + "-" + secrets.token_hex(2)


# -- signatures -----------------------------------------------------------------


def normalize_signatures(signatures: dict[str, Any] | None, default: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Validate ``{"predict": {"batchable": True, "batch_dim": 0}}`` into JSON-able form."""
    signatures = default if signatures is None else signatures
    if not isinstance(signatures, dict) or not signatures:
        raise ConfigError(f"signatures must be a non-empty dict like {default!r}, got {signatures!r}")
    out: dict[str, dict[str, Any]] = {}
    for method, options in signatures.items():
        options = {} if options is None else dict(options)
        unknown = set(options) - {"batchable", "batch_dim"}
        if not isinstance(method, str) or not method.isidentifier():
            raise ConfigError(f"signature name {method!r} must be a Python identifier (a method name)")
        if unknown:
            raise ConfigError(f"signature {method!r}: unknown keys {sorted(unknown)}; use 'batchable' and 'batch_dim'")
        batch_dim = options.get("batch_dim", 0)
        if isinstance(batch_dim, list):
            batch_dim = tuple(batch_dim)
        sig = MethodSignature.make(method, bool(options.get("batchable", False)), batch_dim)
        dim: Any = sig.input_dim if sig.input_dim == sig.output_dim else [sig.input_dim, sig.output_dim]
        out[method] = {"batchable": sig.batchable, "batch_dim": dim}
    return out


def signature_batch_dim(options: dict[str, Any]) -> BatchDim:
    """The `batch_dim` of a stored signature as `Runnable.add_method` takes it."""
    dim = options.get("batch_dim", 0)
    return (int(dim[0]), int(dim[1])) if isinstance(dim, (list, tuple)) else int(dim)


# -- the Model object -----------------------------------------------------------


@dataclass
class Model:
    """One stored model version: its manifest and its directory.

    Use `path_of()` to reach its files, `to_runner()` to serve it, or the
    framework adapter's ``load_model(model)`` to get the model object back.
    """

    tag: Tag
    path: Path
    info: dict[str, Any] = field(repr=False)
    home: Path = field(repr=False)

    @property
    def name(self) -> str:
        """The model name."""
        return self.tag.name

    @property
    def version(self) -> str:
        """The exact version (never 'latest')."""
        assert self.tag.version is not None
        return self.tag.version

    @property
    def framework(self) -> str:
        """The adapter that saved it: pytorch, sklearn, onnx or picklable."""
        return str(self.info["framework"]["name"])

    @property
    def signatures(self) -> dict[str, dict[str, Any]]:
        """Method name -> ``{"batchable": bool, "batch_dim": int | [in, out]}``."""
        return dict(self.info["signatures"])

    @property
    def labels(self) -> dict[str, str]:
        """User labels given at save time."""
        return dict(self.info.get("labels", {}))

    @property
    def metadata(self) -> dict[str, Any]:
        """User metadata given at save time."""
        return dict(self.info.get("metadata", {}))

    @property
    def options(self) -> dict[str, Any]:
        """Adapter options recorded at save time (file format, serializer)."""
        return dict(self.info.get("options", {}))

    @property
    def created_at(self) -> str:
        """ISO 8601 UTC creation time."""
        return str(self.info["created_at"])

    @property
    def size(self) -> int:
        """Total bytes of the model's files (manifest excluded)."""
        return int(self.info.get("size_bytes", 0))

    def path_of(self, relpath: str) -> Path:
        """Absolute path of one of the model's files."""
        return self.path / relpath

    def verify(self) -> None:
        """Check every file against the sizes and SHA-256 sums in the manifest."""
        for relpath, expect in self.info.get("files", {}).items():
            path = self.path / relpath
            try:
                size, digest = _file_digest(path)
            except OSError as exc:
                raise CorruptModel(f"model {self.tag}: file {relpath!r} is unreadable ({exc}); delete and re-save it") from exc
            if size != expect.get("size") or digest != expect.get("sha256"):
                raise CorruptModel(f"model {self.tag}: file {relpath!r} does not match its manifest checksum; delete and re-save it")

    def load_model(self, **kwargs: Any) -> Any:
        """The model object, loaded by its framework adapter (e.g. ``shmserve.pytorch.load_model``)."""
        return adapter_module(self).load_model(self, **kwargs)

    def to_runner(
        self,
        name: str | None = None,
        *,
        max_batch_size: int | None = None,
        max_latency_ms: float | None = None,
        method_configs: dict[str, dict[str, Any]] | None = None,
        workers: int | None = None,
        arena_mb: int | None = None,
    ) -> "Runner":
        """A `Runner` that serves this exact version with its stored signatures.

        `name` defaults to the model name. Workers load the model themselves,
        from this store, when they start.
        """
        from ..runner import Runner

        adapter = adapter_module(self)
        cls = adapter.runnable_class(self)
        kwargs: dict[str, Any] = {}
        if max_batch_size is not None:
            kwargs["max_batch_size"] = max_batch_size
        if max_latency_ms is not None:
            kwargs["max_latency_ms"] = max_latency_ms
        if arena_mb is not None:
            kwargs["arena_mb"] = arena_mb
        return Runner(
            cls,
            name=name if name is not None else self.name,
            runnable_init_params={"tag": f"{self.name}:{self.version}", "home": str(self.home)},
            method_configs=method_configs,
            workers=workers,
            **kwargs,
        )

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


def adapter_module(model: Model) -> Any:
    """The framework adapter module that can load `model`."""
    import importlib

    framework = model.info.get("framework", {}).get("name")
    module_name = ADAPTERS.get(str(framework))
    if module_name is None:
        raise UnknownFramework(
            f"model {model} was saved by framework {framework!r}, which this shmserve does not know "
            f"(known: {sorted(ADAPTERS)}); upgrade shmserve or re-save the model"
        )
    return importlib.import_module(module_name)


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
    return Model(Tag(name, version), path, info, home)


def _versions(home: Path, name: str) -> list[str]:
    try:
        entries = os.listdir(home / "models" / name)
    except FileNotFoundError:
        return []
    return sorted(v for v in entries if _NAME_RE.match(v) and (home / "models" / name / v / MANIFEST).exists())


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
        if not _NAME_RE.match(n):
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    return removed


def make_temp_dir(home: Path) -> Path:
    """A private directory on the store's filesystem (so a rename can publish it)."""
    tmp = home / "models" / _TMP
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"{os.getpid()}-{secrets.token_hex(6)}"
    path.mkdir()
    return path


def _file_digest(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


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
            size, digest = _file_digest(full)
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
    return Model(Tag(name, version), final, info, home)


# -- saving -----------------------------------------------------------------------


@dataclass
class ModelDraft:
    """A model being saved: write its files under `path`; it is published on exit."""

    name: str
    path: Path
    model: Model | None = None


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
    home: str | os.PathLike[str] | None = None,
) -> Iterator[ModelDraft]:
    """Stage a new model version; adapters write files into ``draft.path``.

    On normal exit the files are checksummed, the manifest written and the
    directory renamed into the store (``draft.model`` is then set). If the
    block raises, or the process dies, nothing becomes visible.
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
    root = store_home(home)
    sweep_temp(root)
    staged = make_temp_dir(root)
    draft = ModelDraft(name, staged)
    try:
        yield draft
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
            "options": dict(options or {}),
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "size_bytes": sum(f["size"] for f in files.values()),
            "files": files,
        }
        draft.model = publish(root, staged, info)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)


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
