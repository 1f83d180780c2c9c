"""What framework adapters share besides their Runnable base: importing an
optional framework, sizing its threads from the resource strategy's budget,
and the signature rules (which signatures a save gets by default, which one a
runner calls by default, and what a signature name calls on a loaded model).
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any, cast

from .model import normalize_signatures


def thread_count() -> int | None:
    """The thread budget the resource strategy gave this worker, if any."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def default_method(preferred: str | None, signatures: dict[str, Any]) -> str | None:
    """The signature a runner calls by default: the adapter's `preferred` one, else
    ``__call__``, else the only one; None when a model has several and none of those."""
    for name in (preferred, "__call__"):
        if name is not None and name in signatures:
            return name
    return next(iter(signatures)) if len(signatures) == 1 else None


def save_signatures(
    model: Any, signatures: dict[str, Any] | None, default: str, *, answered: tuple[str, ...] = ()
) -> dict[str, dict[str, Any]]:
    """The signatures a save stores: `signatures` validated, or `default_signatures(model, default)`;
    each must name a method `model` has (or one in `answered`, which the adapter serves itself)."""
    sigs = normalize_signatures(signatures, default_signatures(model, default))
    check_methods(model, sigs, answered=answered)
    return sigs


def check_methods(model: Any, signatures: dict[str, Any], *, answered: tuple[str, ...] = ()) -> None:
    """Refuse at save time a signature naming a method `model` lacks (names in `answered` the adapter serves itself)."""
    missing = sorted(m for m in signatures if m not in answered and not callable(getattr(model, m, None)))
    if missing:
        raise ValueError(f"{type(model).__name__} has no methods {missing} named in signatures")


def use_torch_threads(torch: Any) -> None:
    """Give torch the thread budget the resource strategy set for this worker."""
    threads = thread_count()
    if threads is not None:
        torch.set_num_threads(threads)


def use_estimator_threads(estimator: Any) -> None:
    """Set a scikit-learn style estimator's ``n_jobs`` to the strategy's thread budget
    (one with ``n_jobs=-1`` would otherwise start a thread per core in every worker)."""
    threads = thread_count()
    if threads is not None and hasattr(estimator, "n_jobs"):
        try:
            estimator.set_params(n_jobs=threads)
        except (ValueError, AttributeError):
            pass


def default_signatures(model: Any, method: str) -> dict[str, Any]:
    """An adapter's signatures when a save names none: `method`, plus ``predict``
    where the model has its own (so ``runner.predict`` keeps working), not batchable."""
    signatures: dict[str, Any] = {method: {"batchable": False}}
    if callable(getattr(model, "predict", None)):
        signatures.setdefault("predict", {"batchable": False})
    return signatures


def signature_target(obj: Any, method: str, *, itself: tuple[str, ...] = ("__call__",)) -> Callable[..., Any]:
    """What a signature name calls on a loaded model (the rule BentoML follows).

    A name in `itself` calls the object (for a torch module ``__call__`` and
    ``forward``, so its hooks run); ``predict`` calls the object's own
    ``predict`` when it has one and the object itself otherwise; any other name
    calls the method of that name.
    """
    if method in itself or (method == "predict" and not callable(getattr(obj, "predict", None))):
        if not callable(obj):
            raise TypeError(f"{type(obj).__name__} object is not callable; name one of its methods in signatures")
        return cast("Callable[..., Any]", obj)
    fn = getattr(obj, method, None)
    if not callable(fn):
        raise AttributeError(f"{type(obj).__name__} has no method {method!r} named in signatures")
    return cast("Callable[..., Any]", fn)


def require(module: str, hint: str) -> Any:
    """Import an adapter's optional framework, or raise ImportError with `hint` (how to install it)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(hint) from exc
