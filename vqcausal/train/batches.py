"""Training images rendered off the training process, reproducible by step.

Procedural sources render on the CPU. Rendered in the training process, the images leave a GPU
idle between steps (an H100 averaged ~8% utilisation in stage 1). Here every stage-1 batch is a
pure function of ``(seed, rank, step)`` (its generator is seeded from those three numbers), so

* DataLoader workers render steps ahead in parallel: worker ``w`` of ``W`` renders steps
  ``start + w, start + w + W, ...`` and the loader hands them back in step order;
* a resumed run draws exactly the batches the uninterrupted one would have, with no sampler
  state to checkpoint, whatever the number of workers (0 renders in the training process).

The stage-2 latent cache renders its fixed pairs in chunks through the same kind of loader.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from vqcausal.data.transitions import Transitions, TransitionSampler

_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: (seed, rank, step) -> well-spread seeds


def step_seed(seed: int, rank: int, step: int) -> int:
    """A distinct 63-bit generator seed for each (seed, rank, step)."""
    value = seed
    for part in (rank, step):
        value = (value * _MIX + part + 1) % (1 << 63)
    return value


def data_workers(requested: int, device: torch.device, processes: int = 1) -> int:
    """Loader worker processes: ``requested`` when >= 0; ``-1`` (auto) renders in the training
    process on a CPU (workers would compete with the model for the same cores) and in up to 8
    workers per process on an accelerator, leaving one core per process for the loop."""
    if requested >= 0:
        return requested
    if device.type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(8, (cores or 1) // max(processes, 1) - 1))


class StepBatches(IterableDataset):
    """Stage-1 batches for steps ``start .. end - 1``: ``pairs`` transitions each, rendered.

    Yields ``{"x": (2B, C, H, W) uint8 (x then x'), "values": (2B, F), "actions": (B,)}``.
    """

    def __init__(
        self,
        sampler: TransitionSampler,
        pairs: int,
        start: int,
        end: int,
        seed: int = 0,
        rank: int = 0,
    ) -> None:
        super().__init__()
        self.sampler, self.pairs = sampler, pairs
        self.start, self.end, self.seed, self.rank = start, end, seed, rank

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(step_seed(self.seed, self.rank, step))
        t = self.sampler.sample(self.pairs, "train", generator)
        x, x_next = self.sampler.images(t)
        return {
            "x": torch.cat([x, x_next]),
            "values": torch.cat([t.values, t.values_next]),
            "actions": t.actions,
        }

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for step in range(self.start + worker, self.end, workers):
            yield self.batch(step)


class PairChunks(Dataset):
    """Fixed transitions rendered in chunks of ``chunk`` pairs: ``(x, x')`` uint8 per chunk."""

    def __init__(self, sampler: TransitionSampler, transitions: Transitions, chunk: int) -> None:
        self.sampler, self.transitions, self.chunk = sampler, transitions, chunk

    def __len__(self) -> int:
        return -(-len(self.transitions) // self.chunk)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        part = slice(i * self.chunk, (i + 1) * self.chunk)
        return self.sampler.images(self.transitions[part])


def loader(dataset: Dataset | IterableDataset, workers: int, pin_memory: bool) -> DataLoader:
    """A loader of ready-made batches (``batch_size=None``) that renders in ``workers``
    processes, each a few batches ahead.

    It gets a generator of its own: a DataLoader otherwise draws its workers' base seed from
    the global RNG whenever it is iterated, which would shift the model's random stream and
    break bit-exact resumption (the batches themselves never use that seed)."""
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers else None,
        generator=torch.Generator().manual_seed(0),
    )
