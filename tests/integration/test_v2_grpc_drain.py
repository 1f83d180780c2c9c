"""Graceful shutdown of the gRPC front: RPCs in flight when SIGTERM comes are answered, new ones are refused,
and a stream the client keeps open ends (OK) instead of holding the stop for its whole grace period.

Every step waits on a condition with a deadline: the held requests signal that
they are running in the model (a file each), the test releases them (another
file) only after it has seen the server refuse a new RPC, so nothing depends on
how fast the loaded machine is.
"""
from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

grpc = pytest.importorskip("grpc")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402

from .test_http_serve import wait_until  # noqa: E402
from .v2_server import GATE, MATHS, V2Server  # noqa: E402

pytestmark = pytest.mark.integration


def _hold_request(model: str, tag: int) -> Any:
    req = service_pb2.ModelInferRequest(model_name=model, id=f"held-{tag}")
    req.inputs.add(name="x", datatype="FP32", shape=[1])
    req.raw_input_contents.append(np.array([tag], np.float32).tobytes())
    return req


def _refused(url: str) -> bool:
    """True when a new channel's ServerLive is not served (the port is closed or the server is stopping)."""
    with grpc.insecure_channel(url) as channel:
        try:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive(service_pb2.ServerLiveRequest(), timeout=2)
        except grpc.RpcError as err:
            return err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    return False


def test_sigterm_answers_rpcs_in_flight_and_refuses_new_ones(tmp_path: Path) -> None:
    # A long grace: an RPC still open when it ends would be cancelled, which the checks below tell apart.
    srv = V2Server(tmp_path, "--graceful-timeout", "120", grpc=True, api_workers=1)
    results: dict[str, Any] = {}
    channel = grpc.insecure_channel(srv.grpc_url)
    idle_answered, idle_client_done = threading.Event(), threading.Event()
    try:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=30).live

        def idle_requests() -> Any:  # one request, then the client keeps its side open
            yield _hold_request(f"{MATHS}.predict", 7)
            idle_client_done.wait(120)

        def idle_stream() -> None:
            answers = []
            try:
                for answer in stub.ModelStreamInfer(idle_requests(), timeout=120):
                    answers.append(answer)
                    idle_answered.set()
                results["idle"] = answers
            except grpc.RpcError as err:
                results["idle"] = err

        idle = threading.Thread(target=idle_stream)
        idle.start()
        assert idle_answered.wait(60), "the open stream's first request was not answered"

        def unary() -> None:
            try:
                results["unary"] = stub.ModelInfer(_hold_request(f"{MATHS}.hold", 1), timeout=60)
            except grpc.RpcError as err:
                results["unary"] = err

        def stream() -> None:  # one request, then the client's side is closed: the answer ends the stream
            try:
                results["stream"] = list(stub.ModelStreamInfer(iter([_hold_request(f"{GATE}.hold", 2)]), timeout=60))
            except grpc.RpcError as err:
                results["stream"] = err

        threads = [threading.Thread(target=unary), threading.Thread(target=stream)]
        for t in threads:
            t.start()
        wait_until(lambda: (tmp_path / "held-1").exists() and (tmp_path / "held-2").exists(), 60,
                   "both held requests to run in their models")
        srv.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: _refused(srv.grpc_url), 30, "a new RPC to be refused while the held ones run")
        assert all(t.is_alive() for t in threads), results  # still held: the refusal came during the drain
        (tmp_path / "release").touch()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        # the open, idle stream was ended by the drain (within the 120 s grace, which would cancel it)
        idle.join(60)
        assert not idle.is_alive(), "an open stream held the graceful stop"
    finally:
        (tmp_path / "release").touch()
        idle_client_done.set()
        channel.close()
        code = srv.stop()
    assert code == 0, srv.log()
    unary_answer = results["unary"]
    assert isinstance(unary_answer, service_pb2.ModelInferResponse), unary_answer
    assert unary_answer.id == "held-1"
    assert np.frombuffer(unary_answer.raw_output_contents[0], np.float32).tolist() == [1.0]
    idle_answers = results["idle"]
    assert isinstance(idle_answers, list) and len(idle_answers) == 1, idle_answers  # ended OK, not cancelled
    assert idle_answers[0].infer_response.id == "held-7" and idle_answers[0].error_message == ""
    answers = results["stream"]
    assert isinstance(answers, list) and len(answers) == 1, answers
    assert answers[0].error_message == "" and answers[0].infer_response.id == "held-2"
    assert np.frombuffer(answers[0].infer_response.raw_output_contents[0], np.float32).tolist() == [2.0]
