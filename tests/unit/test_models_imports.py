"""Importing shmserve and its adapters imports no framework: each is imported only when a model of it is used."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FRAMEWORKS = ("torch", "sklearn", "joblib", "onnx", "onnxruntime", "xgboost", "lightgbm", "transformers", "keras",
              "tensorflow", "jax", "cloudpickle")


def test_importing_shmserve_and_every_adapter_imports_no_framework(tmp_path: Path) -> None:
    # A fresh interpreter: this test process may already hold the frameworks.
    code = (
        "import sys, shmserve, shmserve.models\n"
        "from shmserve.models.model import ADAPTERS\n"
        "import importlib\n"
        "for name in ADAPTERS.values(): importlib.import_module(name)\n"
        "for name in ('pytorch', 'sklearn', 'onnx', 'picklable', 'xgboost', 'lightgbm', 'transformers', 'keras'):\n"
        "    getattr(shmserve, name).save_model\n"
        "with shmserve.models.create('handmade', home=sys.argv[1]) as draft:\n"
        "    (draft.path / 'w').write_bytes(b'1')\n"
        "assert [m.name for m in shmserve.models.list(home=sys.argv[1])] == ['handmade']\n"
        f"bad = [m for m in {FRAMEWORKS!r} if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
