"""Basic metrics shared by training-time evaluation and ``vqcausal evaluate``."""

from __future__ import annotations

import torch

PSNR_CAP_DB = 100.0  # identical images: PSNR is infinite; we report this cap instead


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [0, 1]; identical images give ``PSNR_CAP_DB``."""
    mse = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    value = 10 * torch.log10(1.0 / mse.clamp(min=1e-30))
    return value.clamp(max=PSNR_CAP_DB)


def per_class_accuracy(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Accuracy of each class (NaN where a class has no samples)."""
    correct = torch.zeros(num_classes, dtype=torch.float64)
    total = torch.zeros(num_classes, dtype=torch.float64)
    total.index_add_(0, target, torch.ones_like(target, dtype=torch.float64))
    correct.index_add_(0, target, (pred == target).double())
    return correct / total  # 0/0 -> NaN marks absent classes


def retrieval_summary(probs: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Accuracy, balanced accuracy and the worst present action's accuracy."""
    pred = probs.argmax(-1)
    per_action = per_class_accuracy(pred, target, probs.shape[-1])
    present = per_action[~per_action.isnan()]
    return {
        "accuracy": (pred == target).double().mean().item(),
        "balanced_accuracy": present.mean().item(),
        "worst_action_accuracy": present.min().item(),
    }
