"""`InferenceServicer` (``inference.GRPCInferenceService``) and `HealthServicer` (``grpc.health.v1``).

Each RPC goes through the API worker's `InferenceServer`, as the REST routes do;
an `InferError` ends the RPC with the matching status code (INVALID_ARGUMENT,
NOT_FOUND, UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL) and its message.
"""
from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from ...oip.errors import InferError, status_of
from ...oip.server import InferenceServer
from .codec import decode_inputs, fill_response, parameters_of, requested_outputs
from .stream import serve_stream

__all__ = ["InferenceServicer", "HealthServicer", "SERVICE_NAME"]

log = logging.getLogger("shmserve.grpc")

SERVICE_NAME = "inference.GRPCInferenceService"


def _rpc(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Turn an `InferError` (or any failure) raised by an RPC into the RPC's status."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            err = status_of(exc)
            if not isinstance(exc, InferError):
                log.exception("gRPC %s failed", method.__name__)
            await context.abort(getattr(grpc.StatusCode, err.grpc_code_name), err.message)

    return wrapper


def _datatype_enum(datatype: str) -> int:
    return int(mc.DataType.Value(f"TYPE_{'STRING' if datatype == 'BYTES' else datatype}")) if datatype else 0


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The Open Inference Protocol's gRPC service over one `InferenceServer`."""

    def __init__(self, server: InferenceServer) -> None:
        self.server = server
        #: set when the server starts its graceful stop: open streams end once their requests are answered
        self.stopping = asyncio.Event()

    # -- health and metadata -----------------------------------------------------------
    @_rpc
    async def ServerLive(self, request: Any, context: Any) -> Any:
        """Always live while the process answers."""
        return pb.ServerLiveResponse(live=True)

    @_rpc
    async def ServerReady(self, request: Any, context: Any) -> Any:
        """Ready when every runner has a live worker."""
        return pb.ServerReadyResponse(ready=await self.server.server_ready())

    @_rpc
    async def ModelReady(self, request: Any, context: Any) -> Any:
        """Ready when the model's runner has a live worker."""
        model = self.server.models.get(request.name, request.version)
        return pb.ModelReadyResponse(ready=await self.server.model_ready(model))

    @_rpc
    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        """Name, version and extensions."""
        return json_format.ParseDict(self.server.metadata(), pb.ServerMetadataResponse())

    @_rpc
    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        """Inputs and outputs of one model."""
        model = self.server.models.get(request.name, request.version)
        return json_format.ParseDict(model.metadata(), pb.ModelMetadataResponse())

    @_rpc
    async def ModelConfig(self, request: Any, context: Any) -> Any:
        """A small model configuration: name, platform, max_batch_size, tensors."""
        model = self.server.models.get(request.name, request.version)
        config = mc.ModelConfig(name=model.name, platform=model.platform, max_batch_size=model.max_batch_size)
        for t in model.inputs:
            config.input.add(name=t.name, data_type=_datatype_enum(t.datatype), dims=list(t.shape))
        for t in model.outputs:
            config.output.add(name=t.name, data_type=_datatype_enum(t.datatype), dims=list(t.shape))
        return pb.ModelConfigResponse(config=config)

    @_rpc
    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        """The statistics extension (see `shmserve.oip.stats`)."""
        stats = self.server.statistics(request.name, request.version)
        return json_format.ParseDict({"model_stats": stats}, pb.ModelStatisticsResponse())

    @_rpc
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        """Every model and its state."""
        return json_format.ParseDict({"models": await self.server.index()}, pb.RepositoryIndexResponse())

    @_rpc
    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        """Not supported: the models are fixed when the server starts."""
        raise InferError(400, "load is not supported: a Service's models are fixed when `shmserve serve` starts")

    RepositoryModelUnload = RepositoryModelLoad

    # -- inference -----------------------------------------------------------------------
    @_rpc
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        """One inference; tensors as raw contents, typed contents or shared-memory references."""
        return await self._infer(request)

    async def _infer(self, request: Any) -> Any:
        server = self.server
        model = server.models.get(request.model_name, request.model_version)
        regions = server.regions
        inputs = decode_inputs(request, regions)
        requested = requested_outputs(request, regions)
        parameters = parameters_of(request.parameters) if request.parameters else {}
        outputs = await server.infer(model, inputs, parameters, requested)
        response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
        fill_response(response, outputs, requested, model.name, regions)
        return response

    async def ModelStreamInfer(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        """Bidirectional streaming inference: see `shmserve.http.grpc.stream`."""
        async for response in serve_stream(requests, self._infer, self.stopping):
            yield response

    # -- system shared memory ---------------------------------------------------------------
    def _regions(self) -> Any:
        if self.server.regions is None:
            raise InferError(400, "client shared memory is off on this server; start it with --allow-client-shm")
        return self.server.regions

    @_rpc
    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        """Registered regions (all, or the one named)."""
        response = pb.SystemSharedMemoryStatusResponse()
        if self.server.regions is not None:
            for r in self.server.regions.status(request.name):
                response.regions[r["name"]].CopyFrom(
                    pb.SystemSharedMemoryStatusResponse.RegionStatus(**r))
        return response

    @_rpc
    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        """Map a client region (see `shmserve.oip.regions` for the checks)."""
        self._regions().register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @_rpc
    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        """Unmap one region, or all when no name is given."""
        self._regions().unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @_rpc
    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        """No CUDA regions are offered: always empty."""
        return pb.CudaSharedMemoryStatusResponse()

    @_rpc
    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        """Refused: use system shared memory or raw contents."""
        raise InferError(400, "CUDA shared memory regions are not supported by this server; "
                              "use system shared memory or raw_input_contents")

    CudaSharedMemoryUnregister = CudaSharedMemoryRegister


class HealthServicer(health_pb2_grpc.HealthServicer):
    """``grpc.health.v1.Health/Check`` for Kubernetes gRPC probes: SERVING when the server is ready."""

    def __init__(self, server: InferenceServer) -> None:
        self.server = server

    async def Check(self, request: Any, context: Any) -> Any:
        """SERVING / NOT_SERVING for ``""`` and the inference service; NOT_FOUND for any other service."""
        if request.service not in ("", SERVICE_NAME):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        ready = await self.server.server_ready()
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)
