"""Basic metrics shared by training-time evaluation and ``vqcausal evaluate``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

# sklearn and torchmetrics are imported inside the functions that need them: together they add
# ~3 s to importing this module, which training-time evaluation and the CLI always do.

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


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM for images in [0, 1], shape ``(B,)``; identical images give 1.

    PSNR only sees pixel error; SSIM also rewards kept structure (edges, local contrast), which
    is what a counterfactual image should preserve. Accepts ``(B, C, H, W)`` or ``(B, H, W)``.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target differ in shape: {tuple(pred.shape)} vs {tuple(target.shape)}"
        )
    from torchmetrics.functional.image import structural_similarity_index_measure

    if pred.ndim == 3:
        pred, target = pred.unsqueeze(1), target.unsqueeze(1)
    value = structural_similarity_index_measure(
        pred.float(), target.float(), data_range=1.0, reduction="none"
    )
    return value.reshape(-1)


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def retrieval_report(
    scores: torch.Tensor,
    target: torch.Tensor,
    action_names: Sequence[str],
    top_k: Sequence[int] = (1, 3),
) -> dict[str, Any]:
    """Full, JSON-safe account of action retrieval, to see which actions get confused.

    ``scores`` is ``(B, A)`` (probabilities or logits; only their order matters) and ``target``
    the true action of each sample. Actions are ordered ``2k`` = factor ``k`` "+" and ``2k + 1``
    = factor ``k`` "-", so ``undirected_accuracy`` counts the right factor in either direction.
    ``top_k`` keys are the requested ``k`` as strings, with ``k`` capped at ``A``. ``per_action``
    is None for actions without samples; ``confusion[true][predicted]`` counts samples.
    """
    from sklearn.metrics import confusion_matrix

    scores, target = scores.detach().cpu(), target.detach().cpu().long()
    num_actions = scores.shape[-1]
    if len(action_names) != num_actions:
        raise ValueError(f"{len(action_names)} action names for {num_actions} score columns")
    pred = scores.argmax(-1)
    report: dict[str, Any] = dict(retrieval_summary(scores, target))
    report["undirected_accuracy"] = (pred // 2 == target // 2).double().mean().item()
    report["top_k"] = {}
    for k in top_k:
        best = scores.topk(min(int(k), num_actions), dim=-1).indices
        report["top_k"][str(k)] = (best == target[:, None]).any(-1).double().mean().item()
    per_action = per_class_accuracy(pred, target, num_actions)
    report["per_action"] = {
        name: _json_float(acc) for name, acc in zip(action_names, per_action.tolist(), strict=True)
    }
    report["confusion"] = confusion_matrix(
        target.numpy(), pred.numpy(), labels=list(range(num_actions))
    ).tolist()
    return report


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> float | None:
    """numerator / denominator as a float, None where the denominator is 0."""
    total = float(denominator)
    return float(numerator) / total if total else None


def code_change_summary(
    codes: torch.Tensor, codes_next: torch.Tensor, predicted: torch.Tensor
) -> dict[str, float | None]:
    """How a transition on discrete codes does on the variables that change and those that don't.

    ``codes`` (B, N) are x's codes, ``codes_next`` x''s, ``predicted`` the transition's codes
    for x'. A transition can be right on nearly every variable (most stay put) and still get the
    counterfactual wrong, so the two kinds are scored apart:

    * ``changed_fraction``: share of variables whose code differs between x and x';
    * ``accuracy_changed`` / ``accuracy_unchanged``: predicted == x' on each kind;
    * ``change_precision`` / ``change_recall``: of the variables the transition changes
      (predicted != x), the share that really change; of those that really change, the share it
      changes (to any code);
    * ``exact``: share of pairs with every variable right.

    None where a kind is empty (e.g. no variable changes).
    """
    codes, codes_next, predicted = (t.detach().cpu().long() for t in (codes, codes_next, predicted))
    if not codes.shape == codes_next.shape == predicted.shape:
        raise ValueError(
            f"shapes differ: codes {tuple(codes.shape)}, codes_next {tuple(codes_next.shape)}, "
            f"predicted {tuple(predicted.shape)}"
        )
    changed = codes_next != codes
    moved = predicted != codes
    right = predicted == codes_next
    return {
        "changed_fraction": _ratio(changed.sum(), changed.numel()),
        "accuracy_changed": _ratio((right & changed).sum(), changed.sum()),
        "accuracy_unchanged": _ratio((right & ~changed).sum(), (~changed).sum()),
        "change_precision": _ratio((moved & changed).sum(), moved.sum()),
        "change_recall": _ratio((moved & changed).sum(), changed.sum()),
        "exact": _ratio(right.all(1).sum(), len(right)),
    }


def code_change_report(
    codes: torch.Tensor,
    codes_next: torch.Tensor,
    predicted: torch.Tensor,
    actions: torch.Tensor,
    action_names: Sequence[str],
) -> dict[str, Any]:
    """:func:`code_change_summary` over all pairs plus ``per_action`` (None: no pairs)."""
    codes, codes_next, predicted = (t.detach().cpu().long() for t in (codes, codes_next, predicted))
    report: dict[str, Any] = dict(code_change_summary(codes, codes_next, predicted))
    actions = actions.detach().cpu().long()
    report["per_action"] = {}
    for a, name in enumerate(action_names):
        rows = actions == a
        report["per_action"][name] = (
            code_change_summary(codes[rows], codes_next[rows], predicted[rows])
            if bool(rows.any())
            else None
        )
    return report
