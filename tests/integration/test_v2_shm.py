"""The v2 system shared-memory extension, with tritonclient.utils.shared_memory, over REST and gRPC."""
from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
shm = pytest.importorskip("tritonclient.utils.shared_memory")
from tritonclient.utils import InferenceServerException  # noqa: E402

from .test_http_serve import wait_until  # noqa: E402
from .test_v2_http import raw  # noqa: E402
from .v2_server import MATHS, V2Server  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[V2Server]:
    # two API workers: a region registered through one must serve requests that reach the other
    srv = V2Server(Path(tmp_path_factory.mktemp("v2shm")), "--allow-client-shm", grpc=True, api_workers=2)
    try:
        yield srv
    finally:
        assert srv.stop() == 0, srv.log()


class Regions:
    """Client-side regions made with tritonclient's helpers; all destroyed at the end of a test."""

    def __init__(self) -> None:
        self.handles: list[object] = []

    def make(self, nbytes: int) -> tuple[str, str, object]:
        name = "r" + uuid.uuid4().hex[:8]
        key = "/v2test_" + uuid.uuid4().hex[:12]  # not "shmserve_": the leak checks watch those
        handle = shm.create_shared_memory_region(name, key, nbytes)
        self.handles.append(handle)
        return name, key, handle

    def destroy(self) -> None:
        for h in self.handles:
            shm.destroy_shared_memory_region(h)


@pytest.fixture
def regions() -> Iterator[Regions]:
    r = Regions()
    yield r
    r.destroy()


def api_worker_pids(server: V2Server) -> list[int]:
    return [int(p) for p in re.findall(r"API worker \d+: pid (\d+)", server.log())]


def mapped_keys(server: V2Server) -> str:
    out = ""
    for pid in api_worker_pids(server):
        try:
            with open(f"/proc/{pid}/maps") as f:
                out += f.read()
        except OSError:
            pass
    return out


def test_http_round_trip_through_regions(server: V2Server, regions: Regions) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    in_name, in_key, in_h = regions.make(x.nbytes + 16)
    out_name, out_key, out_h = regions.make(x.nbytes)
    shm.set_shared_memory_region(in_h, [x], offset=16)
    client = httpclient.InferenceServerClient(server.url)
    try:
        client.register_system_shared_memory(in_name, in_key, x.nbytes + 16)
        client.register_system_shared_memory(out_name, out_key, x.nbytes)
        status = {r["name"]: r for r in client.get_system_shared_memory_status()}
        assert status[in_name]["key"] == in_key and status[in_name]["byte_size"] == x.nbytes + 16
        for i in range(6):  # fresh connections: the two API workers share the registrations
            c = httpclient.InferenceServerClient(server.url)
            try:
                inp = httpclient.InferInput("x", [3, 4], "FP32")
                inp.set_shared_memory(in_name, x.nbytes, offset=16)
                out = httpclient.InferRequestedOutput("output")
                out.set_shared_memory(out_name, x.nbytes)
                r = c.infer(f"{MATHS}.predict", [inp], outputs=[out], request_id=str(i))
            finally:
                c.close()
            entry = r.get_response()["outputs"][0]
            assert entry["parameters"]["shared_memory_region"] == out_name and "data" not in entry
            np.testing.assert_array_equal(shm.get_contents_as_numpy(out_h, np.float32, [3, 4]), x * 2)
            shm.set_shared_memory_region(out_h, [np.zeros_like(x)])
        assert in_key.lstrip("/") in mapped_keys(server)
        client.unregister_system_shared_memory(in_name)
        client.unregister_system_shared_memory()  # all
        assert client.get_system_shared_memory_status() == []
        wait_until(lambda: in_key.lstrip("/") not in mapped_keys(server), 10, "every API worker to unmap the region")
        # the regions are unmapped in every API worker once unregistered (each checks on next use)
        status_code, _, body = raw(server, "POST", f"/v2/models/{MATHS}.predict/infer", orjson.dumps({"inputs": [{
            "name": "x", "datatype": "FP32", "shape": [3, 4], "parameters": {
                "shared_memory_region": in_name, "shared_memory_byte_size": x.nbytes}}]}))
        assert status_code == 400 and f"no shared-memory region named {in_name!r}" in orjson.loads(body)["error"]
    finally:
        client.close()


def _other_pids_mapping(server: V2Server, key: str) -> list[int]:
    """Processes (not this one, not an API worker) that map shared-memory object `key`."""
    skip = {os.getpid(), *api_worker_pids(server)}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in skip:
            continue
        try:
            with open(f"/proc/{entry}/maps") as f:
                if key.lstrip("/") in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_an_output_region_is_written_by_the_runner_worker(server: V2Server, regions: Regions, transport: str) -> None:
    """The input travels as binary data; only the output names a region, and the runner worker maps it
    (it writes the result there itself: the API worker copies nothing)."""
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    out_name, out_key, out_h = regions.make(x.nbytes + 64)
    mod = httpclient if transport == "http" else grpcclient
    client = mod.InferenceServerClient(server.url if transport == "http" else server.grpc_url)
    try:
        client.register_system_shared_memory(out_name, out_key, x.nbytes + 64)
        inp = mod.InferInput("x", [3, 4], "FP32")
        inp.set_data_from_numpy(x)
        out = mod.InferRequestedOutput("output")
        out.set_shared_memory(out_name, x.nbytes, offset=64)
        for _ in range(3):
            client.infer(f"{MATHS}.predict", [inp], outputs=[out])
            np.testing.assert_array_equal(shm.get_contents_as_numpy(out_h, np.float32, [3, 4], offset=64), x * 2)
            shm.set_shared_memory_region(out_h, [np.zeros(16, np.float32)])
        assert _other_pids_mapping(server, out_key), "no runner worker mapped the output region"
        client.unregister_system_shared_memory(out_name)
    finally:
        client.close()


