"""Runner-worker snapshots and the /metrics families built from them, read back with prometheus-client's parser."""
from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shmserve import __version__
from shmserve.http.worker_metrics import WorkerMetrics
from shmserve.worker_stats import WorkerStats, read_worker_stats


def families(collector: object) -> dict[str, list]:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)  # type: ignore[arg-type]
    return {f.name: f.samples for f in text_string_to_metric_families(generate_latest(reg).decode())}


def test_snapshots_round_trip_and_only_live_workers_count(tmp_path: Path) -> None:
    stats = WorkerStats("mlp", 0, ["predict", "embed"], restarts=2, path=tmp_path / "mlp-0.stats.json")
    for items in (1, 3, 3, 64, 2000):
        stats.on_batch(0, items)
    stats.publish(queue_depth=5, shm_bytes=1 << 20)
    dead = WorkerStats("mlp", 1, ["predict"], restarts=0, path=tmp_path / "mlp-1.stats.json")
    dead.publish(0, 0)
    text = (tmp_path / "mlp-1.stats.json").read_text().replace(f'"pid":{os.getpid()}', '"pid":999999999')
    (tmp_path / "mlp-1.stats.json").write_text(text)
    WorkerStats("mlp-b", 0, ["predict"], 0, path=tmp_path / "mlp-b-0.stats.json").publish(0, 0)
    snaps = read_worker_stats(["mlp"], tmp_path)
    assert [(s["runner"], s["worker"]) for s in snaps] == [("mlp", 0)]
    assert oct((tmp_path / "mlp-0.stats.json").stat().st_mode & 0o777) == "0o600"
    stats.unlink()
    assert read_worker_stats(["mlp"], tmp_path) == []


def test_worker_families_parse(tmp_path: Path) -> None:
    stats = WorkerStats("mlp", 0, ["predict"], restarts=3, path=tmp_path / "mlp-0.stats.json")
    for items in (1, 3, 3, 64):
        stats.on_batch(0, items)
    stats.publish(queue_depth=7, shm_bytes=4096)
    fams = families(WorkerMetrics(["mlp"], "9.9", read=lambda names: read_worker_stats(names, tmp_path)))
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value for samples in fams.values() for s in samples}

    def v(name: str, **labels: str) -> float:
        return value[(name, tuple(sorted(labels.items())))]

    lab = {"method": "predict", "runner": "mlp", "worker": "0"}
    assert v("shmserve_runner_worker_batches_total", **lab) == 4
    assert v("shmserve_runner_worker_batch_size_count", **lab) == 4
    assert v("shmserve_runner_worker_batch_size_sum", **lab) == 71
    assert v("shmserve_runner_worker_batch_size_bucket", le="4", **lab) == 3
    assert v("shmserve_runner_worker_batch_size_bucket", le="32", **lab) == 3
    assert v("shmserve_runner_worker_batch_size_bucket", le="64", **lab) == 4
    assert v("shmserve_runner_worker_batch_size_bucket", le="+Inf", **lab) == 4
    assert v("shmserve_runner_worker_queue_depth", runner="mlp", worker="0") == 7
    assert v("shmserve_runner_worker_restarts_total", runner="mlp", worker="0") == 3
    assert v("shmserve_runner_worker_shm_bytes", runner="mlp", worker="0") == 4096
    assert v("shmserve_dev_shm_free_bytes") >= 0 and v("shmserve_dev_shm_size_bytes") > 0
    assert v("shmserve_build_info", python=__import__("platform").python_version(), version="9.9") == 1


def test_build_info_carries_the_package_version() -> None:
    fams = families(WorkerMetrics([]))
    (sample,) = fams["shmserve_build_info"]
    assert sample.labels["version"] == __version__
