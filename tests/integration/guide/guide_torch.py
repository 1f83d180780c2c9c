"""The trained PyTorch model of the guide's examples: a tiny stand-in classifier."""
from __future__ import annotations

import torch


class MNISTNet(torch.nn.Module):
    """A tiny stand-in for a trained classifier: 4 inputs, 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def train() -> MNISTNet:
    return MNISTNet().eval()
