"""The MLP of the common benchmark workload as a shmserve Runnable (numpy only)."""
from __future__ import annotations

import numpy as np

import shmserve

IN_DIM, HIDDEN, OUT_DIM = 784, 1024, 10


def mlp_weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weights fixed by `seed`: the same model in every process."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((IN_DIM, HIDDEN)) / np.sqrt(IN_DIM)).astype(np.float32)
    b1 = rng.standard_normal(HIDDEN).astype(np.float32) * 0.01
    w2 = (rng.standard_normal((HIDDEN, OUT_DIM)) / np.sqrt(HIDDEN)).astype(np.float32)
    b2 = rng.standard_normal(OUT_DIM).astype(np.float32) * 0.01
    return w1, b1, w2, b2


class MLPRunnable(shmserve.Runnable):
    """relu(x @ W1 + b1) @ W2 + b2 on float32 (n, 784) -> (n, 10), batchable on dim 0."""

    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    def __init__(self, seed: int = 0) -> None:
        self.w1, self.b1, self.w2, self.b2 = mlp_weights(seed)

    @shmserve.Runnable.method(batchable=True, batch_dim=0)
    def predict(self, x: np.ndarray) -> np.ndarray:
        h = np.maximum(x @ self.w1 + self.b1, 0.0)
        return h @ self.w2 + self.b2
