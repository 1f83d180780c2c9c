"""What a stored model is: its tag, its manifest as a `Model` object, and the
errors the store raises. The store's mechanics (paths, locks, atomic saves)
live in `store.py`.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import (  # noqa: F401  (re-exported: the store raises these)
    ConfigError,
    CorruptModel,
    ModelExists,
    ModelNotFound,
    ModelStoreError,
    ShmserveError,
    UnknownFramework,
)
from ..runnable import BatchDim, MethodSignature
from .objects import load_objects

if TYPE_CHECKING:
    from ..runner import Runner

MANIFEST = "model.json"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")

# framework name -> adapter module (imported only when a model of it is used)
ADAPTERS: dict[str, str] = {
    "pytorch": "shmserve.models.pytorch",
    "sklearn": "shmserve.models.sklearn",
    "onnx": "shmserve.models.onnx",
    "picklable": "shmserve.models.picklable",
    "xgboost": "shmserve.models.xgboost",
    "lightgbm": "shmserve.models.lightgbm",
    "transformers": "shmserve.models.transformers",
    "keras": "shmserve.models.keras",
}


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
    if not isinstance(value, str) or not NAME_RE.match(value):
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


@dataclass(frozen=True)
class ModelContext:
    """Where a model was saved: its framework and the versions in use then."""

    framework_name: str
    framework_versions: dict[str, str]
    shmserve_version: str
    python_version: str


class ModelInfo(dict):  # type: ignore[type-arg]
    """A stored model's manifest: the ``model.json`` dict, with BentoML's
    ``ModelInfo`` attributes (`tag`, `module`, `labels`, `metadata`, `options`,
    `signatures`, `context`, `creation_time`) read from it."""

    @property
    def tag(self) -> Tag:
        """``name:version``."""
        return Tag(str(self["name"]), str(self["version"]))

    @property
    def name(self) -> str:
        """The model name."""
        return str(self["name"])

    @property
    def version(self) -> str:
        """The exact version."""
        return str(self["version"])

    @property
    def module(self) -> str:
        """The adapter module that saved it, e.g. ``shmserve.pytorch`` (empty for ``models.create``)."""
        framework = str(self["framework"]["name"])
        return f"shmserve.{framework}" if framework in ADAPTERS else ""

    @property
    def labels(self) -> dict[str, str]:
        """User labels given at save time."""
        return dict(self.get("labels") or {})

    @property
    def metadata(self) -> dict[str, Any]:
        """User metadata given at save time."""
        return dict(self.get("metadata") or {})

    @property
    def options(self) -> dict[str, Any]:
        """Adapter options recorded at save time (file format, serializer)."""
        return dict(self.get("options") or {})

    @property
    def signatures(self) -> dict[str, dict[str, Any]]:
        """Method name -> ``{"batchable": bool, "batch_dim": int | [in, out]}``."""
        return dict(self["signatures"])

    @property
    def context(self) -> ModelContext:
        """Framework, shmserve and Python versions at save time."""
        framework = self["framework"]
        return ModelContext(
            framework_name=str(framework["name"]),
            framework_versions={str(framework["name"]): str(framework.get("version", ""))},
            shmserve_version=str(self.get("shmserve_version", "")),
            python_version=str(self.get("python_version", "")),
        )

    @property
    def creation_time(self) -> _dt.datetime:
        """When the model was saved (timezone-aware, UTC)."""
        return _dt.datetime.fromisoformat(str(self["created_at"]))


@dataclass
class Model:
    """One stored model version: its manifest and its directory.

    Use `path_of()` to reach its files, `to_runner()` to serve it, or the
    framework adapter's ``load_model(model)`` to get the model object back.
    """

    tag: Tag
    path: Path
    info: ModelInfo = field(repr=False)
    home: Path = field(repr=False)
    _custom_objects: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.info, ModelInfo):
            self.info = ModelInfo(self.info)

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
        return self.info.signatures

    @property
    def labels(self) -> dict[str, str]:
        """User labels given at save time."""
        return self.info.labels

    @property
    def metadata(self) -> dict[str, Any]:
        """User metadata given at save time."""
        return self.info.metadata

    @property
    def options(self) -> dict[str, Any]:
        """Adapter options recorded at save time (file format, serializer)."""
        return self.info.options

    @property
    def created_at(self) -> str:
        """ISO 8601 UTC creation time."""
        return str(self.info["created_at"])

    @property
    def size(self) -> int:
        """Total bytes of the model's files (manifest excluded)."""
        return int(self.info.get("size_bytes", 0))

    @property
    def creation_time(self) -> _dt.datetime:
        """When the model was saved (timezone-aware, UTC)."""
        return self.info.creation_time

    @property
    def custom_objects(self) -> dict[str, Any]:
        """The ``custom_objects`` saved with the model (``{}`` if none), unpickled on first use.

        Unpickling can run code: read them only from a store you trust.
        """
        if self._custom_objects is None:
            entry = self.info.get("custom_objects")
            self._custom_objects = load_objects(self.path, entry, str(self)) if entry else {}
        return self._custom_objects

    def path_of(self, relpath: str) -> Path:
        """Absolute path of one of the model's files."""
        return self.path / relpath

    def verify(self) -> None:
        """Check every file against the sizes and SHA-256 sums in the manifest."""
        for relpath, expect in self.info.get("files", {}).items():
            path = self.path / relpath
            try:
                size, digest = file_digest(path)
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
        embedded: bool = False,
    ) -> "Runner":
        """A `Runner` that serves this exact version with its stored signatures.

        `name` defaults to the model name. Workers load the model themselves,
        from this store, when they start; with `embedded` the model is loaded
        and called inside the calling process (see `shmserve.Runner`).
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
            models=[self],
            embedded=embedded,
            **kwargs,
        )

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


def adapter_module(model: Model) -> Any:
    """The framework adapter module that can load `model`."""
    import importlib

    framework = model.info.get("framework", {}).get("name")
    module_name = ADAPTERS.get(str(framework))
    if framework == "custom":
        raise ModelStoreError(
            f"model {model} was made with shmserve.models.create and has no adapter to load or serve it; "
            "read its files from model.path in your own Runnable"
        )
    if module_name is None:
        raise UnknownFramework(
            f"model {model} was saved by framework {framework!r}, which this shmserve does not know "
            f"(known: {sorted(ADAPTERS)}); upgrade shmserve or re-save the model"
        )
    return importlib.import_module(module_name)


def file_digest(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()