def test_grpc_round_trip_through_regions(server: V2Server, regions: Regions) -> None:
    a = np.arange(5, dtype=np.int64)
    in_name, in_key, in_h = regions.make(a.nbytes)
    out_name, out_key, out_h = regions.make(a.nbytes)
    shm.set_shared_memory_region(in_h, [a])
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        client.register_system_shared_memory(in_name, in_key, a.nbytes)
        client.register_system_shared_memory(out_name, out_key, a.nbytes)
        assert in_name in client.get_system_shared_memory_status(as_json=True)["regions"]
        inp = grpcclient.InferInput("x", [5], "INT64")
        inp.set_shared_memory(in_name, a.nbytes)
        out = grpcclient.InferRequestedOutput("output")
        out.set_shared_memory(out_name, a.nbytes)
        client.infer(f"{MATHS}.echo", [inp], outputs=[out])
        np.testing.assert_array_equal(shm.get_contents_as_numpy(out_h, np.int64, [5]), a)
        with pytest.raises(InferenceServerException, match="past the end") as info:
            client.register_system_shared_memory("big", in_key, a.nbytes * 2)
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        client.unregister_system_shared_memory()
        assert client.get_system_shared_memory_status(as_json=True).get("regions", {}) == {}
    finally:
        client.close()


def test_bad_regions_and_references_get_a_clear_400(server: V2Server, regions: Regions) -> None:
    name, key, handle = regions.make(64)

    def register(region: str, body: dict[str, object]) -> tuple[int, str]:
        status, _, data = raw(server, "POST", f"/v2/systemsharedmemory/region/{region}/register", orjson.dumps(body))
        return status, orjson.loads(data)["error"] if data else ""

    assert register(name, {"key": key, "offset": 0, "byte_size": 64}) == (200, "")
    assert register(name, {"key": key, "offset": 0, "byte_size": 64})[1].endswith("unregister it first")
    for body, message in [
        ({"key": "/v2test_missing", "byte_size": 8}, "no shared-memory object"),
        ({"key": "../etc/passwd", "byte_size": 8}, "must name a shared-memory object"),
        ({"key": key, "offset": -1, "byte_size": 8}, "offset must be >= 0"),
        ({"key": key, "offset": 60, "byte_size": 8}, "past the end"),
        ({"key": key, "byte_size": "8"}, "must be an integer"),
    ]:
        status, error = register("other", body)
        assert status == 400 and message in error, (body, error)

    def infer(params: dict[str, object], datatype: str = "FP32", shape: tuple[int, ...] = (2,)) -> tuple[int, str]:
        body = {"inputs": [{"name": "x", "datatype": datatype, "shape": list(shape), "parameters": params}]}
        status, _, data = raw(server, "POST", f"/v2/models/{MATHS}.echo/infer", orjson.dumps(body))
        return status, orjson.loads(data).get("error", "")

    ok = {"shared_memory_region": name, "shared_memory_byte_size": 8}
    assert infer(ok)[0] == 200
    for params, message in [
        ({**ok, "shared_memory_offset": -8}, "fall outside region"),
        ({**ok, "shared_memory_offset": 60}, "fall outside region"),
        ({**ok, "shared_memory_region": "nope"}, "no shared-memory region named 'nope'"),
        ({**ok, "shared_memory_byte_size": 4}, "does not match shape"),
        ({**ok, "shared_memory_offset": "1"}, "must be an integer"),
    ]:
        status, error = infer(params)
        assert status == 400 and message in error, (params, error)
    # an output reference past the end is refused before the model runs
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}],
            "outputs": [{"name": "output", "parameters": {"shared_memory_region": name, "shared_memory_offset": 60,
                                                          "shared_memory_byte_size": 8}}]}
    status, _, data = raw(server, "POST", f"/v2/models/{MATHS}.echo/infer", orjson.dumps(body))
    assert status == 400 and "fall outside region" in orjson.loads(data)["error"]
    assert raw(server, "POST", f"/v2/systemsharedmemory/region/{name}/unregister")[0] == 200


def test_world_writable_and_foreign_objects_are_refused(server: V2Server, regions: Regions) -> None:
    name, key, _ = regions.make(64)
    path = "/dev/shm/" + key.lstrip("/")
    os.chmod(path, 0o666)
    status, _, data = raw(server, "POST", f"/v2/systemsharedmemory/region/{name}/register",
                          orjson.dumps({"key": key, "byte_size": 64}))
    assert status == 400 and "world-writable" in orjson.loads(data)["error"]
    os.chmod(path, 0o600)
    if os.geteuid() != 0:
        pytest.skip("giving a shared-memory object to another user needs root")
    os.chown(path, 65534, 65534)
    status, _, data = raw(server, "POST", f"/v2/systemsharedmemory/region/{name}/register",
                          orjson.dumps({"key": key, "byte_size": 64}))
    assert status == 400 and "belongs to uid 65534" in orjson.loads(data)["error"]


def test_leak_check_ignores_other_sessions_lease_names() -> None:
    """A lease-named entry of another test session (another tag) is not counted as ours."""
    from .test_http_serve import shm_entries

    other = "/dev/shm/sem.shmserve_" + uuid.uuid4().hex[:16] + "_tzzzzzzz" + uuid.uuid4().hex[:8]
    ours = "/dev/shm/sem.shmserve_" + uuid.uuid4().hex[:16] + "_" + os.environ["SHMSERVE_NAME_TAG"] + "0" * 8
    for path in (other, ours):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
    try:
        found = shm_entries({os.getpid()})
        assert os.path.basename(ours) in found and os.path.basename(other) not in found
    finally:
        os.unlink(other)
        os.unlink(ours)
