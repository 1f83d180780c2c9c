"""BentoML 1.1's "Using Runners" guide, example by example, with only `import bentoml` changed.

The example sources are in tests/integration/guide/. Each service runs twice: under a live
``shmserve serve`` (over HTTP) and with ``shmserve.start(*svc.runners)`` in this process
(calling the API functions directly). Servers run pinned to one CPU, so every CPU runner
gets one worker and the test stays quick on any machine.
"""
from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import os
import re
import select
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from PIL import Image

import shmserve
from shmserve.strategy import CPUFallbackWarning
from tests.conftest import ROOT, shm_entries
from tests.integration.test_http_serve import alive, descendants, wait_until

# Each example starts a server and its runners twice, several importing torch: on a busy shared
# machine that outgrows the default 120 s per test.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(360)]

GUIDE = Path(__file__).resolve().parent / "guide"
X = np.array([[0.1, 0.2, 0.3, 0.4], [1.0, 0.0, -1.0, 2.0]], dtype=np.float32)


def _one_cpu() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


@contextlib.contextmanager
def one_cpu() -> Iterator[None]:
    """Pin this thread (and the workers it spawns) to one CPU for the block."""
    before = os.sched_getaffinity(0)
    _one_cpu()
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@pytest.fixture(scope="module")
def guide(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder holding the guide's sources and the models they load (its own model store)."""
    work = tmp_path_factory.mktemp("guide")
    for f in GUIDE.glob("guide_*.py"):
        shutil.copy(f, work / f.name)
    home = work / "home"
    old_home = os.environ.get("SHMSERVE_HOME")
    os.environ["SHMSERVE_HOME"] = str(home)
    sys.path.insert(0, str(work))
    try:
        import guide_models
        import guide_torch
        import torch
        from sklearn.linear_model import LinearRegression, LogisticRegression

        net = guide_torch.train()
        for i in (1, 2):
            torch.jit.script(net).save(str(work / f"saved_model_{i}.pt"))
        rng = np.random.default_rng(0)
        feats = rng.normal(size=(40, 4))
        shmserve.sklearn.save_model("spam_detection", LogisticRegression().fit(feats, feats[:, 0] > 0))
        shmserve.sklearn.save_model("model_a", LinearRegression().fit(feats, feats.sum(axis=1)))
        shmserve.pytorch.save_model("model_b", net)
        shmserve.picklable.save_model("sentiment_model", guide_models.WordSentiment())
        shmserve.picklable.save_model("ocr_model", guide_models.BrightnessOCR())
        yield work
    finally:
        sys.path.remove(str(work))
        for name in [m for m in sys.modules if m.startswith("guide_")]:
            del sys.modules[name]
        if old_home is None:
            os.environ.pop("SHMSERVE_HOME", None)
        else:
            os.environ["SHMSERVE_HOME"] = old_home


class Served:
    """``shmserve serve <module>:svc`` on 127.0.0.1, pinned to one CPU; `stop()` checks the cleanup."""

    def __init__(self, work: Path, module: str) -> None:
        self.shm_before = shm_entries()
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        self.log = work / f"{module}.log"
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shmserve.cli", "serve", f"{module}:svc", "--port", "0", "--api-workers", "1"],
                cwd=work, env=env, stdout=subprocess.PIPE, stderr=err, preexec_fn=_one_cpu)
        self.family: set[int] = set()
        try:
            self.port = self._port(90.0)
        except BaseException:
            self.stop()
            raise
        self.family = descendants(self.proc.pid)

    def _port(self, timeout: float) -> int:
        assert self.proc.stdout is not None
        deadline, buf = time.monotonic() + timeout, b""
        while time.monotonic() < deadline and self.proc.poll() is None:
            if select.select([self.proc.stdout], [], [], 0.1)[0]:
                buf += os.read(self.proc.stdout.fileno(), 4096)
                m = re.search(rb"http://127\.0\.0\.1:(\d+)", buf)
                if m:
                    return int(m.group(1))
        raise AssertionError(f"server did not start: {buf!r}\n{self.log.read_text(errors='replace')}")

    def post(self, path: str, body: bytes, ctype: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("POST", path, body, {"Content-Type": ctype})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def stop(self) -> None:
        self.family |= descendants(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(30)
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        wait_until(lambda: not any(alive(p) for p in self.family), 10, "server processes to exit")
        deadline = time.monotonic() + 30
        while left := shm_entries() - self.shm_before:  # names tagged by this test session
            assert time.monotonic() < deadline, f"shared memory left behind: {sorted(left)}"
            time.sleep(0.05)


@contextlib.contextmanager
def served(work: Path, module: str) -> Iterator[Served]:
    s = Served(work, module)
    try:
        yield s
    finally:
        s.stop()


@contextlib.contextmanager
def started(module: str) -> Iterator[shmserve.Service]:
    """Import the example in this process and start its runners with shmserve.start."""
    import importlib

    svc = importlib.import_module(module).svc
    with one_cpu():
        group = shmserve.start(*svc.runners)
    try:
        yield svc
    finally:
        group.stop()


def call(svc: shmserve.Service, api: str, value):
    func = svc.apis[api].func
    return asyncio.run(func(value)) if svc.apis[api].is_async else func(value)


def png(brightness: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (brightness,) * 3).save(out, format="PNG")
    return out.getvalue()


# -- the examples ---------------------------------------------------------------------------
def test_prebuilt_model_runner(guide: Path, shm_clean) -> None:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{guide}")
    out = subprocess.run([sys.executable, "guide_prebuilt.py"], cwd=guide, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    import guide_torch
    import torch

    with torch.inference_mode():
        expected = guide_torch.train()(torch.from_numpy(np.ones((2, 4), np.float32))).numpy()
    np.testing.assert_allclose(orjson.loads(out.stdout.strip().splitlines()[-1]), expected, rtol=1e-6)
    runner = shmserve.pytorch.get("demo_mnist:latest").to_runner()
    with one_cpu():
        group = shmserve.start(runner)
    with group:
        np.testing.assert_allclose(runner.predict.run(np.ones((2, 4), np.float32)), expected, rtol=1e-6)


def test_creating_a_runnable_nltk(guide: Path, shm_clean) -> None:
    with served(guide, "guide_nltk") as srv:
        assert srv.post("/analysis", b"I love this. It is great!", "text/plain") == (200, b'{"is_positive":true}')
        assert srv.post("/analysis", b"What an awful, sad day.", "text/plain") == (200, b'{"is_positive":false}')
    with started("guide_nltk") as svc:
        assert call(svc, "analysis", "good and happy") == {"is_positive": True}


def test_reusable_runnable_two_runners_gpu_only_served_on_cpu(guide: Path, shm_clean) -> None:
    import guide_torch
    import torch

    with torch.inference_mode():
        expected = guide_torch.train()(torch.from_numpy(X)).tolist()
    with served(guide, "guide_reusable") as srv:
        status, body = srv.post("/predict", orjson.dumps(X.tolist()), "application/json")
        assert status == 200
        got = orjson.loads(body)
        np.testing.assert_allclose(got["model_1"], expected, rtol=1e-5)
        np.testing.assert_allclose(got["model_2"], expected, rtol=1e-5)
    if shmserve.strategy.visible_gpus():
        pytest.skip("this host has a GPU: the CPU fallback is not exercised")
    old = os.getcwd()
    os.chdir(guide)  # the runners open ./saved_model_*.pt, as under `shmserve serve`
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with started("guide_reusable") as svc:
                got = call(svc, "predict", X)
        assert any(issubclass(w.category, CPUFallbackWarning) for w in caught)
    finally:
        os.chdir(old)
    np.testing.assert_allclose(got["model_1"], expected, rtol=1e-5)


def test_custom_model_runner_spam(guide: Path, shm_clean) -> None:
    clf = shmserve.sklearn.load_model("spam_detection:latest")
    expected = clf.predict(X).tolist()
    with served(guide, "guide_spam") as srv:
        status, body = srv.post("/analysis", orjson.dumps(X.tolist()), "application/json")
        assert status == 200 and orjson.loads(body) == {"res": expected}
    with started("guide_spam") as svc:
        runner = svc.runners[0]
        assert runner.name == "spamdetectionrunnable" and [m.name for m in runner.models] == ["spam_detection"]
        assert call(svc, "analysis", X)["res"].tolist() == expected


def test_sequential_runs_image_through_two_prebuilt_runners(guide: Path, shm_clean) -> None:
    with served(guide, "guide_sequential") as srv:
        for api in ("/classify", "/classify_async"):
            assert srv.post(api, png(250), "image/png") == (200, b"POSITIVE")
            assert srv.post(api, png(5), "image/png") == (200, b"NEGATIVE")
        status, body = srv.post("/classify", b"not an image", "image/png")
        assert status == 400 and b"not an image" in body
    with started("guide_sequential") as svc:
        bright = Image.new("RGB", (4, 4), (250, 250, 250))
        assert call(svc, "classify", bright) == "POSITIVE"
        assert call(svc, "classify_async", bright) == "POSITIVE"


def test_concurrent_runs_gather_two_model_runners(guide: Path, shm_clean) -> None:
    import guide_torch
    import torch

    img = Image.new("RGB", (8, 8), (200, 100, 50))
    feats = np.asarray(img.convert("L").resize((2, 2)), dtype=np.float32).reshape(1, 4) / 255.0
    a = shmserve.sklearn.load_model("model_a:latest").predict(feats)
    with torch.inference_mode():
        b = guide_torch.train()(torch.from_numpy(feats)).numpy()
    expected = f"a={float(a[0]):.4f} b={int(np.argmax(b[0]))}"
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    with served(guide, "guide_concurrent") as srv:
        assert srv.post("/predict", buf.getvalue(), "image/png") == (200, expected.encode())
    with started("guide_concurrent") as svc:
        assert call(svc, "predict", img) == expected
