"""Minimal ``GRPCInferenceService`` servers: what grpcio costs by itself on this machine.

``python -m perf.grpc_floor KIND PORT [RUNNER]`` serves until killed and prints
``ready`` once it listens. ``ServerLive`` returns a prebuilt response and does
nothing else; so does ``ModelInfer`` without ``RUNNER`` (one (1, 10) float32
output, built once: what grpcio costs to take a ModelInfer request and answer
it, with no work). With ``RUNNER`` (a running shmserve runner, e.g. bench_v2's
``mlp-<pid>``) ``ModelInfer`` also works, with the least code that can: the
first raw input viewed as float32 of the request's shape, handed to the
runner's ``predict`` through `shmserve.connect`, the result sent back raw, no
checks. KIND ``aio`` is a ``grpc.aio`` server on a uvloop loop awaiting the
runner's asynchronous path (as shmserve's API worker does); ``sync`` is grpcio's
thread-pool server calling the runner's synchronous path from its threads.
`perf.bench_v2` measures each next to shmserve's own server in the same round.
"""
from __future__ import annotations

import contextlib
import signal
import sys
from concurrent import futures
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pbg

KINDS = ("aio", "sync")
_LIVE = pb.ServerLiveResponse(live=True)
_NOOP_OUT = np.zeros((1, 10), np.float32)  # what the MLP of perf/v2_service.py returns for one row


def _input(request: Any) -> np.ndarray:
    return np.frombuffer(request.raw_input_contents[0], np.float32).reshape(list(request.inputs[0].shape))


def _response(request: Any, out: np.ndarray) -> Any:
    response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
    response.outputs.add(name="output", datatype="FP32", shape=list(out.shape))
    response.raw_output_contents.append(out.tobytes())
    return response


class _Sync(pbg.GRPCInferenceServiceServicer):
    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.noop = _response(pb.ModelInferRequest(model_name="noop"), _NOOP_OUT)

    def ServerLive(self, request: Any, context: Any) -> Any:
        return _LIVE

    def ModelInfer(self, request: Any, context: Any) -> Any:
        if self.runner is None:
            return self.noop
        return _response(request, np.asarray(self.runner.predict.run(_input(request))))


class _Aio(_Sync):
    async def ServerLive(self, request: Any, context: Any) -> Any:  # type: ignore[override]
        return _LIVE

    async def ModelInfer(self, request: Any, context: Any) -> Any:  # type: ignore[override]
        if self.runner is None:
            return self.noop
        return _response(request, np.asarray(await self.runner.predict.async_run(_input(request))))


def _serve_sync(address: str, runner: Any) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(4))
    pbg.add_GRPCInferenceServiceServicer_to_server(_Sync(runner), server)
    server.add_insecure_port(address)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


async def _serve_aio(address: str, runner: Any) -> None:
    server = grpc.aio.server()
    pbg.add_GRPCInferenceServiceServicer_to_server(_Aio(runner), server)
    server.add_insecure_port(address)
    await server.start()
    print("ready", flush=True)
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(None)  # here, while the loop runs: grpc.aio's Server.__del__ needs a live loop


def _exit(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def main(argv: list[str]) -> int:
    kind, port, *rest = argv
    address = f"127.0.0.1:{int(port)}"
    signal.signal(signal.SIGTERM, _exit)  # bench_v2 stops us with SIGTERM: close the runner client on the way out
    with contextlib.ExitStack() as stack:
        runner = None
        if rest:
            import shmserve

            runner = stack.enter_context(shmserve.connect(rest[0]))
        if kind == "sync":
            _serve_sync(address, runner)
        else:
            import uvloop

            uvloop.run(_serve_aio(address, runner))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
