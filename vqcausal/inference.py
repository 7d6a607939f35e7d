"""Using a trained run: which action turns a into b, and what a does to an image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vqcausal.errors import VQCausalError
from vqcausal.imageio import image_files, load_image
from vqcausal.models.base import CausalImageModel
from vqcausal.runs import load_model_from_run, newest_finished_run


def open_run(run: str | None, runs_root: str = "runs") -> tuple[CausalImageModel, Path]:
    """The model of ``run``, or of the newest finished run under ``runs_root``."""
    run_dir = Path(run) if run else newest_finished_run(runs_root)
    model, _ = load_model_from_run(run_dir, inference=True)
    return model, run_dir


def load_for_model(model: CausalImageModel, paths: list[Path]) -> torch.Tensor:
    """Images converted to the model's channels and size, stacked (B, C, H, W)."""
    c, h, w = model.args.image_shape
    return torch.stack([load_image(p, c, (h, w)) for p in paths])


def pair_paths(a: str | Path, b: str | Path) -> list[tuple[Path, Path]]:
    """Two image files, or two folders whose images are paired by file name."""
    a, b = Path(a), Path(b)
    if a.is_dir() != b.is_dir():
        folder, other = (a, b) if a.is_dir() else (b, a)
        raise VQCausalError(
            f"{folder} is a folder but {other} is not; give two image files or two folders"
        )
    if not a.is_dir():
        return [(a, b)]
    files_a, files_b = image_files(a), image_files(b)
    names = sorted(set(files_a) & set(files_b))
    if not names:
        raise VQCausalError(f"no image file names shared by {a} and {b}")
    alone = [files_a[n] for n in sorted(set(files_a) - set(files_b))]
    alone += [files_b[n] for n in sorted(set(files_b) - set(files_a))]
    if alone:
        shown = ", ".join(str(p) for p in alone[:3]) + (
            f" and {len(alone) - 3} more" if len(alone) > 3 else ""
        )
        raise VQCausalError(
            f"{len(alone)} image(s) have no partner of the same name in the other folder: {shown}"
        )
    return [(files_a[n], files_b[n]) for n in names]


@dataclass
class Retrieval:
    image_a: Path
    image_b: Path
    actions: list[tuple[str, float]]  # top-k (name, probability), most likely first

    def to_dict(self) -> dict:
        return {
            "image_a": str(self.image_a),
            "image_b": str(self.image_b),
            "actions": [{"action": n, "probability": p} for n, p in self.actions],
        }


@torch.no_grad()
def retrieve(
    model: CausalImageModel,
    pairs: list[tuple[Path, Path]],
    top_k: int = 3,
    method: str | None = None,
    batch: int = 64,
    precision: str = "fp32",
) -> list[Retrieval]:
    """Top-k actions explaining each pair, scored in batches (``precision``: see
    ``CausalImageModel.retrieve``)."""
    names = model.args.action_names
    device = next(model.parameters()).device
    k = max(1, min(top_k, len(names)))
    results = []
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        x = load_for_model(model, [a for a, _ in chunk])
        x_next = load_for_model(model, [b for _, b in chunk])
        probs = model.retrieve(x.to(device), x_next.to(device), method, precision).cpu()
        top = probs.topk(k, dim=-1)
        for (a, b), p, i in zip(chunk, top.values.tolist(), top.indices.tolist(), strict=True):
            results.append(Retrieval(a, b, [(names[j], q) for j, q in zip(i, p, strict=True)]))
    return results


def action_indices(model: CausalImageModel, names: list[str]) -> list[int]:
    known = model.args.action_names
    unknown = [n for n in names if n not in known]
    if unknown:
        raise VQCausalError(f"unknown action '{unknown[0]}'; this run knows {', '.join(known)}")
    return [known.index(n) for n in names]


@torch.no_grad()
def intervene(
    model: CausalImageModel, image: Path, actions: list[str], steps: int = 1
) -> tuple[torch.Tensor, list[str]]:
    """x and the counterfactual after each applied action: (1 + len(actions)*steps, C, H, W)."""
    if steps < 1:
        raise VQCausalError("--steps must be at least 1")
    sequence = [a for a in action_indices(model, actions) for _ in range(steps)]
    x = load_for_model(model, [image])
    out = model.intervene(x, torch.tensor([sequence]))[0]
    labels = ["input"] + [model.args.action_names[a] for a in sequence]
    return torch.cat([x, out]), labels
