"""Python objects kept beside a model: the pickler every adapter uses, and the
``custom_objects`` a save stores with the model (a tokenizer, a label map, a
pre-processing function).

Custom objects are one pickle file, ``custom_objects.pkl``, written with
cloudpickle when it is installed (so functions and classes defined in
``__main__`` or a notebook survive) and plain pickle otherwise. Loading them
runs pickle, which can execute code: a model with custom objects is marked
``trusted_only`` and must come only from a store you trust.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from ..errors import ConfigError

CUSTOM_OBJECTS_FILE = "custom_objects.pkl"


def pickler() -> tuple[str, Any]:
    """``("cloudpickle", cloudpickle)`` when installed, else ``("pickle", pickle)``."""
    try:
        import cloudpickle
    except ImportError:
        return "pickle", pickle
    return "cloudpickle", cloudpickle


def require_unpickler(serializer: object, what: str) -> None:
    """Raise ImportError naming `what` when it was saved with cloudpickle and cloudpickle is missing
    (objects cloudpickle saved by value need it importable to load)."""
    if serializer != "cloudpickle":
        return
    try:
        import cloudpickle  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{what} was saved with cloudpickle: pip install cloudpickle") from exc


def save_objects(directory: Path, objects: dict[str, Any], model_name: str) -> dict[str, Any]:
    """Pickle `objects` into `directory`; returns the manifest entry describing the file."""
    if not isinstance(objects, dict) or not all(isinstance(k, str) for k in objects):
        raise ConfigError(
            f"custom_objects of model {model_name!r} must be a dict with string keys, "
            f"like {{'tokenizer': tok}}; got {type(objects).__name__}"
        )
    kind, module = pickler()
    try:
        with open(directory / CUSTOM_OBJECTS_FILE, "wb") as f:
            module.dump(objects, f, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"custom_objects of model {model_name!r} cannot be pickled ({exc}); "
            "keep only picklable objects there (pip install cloudpickle for lambdas and __main__ classes)"
        ) from exc
    return {"file": CUSTOM_OBJECTS_FILE, "serializer": kind, "keys": sorted(objects)}


def load_objects(directory: Path, entry: dict[str, Any], tag: str) -> dict[str, Any]:
    """Unpickle the custom objects that `entry` (from the manifest) describes (trusted stores only)."""
    require_unpickler(entry.get("serializer"), f"the custom objects of model {tag}")
    with open(directory / str(entry.get("file", CUSTOM_OBJECTS_FILE)), "rb") as f:
        objects = pickle.load(f)
    return dict(objects)
