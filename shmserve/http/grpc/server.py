"""`GrpcServer`: the gRPC front of one API worker, on the worker's event loop.

Every API worker of a server binds the same gRPC port with ``SO_REUSEPORT``
(grpcio's default on Linux); the supervisor holds the port reserved with a
bound, non-listening socket of its own (`reserve_port`), so ``--grpc-port 0``
means one free port for all workers. `stop` lets in-flight RPCs finish within
the grace period, then cancels the rest; open streams end once their requests
are answered.
"""
from __future__ import annotations

import socket
from typing import Any

from ...errors import ConfigError
from ...oip.server import InferenceServer
from ..server import bind_tcp

__all__ = ["GrpcServer", "reserve_port"]


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) a ``SO_REUSEPORT`` socket on ``host:port``; the API workers' gRPC servers join it."""
    return bind_tcp(host, port, socket.SO_REUSEPORT, "cannot use gRPC port", "pick another --grpc-port")


class GrpcServer:
    """A ``grpc.aio`` server with the inference and health services of one `InferenceServer`.

    Args:
        inference: the protocol state shared with the REST routes.
        host, port: where to listen (loopback by default, like the HTTP port).
        max_message_bytes: largest request or response message (the HTTP body limit).
    """

    def __init__(self, inference: InferenceServer, host: str, port: int, max_message_bytes: int) -> None:
        self.inference = inference
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.max_message_bytes = max_message_bytes
        self._server: object | None = None
        self._servicer: Any = None

    async def start(self) -> None:
        """Bind and start serving; `ConfigError` when the port cannot be bound."""
        import grpc
        from grpc_health.v1 import health_pb2_grpc
        from tritonclient.grpc import service_pb2_grpc

        from .servicer import HealthServicer, InferenceServicer

        server = grpc.aio.server(options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
        ])
        self._servicer = InferenceServicer(self.inference)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self._servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(self.inference), server)
        try:
            bound = server.add_insecure_port(self.address)
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise ConfigError(f"cannot bind gRPC on {self.address}; pick another --grpc-port")
        await server.start()
        self._server = server

    async def stop(self, grace: float) -> None:
        """Stop accepting; in-flight RPCs get `grace` seconds, then are cancelled.

        Open ``ModelStreamInfer`` streams end (OK) once the requests they already sent are answered.
        """
        server, self._server = self._server, None
        if self._servicer is not None:
            self._servicer.stopping.set()
        if server is not None:
            await server.stop(grace)  # type: ignore[attr-defined]
