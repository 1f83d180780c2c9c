"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``) and ``grpc.health.v1``.

`server.GrpcServer` runs a ``grpc.aio`` server on the API worker's event loop,
on its own port (``shmserve serve --grpc-port P``); `servicer` answers the
RPCs through the same `shmserve.oip.server.InferenceServer` as REST
(`stream`: ``ModelStreamInfer``), and `codec` converts tensors. The message
classes come from the ``tritonclient`` wheel (``tritonclient.grpc.service_pb2``), so no proto is vendored here; the
``v2`` extra installs it (``pip install 'shmserve[v2]'``).
"""
