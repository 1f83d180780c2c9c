"""Mosec serving the common workload's MLP: Rust HTTP front, one Python worker, batching.

Run inside perf/peers/.venvs/mosec (never the project's environment)::

    python mosec_server.py --port 3000 --address 127.0.0.1

POST /inference with a JSON array (1, 784), a .npy body (sniffed by its
magic bytes) or the raw float32 bytes of rows of 784 (anything else; Mosec
hands the worker no headers, so the shape is implied); the answer is a JSON array. Settings as in ../../shared/bench:
max_batch_size 64, max_wait_time 10 ms, one worker, numeric libraries at one
thread.
"""
import io

import msgspec
import numpy as np
from mosec import Server, Worker
from mosec.errors import DecodingError
from workload import MAX_BATCH_SIZE, MAX_LATENCY_MS, MLP

_NPY_MAGIC = b"\x93NUMPY"


class MLPWorker(Worker):
    def __init__(self):
        super().__init__()
        self.model = MLP()

    def deserialize(self, data: bytes) -> np.ndarray:
        try:
            if data[:6] == _NPY_MAGIC:
                return np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32, copy=False)
            if data[:1] == b"[":
                return np.asarray(msgspec.json.decode(data), dtype=np.float32)
            return np.frombuffer(data, dtype=np.float32).reshape(-1, 784)
        except Exception as exc:
            raise DecodingError(f"cannot decode the body: {exc}") from exc

    def serialize(self, data: np.ndarray) -> bytes:
        return msgspec.json.encode(data.tolist())

    def forward(self, data: list) -> list:
        sizes = [len(x) for x in data]
        y = self.model(np.concatenate(data))
        return list(np.split(y, np.cumsum(sizes)[:-1]))


if __name__ == "__main__":
    server = Server()
    server.append_worker(MLPWorker, num=1, max_batch_size=MAX_BATCH_SIZE, max_wait_time=MAX_LATENCY_MS)
    server.run()
