"""The serving graph: uint8 images in, (logits, probs) out, preprocessing inside.

Every exported format is traced from this one module, so the file a runtime loads is
self-contained and the parity check covers the preprocessing as well as the model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "probs")


class ServingGraph(nn.Module):
    """``images`` uint8 [N,3,32,32] RGB 0-255 -> float, /255, (x-mean)/std, model -> logits, probs."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float],
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        # Module.to() converts in place; an fp16 variant must leave the caller's fp32 model alone.
        self.model = (model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)).eval()
        self.dtype = dtype
        # Buffers, not Python floats: they are saved with the graph and shaped for broadcasting.
        self.register_buffer("mean", torch.tensor(mean, dtype=dtype).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=dtype).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (images.to(self.dtype) / 255.0 - self.mean) / self.std
        logits = self.model(x)
        # Softmax in float32 even for an fp16 variant: the outputs' contract is float32.
        logits = logits.float()
        return logits, torch.softmax(logits, dim=1)


def serving_graph(model: nn.Module, ckpt: dict, dtype: torch.dtype = torch.float32) -> ServingGraph:
    """Wrap an eval-mode model with the checkpoint's own mean/std."""
    return ServingGraph(model, ckpt["mean"], ckpt["std"], dtype=dtype).eval()


def example_images(batch: int = 2) -> torch.Tensor:
    """A uint8 example for tracing. Batch 2, not 1: torch.export specialises a size-1 dimension."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=g)
