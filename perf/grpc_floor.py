"""No-op ``GRPCInferenceService`` servers: what grpcio costs by itself on this machine.

``python -m perf.grpc_floor aio|sync PORT`` serves ``ServerLive`` (returning a
prebuilt response, doing nothing else) until killed, and prints ``ready`` once
it listens. ``aio`` is a ``grpc.aio`` server on a uvloop loop, as shmserve's API
worker runs it; ``sync`` is grpcio's thread-pool server. `perf.bench_v2`
measures one ``ServerLive`` per call against each, next to shmserve's own, so
the gRPC runtime's floor is stated from the same run as our figures.
"""
from __future__ import annotations

import sys
from concurrent import futures
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pbg

KINDS = ("aio", "sync")
_LIVE = pb.ServerLiveResponse(live=True)


class _Sync(pbg.GRPCInferenceServiceServicer):
    def ServerLive(self, request: Any, context: Any) -> Any:
        return _LIVE


class _Aio(pbg.GRPCInferenceServiceServicer):
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return _LIVE


def _serve_sync(address: str) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(4))
    pbg.add_GRPCInferenceServiceServicer_to_server(_Sync(), server)
    server.add_insecure_port(address)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


async def _serve_aio(address: str) -> None:
    server = grpc.aio.server()
    pbg.add_GRPCInferenceServiceServicer_to_server(_Aio(), server)
    server.add_insecure_port(address)
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


def main(argv: list[str]) -> int:
    kind, port = argv
    address = f"127.0.0.1:{int(port)}"
    if kind == "sync":
        _serve_sync(address)
    else:
        import uvloop

        uvloop.run(_serve_aio(address))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
