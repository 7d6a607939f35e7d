"""Transition pairs as safetensors shards: render once, load fast, never unpickle.

Layout of an export folder::

    meta.json                  source description, factor space, transition config, counts
    train-00000.safetensors    x, x_next (uint8 N,C,H,W), action (N,), values, values_next (N,K)
    test-00000.safetensors     ...

Shards are written to a temporary name and renamed, so a killed export never leaves a
half-written shard under its final name.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vqcausal.atomic import atomic_path, write_json_atomic
from vqcausal.data.factors import FactorSpace
from vqcausal.data.transitions import SPLITS, TransitionSampler
from vqcausal.errors import DataError

PAIR_KEYS = ("x", "x_next", "action", "values", "values_next")


def new_export_folder(out_dir: str | Path) -> Path:
    """``out_dir`` created, or refused when something is already there (never overwrite)."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"export folder {out} is not empty; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def export_pairs(
    sampler: TransitionSampler,
    out_dir: str | Path,
    counts: dict[str, int],
    shard_size: int = 4096,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Write ``counts[split]`` pairs per split into ``out_dir``; returns the meta dict."""
    out = new_export_folder(out_dir)
    generator = torch.Generator().manual_seed(seed)
    shards: dict[str, list[str]] = {}
    for split, total in counts.items():
        shards[split] = []
        for start in range(0, total, shard_size):
            batch = sampler.batch(min(shard_size, total - start), split, generator)
            name = f"{split}-{len(shards[split]):05d}.safetensors"
            with atomic_path(out / name) as tmp:
                save_file({k: batch[k].contiguous() for k in PAIR_KEYS}, str(tmp))
            shards[split].append(name)
            if progress is not None:
                progress(int(batch["action"].shape[0]))
    meta = {
        "source": sampler.source.describe(),
        "transitions": dataclasses.asdict(sampler.config),
        "counts": counts,
        "shards": shards,
        "action_names": sampler.space.action_names,
    }
    write_json_atomic(out / "meta.json", meta)
    return meta


class ExportedPairs(torch.utils.data.Dataset):
    """One split of an export folder, held in memory (uint8), indexable like a Dataset."""

    def __init__(self, folder: str | Path, split: str = "train") -> None:
        folder = Path(folder)
        meta_path = folder / "meta.json"
        if split not in SPLITS:
            raise DataError(f"unknown split '{split}'; choose from {', '.join(SPLITS)}")
        try:
            self.meta = json.loads(meta_path.read_text())
            names = self.meta["shards"][split]
            self.space = FactorSpace.from_dict(self.meta["source"])
        except FileNotFoundError:
            raise DataError(f"{meta_path}: not found; is {folder} an export folder?") from None
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"{meta_path}: malformed export description ({err})") from None
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in PAIR_KEYS}
        for name in names:
            path = folder / name
            try:
                tensors = load_file(str(path))
            except (OSError, SafetensorError) as err:
                raise DataError(f"{path}: unreadable shard ({err})") from None
            missing = set(PAIR_KEYS) - set(tensors)
            if missing:
                raise DataError(f"{path}: shard lacks {', '.join(sorted(missing))}")
            for key in PAIR_KEYS:
                parts[key].append(tensors[key])
        if not names:
            raise DataError(f"{folder}: the export holds no {split} pairs")
        self.tensors = {k: torch.cat(v) for k, v in parts.items()}

    def __len__(self) -> int:
        return int(self.tensors["action"].shape[0])

    def __getitem__(self, index: int | torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v[index] for k, v in self.tensors.items()}
