"""scikit-learn adapter: ``shmserve.sklearn.save_model / load_model / get``.

Estimators are saved with joblib (``model.joblib``), which is pickle: loading
one can execute code, so load only from a store you trust (the manifest marks
it ``options.trusted_only``). Signatures name estimator methods (``predict``,
``predict_proba``, ``transform``, ...); each is called with the arguments given
to the runner method. The default is ``{"predict": {"batchable": False}}``.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, ClassVar

from .adapter import ModelRunnable, adapter_functions, resolve, store_model
from .frameworks import require, save_signatures, use_estimator_threads
from .store import Model, SaveArgs, Tag

if TYPE_CHECKING:
    from typing_extensions import Unpack

FRAMEWORK = "sklearn"
MODEL_FILE = "model.joblib"


def _joblib() -> Any:
    hint = "shmserve.sklearn needs scikit-learn: pip install scikit-learn"
    return require("joblib", hint), require("sklearn", hint)


def save_model(name: str, model: Any, *, signatures: dict[str, Any] | None = None, **save: Unpack[SaveArgs]) -> Model:
    """Save a fitted scikit-learn estimator (or pipeline) as a new version of `name`.

    `save` takes `labels`, `metadata`, `custom_objects` and `home` (see `SaveArgs`).
    """
    joblib, sklearn = _joblib()
    sigs = save_signatures(model, signatures, "predict")
    return store_model(
        name,
        lambda folder: joblib.dump(model, folder / MODEL_FILE),
        framework=FRAMEWORK,
        framework_version=str(sklearn.__version__),
        signatures=sigs,
        options={"format": "joblib", "file": MODEL_FILE, "trusted_only": True},
        **save,
    )


def load_model(tag: "str | Tag | Model", *, home: str | os.PathLike[str] | None = None) -> Any:
    """Load a stored estimator (pickle: only from a trusted store)."""
    joblib, _ = _joblib()
    stored = resolve(tag, FRAMEWORK, home)
    return joblib.load(stored.path_of(str(stored.options.get("file", MODEL_FILE))))


class SklearnRunnable(ModelRunnable):
    """Hosts one stored scikit-learn estimator; methods come from its signatures."""

    FRAMEWORK: ClassVar[str] = FRAMEWORK

    def setup(self, model: Model) -> None:
        self.model = load_model(model)
        use_estimator_threads(self.model)

    def invoke(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return getattr(self.model, method)(*args, **kwargs)


get, runnable_class, __getattr__ = adapter_functions(SklearnRunnable, "scikit-learn model")
