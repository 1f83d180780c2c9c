"""Runner-worker snapshots and the /metrics families built from them, read back with prometheus-client's parser."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shmserve import __version__, lease, registry
from shmserve.http.worker_metrics import WorkerMetrics
from shmserve.worker_stats import WorkerStats, read_worker_stats, stats_path


def families(collector: object) -> dict[str, list]:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)  # type: ignore[arg-type]
    return {f.name: f.samples for f in text_string_to_metric_families(generate_latest(reg).decode())}


def test_snapshots_round_trip_and_only_live_workers_count(tmp_path: Path, dead_lease: Callable[[], str]) -> None:
    stats = WorkerStats("mlp", 0, ["predict", "embed"], restarts=2, path=tmp_path / "mlp-0.stats.json")
    for items in (1, 3, 3, 64, 2000):
        stats.on_batch(0, items)
    stats.publish(queue_depth=5, shm_bytes=1 << 20)
    dead = WorkerStats("mlp", 1, ["predict"], restarts=0, path=tmp_path / "mlp-1.stats.json")
    dead.publish(0, 0)
    text = (tmp_path / "mlp-1.stats.json").read_text().replace(f'"lease":"{lease.current().id}"', f'"lease":"{dead_lease()}"')
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


def test_the_sweep_removes_dead_workers_snapshots_and_keeps_live_ones(runtime_dir: Path, dead_lease: Callable[[], str]) -> None:
    """A SIGKILLed worker leaves its snapshot (and maybe a temp file) under a lease nobody holds."""
    live = WorkerStats("sweep_live", 0, ["predict"], 0)
    live.publish(0, 0)
    killed = dead_lease()
    stale = stats_path("sweep_dead", 0)
    stale.write_bytes(live.path.read_bytes().replace(lease.current().id.encode(), killed.encode()))
    staged = stale.with_name(f".sweep_dead-0.stats.{killed}.tmp")  # killed between write and rename
    staged.write_bytes(b"{")
    registry.sweep()
    assert not stale.exists() and not staged.exists()
    assert live.path.exists(), "the sweep removed the snapshot of a live worker"
    assert [s["runner"] for s in read_worker_stats(["sweep_live", "sweep_dead"])] == ["sweep_live"]
    live.unlink()
    assert not live.path.exists()
