"""Held-out pairs as the evaluation sections see them, and batching over them.

Shared by ``vqcausal evaluate`` and the in-training evaluation: both walk pairs in chunks on
the model's device.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from vqcausal.data.source import to_float
from vqcausal.models.base import CausalImageModel

CHUNK = 256


def chunks(n: int, size: int = CHUNK) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` covering ``range(n)``."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the module's tensors live (its first parameter or buffer; the CPU if none)."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def encode_images(model: CausalImageModel, images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> latents (B, ...) on the CPU, in chunks."""
    device = model_device(model)
    parts = [model.encode(to_float(images[p]).to(device)).cpu() for p in chunks(len(images))]
    return torch.cat(parts) if parts else torch.zeros(0)


@dataclass
class PairLatents:
    """Images of held-out pairs (uint8, CPU) and their latents (CPU)."""

    x: torch.Tensor
    x_next: torch.Tensor
    latents: torch.Tensor
    latents_next: torch.Tensor
