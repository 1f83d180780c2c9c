"""XGBoost adapter: ``shmserve.xgboost.save_model / load_model / get``.

Models are stored in XGBoost's own format, JSON (``booster.json``, the
default) or UBJSON (``format="ubj"``, ``booster.ubj``: smaller and faster to
load); neither runs code when loaded. Both the native ``xgboost.Booster`` and
the scikit-learn API (``XGBClassifier``, ``XGBRegressor``, ``XGBRanker``, ...)
are accepted; for the latter the estimator class is recorded by name and
rebuilt with ``load_model`` on load, so no pickle is involved.

Signature names call the model's method of that name. For a ``Booster``,
``predict`` takes what ``xgboost.DMatrix`` accepts (numpy arrays, pandas
frames) and wraps it in a DMatrix, as BentoML does; keyword arguments go to
``Booster.predict``. The default signature is ``predict``, not batchable (save
with ``signatures={"predict": {"batchable": True}}`` to let the runner join
concurrent calls row-wise). The runner takes its thread count from
``OMP_NUM_THREADS`` (set by the resource strategy): ``nthread`` for a Booster,
``n_jobs`` for an estimator.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, ClassVar

from .adapter import ModelRunnable, adapter_functions, resolve, store_model
from .frameworks import require, save_signatures, thread_count, use_estimator_threads
from .store import Model, SaveArgs, Tag

if TYPE_CHECKING:
    from typing_extensions import Unpack

FRAMEWORK = "xgboost"
_FORMATS = {"json": "booster.json", "ubj": "booster.ubj"}


def _xgb() -> Any:
    return require("xgboost", "shmserve.xgboost needs XGBoost: pip install 'shmserve[xgboost]' (or xgboost)")


def save_model(
    name: str,
    model: Any,
    *,
    signatures: dict[str, Any] | None = None,
    format: str = "json",  # noqa: A002  (XGBoost's own word for it)
    **save: Unpack[SaveArgs],
) -> Model:
    """Save an ``xgboost.Booster`` or a fitted scikit-learn API estimator as a new version of `name`.

    `format` is ``"json"`` or ``"ubj"``. `save` takes `labels`, `metadata`,
    `custom_objects` and `home` (see `SaveArgs`).
    """
    xgb = _xgb()
    if format not in _FORMATS:
        raise ValueError(f"format must be one of {sorted(_FORMATS)}, got {format!r}")
    if isinstance(model, xgb.Booster):
        api, estimator = "booster", None
    elif isinstance(model, xgb.XGBModel):
        api, estimator = "sklearn", type(model).__name__
        if getattr(xgb, estimator, None) is not type(model):
            raise TypeError(
                f"{estimator} is not one of xgboost's own estimator classes, so it cannot be rebuilt "
                "without pickle; save model.get_booster(), or use shmserve.picklable"
            )
    else:
        raise TypeError(
            f"shmserve.xgboost.save_model needs an xgboost.Booster or XGBModel (XGBClassifier, ...), "
            f"got {type(model).__name__}"
        )
    sigs = save_signatures(model, signatures, "predict")
    file = _FORMATS[format]
    options = {"format": format, "file": file, "api": api, "estimator": estimator, "trusted_only": False}
    return store_model(name, lambda folder: model.save_model(str(folder / file)), framework=FRAMEWORK,
                       framework_version=str(xgb.__version__), signatures=sigs, options=options, **save)


def load_model(tag: "str | Tag | Model", *, home: str | os.PathLike[str] | None = None) -> Any:
    """The stored ``Booster``, or an estimator of the saved class (nothing is unpickled)."""
    xgb = _xgb()
    stored = resolve(tag, FRAMEWORK, home)
    options = stored.options
    path = str(stored.path_of(str(options.get("file", _FORMATS["json"]))))
    if options.get("api") == "sklearn":
        estimator = getattr(xgb, str(options.get("estimator")), None)
        if not (isinstance(estimator, type) and issubclass(estimator, xgb.XGBModel)):
            raise ValueError(
                f"model {stored}: this xgboost {xgb.__version__} has no estimator {options.get('estimator')!r}; "
                "install the version it was saved with"
            )
        model = estimator()
        model.load_model(path)
        return model
    return xgb.Booster(model_file=path)


class XGBoostRunnable(ModelRunnable):
    """Hosts one stored XGBoost model; methods come from its signatures."""

    FRAMEWORK: ClassVar[str] = FRAMEWORK

    def setup(self, model: Model) -> None:
        self.xgb = _xgb()
        self.model = load_model(model)
        self.booster = isinstance(self.model, self.xgb.Booster)
        if self.booster:
            threads = thread_count()
            if threads is not None:
                self.model.set_param({"nthread": threads})
        else:
            use_estimator_threads(self.model)

    def invoke(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.booster and method == "predict" and args and not isinstance(args[0], self.xgb.DMatrix):
            args = (self.xgb.DMatrix(args[0]), *args[1:])
        return getattr(self.model, method)(*args, **kwargs)


get, runnable_class, __getattr__ = adapter_functions(XGBoostRunnable, "XGBoost model")
