"""The sections of ``vqcausal evaluate`` computed here: reconstruction, retrieval (both
heads), disentanglement scores and structure (the learned graph against the true DAG, MIC per
concept). The counterfactual section has its own module (:mod:`vqcausal.eval.counterfactual`).
"""

from __future__ import annotations

from typing import Any

import torch

from vqcausal.data.source import GroundTruthSource, to_float
from vqcausal.data.transitions import TransitionSampler
from vqcausal.eval.alignment import align_latents
from vqcausal.eval.grid_cache import Representation
from vqcausal.eval.pairs import PairLatents, chunks, model_device
from vqcausal.models.base import RETRIEVAL_METHODS, CausalImageModel

EDGE_THRESHOLD = 0.3  # graph weights above this count as edges (unless the latent has its own)
TOP_K = (1, 3)


@torch.no_grad()
def reconstruction_section(
    model: CausalImageModel, pairs: PairLatents
) -> tuple[dict, torch.Tensor]:
    from vqcausal.eval.metrics import psnr, ssim

    device = model_device(model)
    mse, values, structure, first = [], [], [], None
    for p in chunks(len(pairs.x)):
        x = to_float(pairs.x[p])
        recon = model.decode_latent(pairs.latents[p].to(device)).clamp(0, 1).cpu()
        first = recon if first is None else first
        mse.append((recon - x).pow(2).flatten(1).mean(1))
        values.append(psnr(recon, x))
        structure.append(ssim(recon, x))
    section = {
        "mse": torch.cat(mse).mean().item(),
        "psnr": torch.cat(values).mean().item(),
        "ssim": torch.cat(structure).mean().item(),
    }
    return section, first


@torch.no_grad()
def retrieval_section(
    model: CausalImageModel, pairs: PairLatents, actions: torch.Tensor, names: list[str]
) -> dict:
    from vqcausal.eval.metrics import retrieval_report

    device = model_device(model)
    out = {}
    for method in RETRIEVAL_METHODS:
        scores = torch.cat(
            [
                model.retrieve_from_latents(
                    pairs.latents[p].to(device), pairs.latents_next[p].to(device), method
                ).cpu()
                for p in chunks(len(actions))
            ]
        )
        out[method] = retrieval_report(scores, actions, names, TOP_K)
    return out


def disentanglement_section(
    represent: Representation, source: GroundTruthSource, settings, seed: int, discrete: bool
) -> dict:
    from vqcausal.eval.disentanglement import disentanglement_scores

    stored = source.stored_values()
    if stored is not None and stored.shape[0] < source.space.num_values:
        return {
            "skipped": f"{source.name} stores {stored.shape[0]:,} of "
            f"{source.space.num_values:,} factor combinations; the scores sample the full grid"
        }
    return disentanglement_scores(represent, source.space.sizes, settings, seed, discrete)


# ---- structure: graph and MIC
def _learned_adjacency(model: CausalImageModel, graph: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """0/1 [parent, child] adjacency: the latent's own thresholded graph, else weights > 0.3."""
    from vqcausal.eval.structure import threshold_graph

    latent = getattr(model, "latent", None)
    learned = getattr(latent, "learned_graph", None)
    if callable(learned):  # scm: |A[i, j]| > edge_threshold, A[i, j] = edge i -> j
        threshold = getattr(getattr(latent, "config", None), "edge_threshold", None)
        return learned().detach().cpu().long(), {
            "graph_from": "latent.learned_graph()",
            "threshold": threshold,
        }
    # model.graph is [child, parent]; the structure metrics want [parent, child]
    return threshold_graph(graph.T, EDGE_THRESHOLD), {
        "graph_from": "model.graph() > threshold",
        "threshold": EDGE_THRESHOLD,
    }


def structure_section(
    model: CausalImageModel,
    graph: torch.Tensor | None,
    source: GroundTruthSource,
    sampler: TransitionSampler,
    represent: Representation,
    points: int,
    seed: int,
) -> dict:
    from vqcausal.eval.mic import mic_per_concept
    from vqcausal.eval.oracle import split_values
    from vqcausal.eval.structure import edge_counts, shd

    section: dict[str, Any] = {}
    true_dag = source.true_dag
    if graph is not None and true_dag is not None and tuple(graph.shape) == tuple(true_dag.shape):
        learned, how = _learned_adjacency(model, graph.cpu())
        true = (true_dag != 0).long()
        section["shd"] = shd(learned, true)
        section["edges"] = edge_counts(learned, true)
        section.update(how)
        section["learned_graph"] = learned.tolist()
        section["true_graph"] = true.tolist()

    generator = torch.Generator().manual_seed(seed + 7919)
    values = split_values(sampler, points, None, generator)
    fit_values = split_values(sampler, points, None, generator)
    small_grid = len(values) < points  # fewer images than asked for: all of them, twice
    names = list(source.concept_names)
    labels = source.concepts(values).double()
    z = represent(values)
    latent = model.args.model.latent
    concepts = model.args.model.scm.concepts
    if latent == "scm" and concepts == labels.shape[1] and z.shape[1] % concepts == 0:
        mic = mic_per_concept(z.double().view(len(z), concepts, -1), labels, names=names)
        mic["alignment"] = "scm block i vs concept i (block mean)"
    else:
        discrete = latent == "vq"
        fit_labels = source.concepts(fit_values).double().numpy()
        aligned, dims = align_latents(
            represent(fit_values).numpy(), fit_labels, z.numpy(), discrete
        )
        mic = mic_per_concept(aligned, labels, names=names)
        mic["alignment"] = (
            "post hoc: each concept vs its best latent dim by MIC on a separate sample"
            + (" (codes relabelled by their mean concept value)" if discrete else "")
            + (" (the whole grid: both samples are the same points)" if small_grid else "")
        )
        mic["latent_dims"] = dims
    mic["points"] = int(len(values))
    section["mic"] = mic
    return section
