"""Stage 2's training pairs: encoded once by the frozen stage-1 model, weighted, reversed.

Stage 2 trains on latents only, so the pairs are rendered and encoded once (the latent cache)
and then drawn by weight: balanced by action, optionally with each pair also read backwards
as its inverse action.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vqcausal.data.source import to_float
from vqcausal.data.transitions import Transitions, TransitionSampler
from vqcausal.models.base import CausalImageModel
from vqcausal.progress import Progress
from vqcausal.train.batches import PairChunks, loader


@torch.no_grad()
def encode_transitions(
    model: CausalImageModel,
    sampler: TransitionSampler,
    t: Transitions,
    batch: int = 256,
    workers: int = 0,
    show: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents of x and x' for factor-level transitions, rendered (in ``workers`` processes)
    and encoded in chunks, with progress (``show``)."""
    latents, latents_next = [], []
    device = next(model.parameters()).device
    chunks = loader(PairChunks(sampler, t, batch), workers, pin_memory=device.type == "cuda")
    with Progress("encoding stage-2 pairs", len(t), transient=True, disable=not show) as bar:
        for x, x_next in chunks:
            both = to_float(torch.cat([x, x_next]).to(device, non_blocking=True))
            z = model.encode(both).cpu()
            latents.append(z[: len(x)])
            latents_next.append(z[len(x) :])
            bar.advance(len(x))
    return torch.cat(latents), torch.cat(latents_next)


def pair_weights(actions: torch.Tensor, balance: bool) -> torch.Tensor:
    """Sampling weight of each cached pair: uniform, or 1/count(action) so that every action
    present is drawn equally often (the usual remedy for a long-tailed class distribution)."""
    if not balance:
        return torch.ones(len(actions))
    counts = torch.bincount(actions)
    return 1.0 / counts[actions].double()


def with_reversed_pairs(
    cache: dict[str, torch.Tensor], inverse: Callable[[torch.Tensor], torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The cached pairs followed by each pair reversed: (z', inverse(a), z)."""
    return {
        "latents": torch.cat([cache["latents"], cache["latents_next"]]),
        "actions": torch.cat([cache["actions"], inverse(cache["actions"])]),
        "latents_next": torch.cat([cache["latents_next"], cache["latents"]]),
    }
