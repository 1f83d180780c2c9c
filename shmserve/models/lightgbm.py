"""LightGBM adapter: ``shmserve.lightgbm.save_model / load_model / get``.

A native ``lightgbm.Booster`` is stored in LightGBM's text format
(``model.txt``), which runs no code when loaded. A scikit-learn API estimator
(``LGBMClassifier``, ``LGBMRegressor``, ``LGBMRanker``) keeps its label
encoding and parameters only as Python state, so it is saved with joblib
(``model.joblib``: pickle, so ``trusted_only``) and its booster beside it as
text; ``load_model(tag, booster=True)`` reads only the text file.

Signature names call the model's method of that name (``predict``,
``predict_proba``, ...); the default is ``predict``, not batchable. The runner
takes its thread count from ``OMP_NUM_THREADS`` (set by the resource
strategy): ``num_threads`` on each Booster call, ``n_jobs`` for an estimator.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .adapter import ModelRunnable, adapter_functions, resolve, store_model
from .frameworks import require, save_signatures, thread_count, use_estimator_threads
from .store import Model, SaveArgs, Tag

if TYPE_CHECKING:
    from typing_extensions import Unpack

FRAMEWORK = "lightgbm"
BOOSTER_FILE = "model.txt"
ESTIMATOR_FILE = "model.joblib"


def _lgb() -> Any:
    return require("lightgbm", "shmserve.lightgbm needs LightGBM: pip install 'shmserve[lightgbm]' (or lightgbm)")


def _joblib() -> Any:
    return require("joblib", "saving a LightGBM scikit-learn estimator needs joblib: pip install scikit-learn")


def save_model(name: str, model: Any, *, signatures: dict[str, Any] | None = None, **save: Unpack[SaveArgs]) -> Model:
    """Save a ``lightgbm.Booster`` or a fitted ``LGBMModel`` as a new version of `name`.

    `save` takes `labels`, `metadata`, `custom_objects` and `home` (see `SaveArgs`).
    """
    lgb = _lgb()
    if isinstance(model, lgb.Booster):
        booster, api = model, "booster"
    elif isinstance(model, lgb.LGBMModel):
        booster, api = getattr(model, "booster_", None), "sklearn"
        if booster is None:
            raise ValueError(f"{type(model).__name__} is not fitted; call .fit() before saving it")
    else:
        raise TypeError(f"shmserve.lightgbm.save_model needs a lightgbm.Booster or LGBMModel, got {type(model).__name__}")
    sigs = save_signatures(model, signatures, "predict")
    options = {
        "format": "text" if api == "booster" else "joblib",
        "file": BOOSTER_FILE if api == "booster" else ESTIMATOR_FILE,
        "booster_file": BOOSTER_FILE,
        "api": api,
        "trusted_only": api == "sklearn",
    }

    def write(folder: Path) -> None:
        booster.save_model(str(folder / BOOSTER_FILE))
        if api == "sklearn":
            _joblib().dump(model, folder / ESTIMATOR_FILE)

    return store_model(
        name, write, framework=FRAMEWORK, framework_version=str(lgb.__version__), signatures=sigs, options=options, **save
    )


def load_model(tag: "str | Tag | Model", *, booster: bool = False, home: str | os.PathLike[str] | None = None) -> Any:
    """The stored model. A scikit-learn estimator is unpickled (trusted stores only);
    with ``booster=True`` only its booster is read, from the text file."""
    lgb = _lgb()
    stored = resolve(tag, FRAMEWORK, home)
    options = stored.options
    if options.get("api") == "sklearn" and not booster:
        return _joblib().load(stored.path_of(str(options.get("file", ESTIMATOR_FILE))))
    return lgb.Booster(model_file=str(stored.path_of(str(options.get("booster_file", BOOSTER_FILE)))))


class LightGBMRunnable(ModelRunnable):
    """Hosts one stored LightGBM model; methods come from its signatures."""

    FRAMEWORK: ClassVar[str] = FRAMEWORK

    def setup(self, model: Model) -> None:
        self.model = load_model(model)
        self.call_options: dict[str, Any] = {}
        if isinstance(self.model, _lgb().Booster):
            threads = thread_count()
            if threads is not None:
                self.call_options["num_threads"] = threads
        else:
            use_estimator_threads(self.model)

    def invoke(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if method == "predict":
            kwargs = {**self.call_options, **kwargs}
        return getattr(self.model, method)(*args, **kwargs)


get, runnable_class, __getattr__ = adapter_functions(LightGBMRunnable, "LightGBM model")
