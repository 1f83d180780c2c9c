"""The common MLP on Triton through PyTriton (HTTP and gRPC, KServe v2), batching 64 / 10 ms.

Run from its venv (made from /usr/bin/python3.11: Triton's Python stub links
that libpython): ``python pytriton_server.py --http-port P --grpc-port G``.
"""
from __future__ import annotations

import argparse

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig
from workload import MAX_BATCH_SIZE, MAX_LATENCY_MS, MLP

model = MLP(0)


@batch
def infer(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"output": model(x)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--grpc-port", type=int, required=True)
    args = p.parse_args()
    config = TritonConfig(http_address="127.0.0.1", http_port=args.http_port, grpc_address="127.0.0.1",
                          grpc_port=args.grpc_port, metrics_port=0, allow_metrics=False)
    with Triton(config=config) as triton:
        triton.bind(
            model_name="mlp",
            infer_func=infer,
            inputs=[Tensor(name="x", dtype=np.float32, shape=(784,))],
            outputs=[Tensor(name="output", dtype=np.float32, shape=(10,))],
            config=ModelConfig(max_batch_size=MAX_BATCH_SIZE,
                               batcher=DynamicBatcher(max_queue_delay_microseconds=int(MAX_LATENCY_MS * 1000))),
        )
        triton.serve()


if __name__ == "__main__":
    main()
