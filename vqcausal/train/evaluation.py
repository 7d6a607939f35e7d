"""Held-out evaluation during training: reconstruction, retrieval, counterfactuals, figures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vqcausal.data.source import to_float
from vqcausal.data.transitions import Transitions, TransitionSampler
from vqcausal.eval.grids import intervention_grid
from vqcausal.eval.metrics import code_change_summary, psnr, retrieval_summary
from vqcausal.eval.pairs import chunks, model_device
from vqcausal.models.base import RETRIEVAL_METHODS, CausalImageModel
from vqcausal.viz import heatmap, labelled_rows, save_png


@dataclass
class EvalSet:
    """A fixed set of held-out (test-split) pairs with their images."""

    transitions: Transitions
    x: torch.Tensor  # uint8
    x_next: torch.Tensor  # uint8
    action_names: list[str]

    @classmethod
    def draw(cls, sampler: TransitionSampler, n: int, seed: int) -> EvalSet:
        t = sampler.sample(n, "test", torch.Generator().manual_seed(seed + 104729))
        x, x_next = sampler.images(t)
        return cls(t, x, x_next, sampler.space.action_names)


@torch.no_grad()
def held_out_metrics(model: CausalImageModel, data: EvalSet, with_transition: bool = True) -> dict:
    """Metrics on held-out pairs; the model must be in eval mode (deterministic)."""
    device = model_device(model)
    n = len(data.transitions)
    recon_psnr, latents, latents_next = [], [], []
    for part in chunks(n):
        x = to_float(data.x[part]).to(device)
        x_next = to_float(data.x_next[part]).to(device)
        z = model.encode(torch.cat([x, x_next]))
        latents.append(z[: len(x)])
        latents_next.append(z[len(x) :])
        recon_psnr.append(psnr(model.decode_latent(z[: len(x)]), x).cpu())
    latents, latents_next = torch.cat(latents), torch.cat(latents_next)
    metrics: dict = {"recon_psnr": torch.cat(recon_psnr).mean().item()}
    metrics.update(model.latent_stats(latents))
    if not with_transition:
        return metrics
    actions = data.transitions.actions.to(device)
    for method in RETRIEVAL_METHODS:
        probs = torch.cat(
            [model.retrieve_from_latents(latents[p], latents_next[p], method) for p in chunks(n)]
        )
        for key, value in retrieval_summary(probs.cpu(), actions.cpu()).items():
            metrics[f"retrieval_{method}_{key}"] = value
    predicted = torch.cat([model.step_latent(latents[p], actions[p]) for p in chunks(n)])
    if predicted.dtype == torch.long:  # discrete codes: how many variables came out right
        metrics["counterfactual_code_accuracy"] = (predicted == latents_next).double().mean().item()
        codes = code_change_summary(latents, latents_next, predicted)
        metrics["counterfactual_changed_code_accuracy"] = codes["accuracy_changed"]
        metrics["counterfactual_change_recall"] = codes["change_recall"]
    else:
        metrics["counterfactual_latent_mse"] = (predicted - latents_next).pow(2).mean().item()
    cf_psnr = [
        psnr(model.decode_latent(predicted[p]), to_float(data.x_next[p]).to(device)).cpu()
        for p in chunks(n)
    ]
    metrics["counterfactual_psnr"] = torch.cat(cf_psnr).mean().item()
    return metrics


@torch.no_grad()
def save_figures(
    model: CausalImageModel, data: EvalSet, folder: Path, step: int, with_transition: bool
) -> dict[str, Path]:
    """recon / interventions / adjacency PNGs of this evaluation, named by step; returns
    them by figure name."""
    device = model_device(model)
    x = to_float(data.x[:8]).to(device)
    recon = model.decode_latent(model.encode(x)).cpu()
    pngs = {"reconstructions": folder / f"recon-{step:07d}.png"}
    save_png(labelled_rows([x.cpu(), recon], ["x", "decoded"]), pngs["reconstructions"])
    if not with_transition:
        return pngs
    rows, labels = intervention_grid(model, data.x)
    pngs["interventions"] = folder / f"interventions-{step:07d}.png"
    save_png(labelled_rows(rows, labels), pngs["interventions"])
    graph = model.graph(model.encode(to_float(data.x[:64]).to(device)))
    if graph is not None:
        pngs["adjacency"] = folder / f"adjacency-{step:07d}.png"
        save_png(heatmap(graph.cpu()), pngs["adjacency"])
    return pngs
