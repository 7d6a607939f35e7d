"""``vqcausal evaluate RUN_DIR``: the full held-out evaluation of a finished run.

Writes ``metrics.json`` and PNG figures to ``RUN_DIR/eval`` (or ``--out``) and nothing else
into the run folder. Every section works for every latent module (vq, gaussian, ladder, scm):

* ``retrieval``: :func:`~vqcausal.eval.metrics.retrieval_report` of both heads (synthesis,
  classifier) on held-out pairs of the split, drawn with a fixed seed like the in-training
  ``EvalSet`` (the default seed is the run's own, so ``--pairs train.eval_pairs`` gives the
  pairs that training monitored).
* ``reconstruction``: MSE, PSNR (and SSIM) of decode(encode(x)).
* ``counterfactual``: decode(intervene(x, a)) against the renderer's true x' (PSNR, SSIM,
  images in [0, 1]); ``atomicity``: a factor oracle (:mod:`vqcausal.eval.oracle`, trained on
  the train split's images) reads the counterfactual's factors, which must equal x''s
  exactly; beside it the autoencoder's ceiling, the transition's accuracy on the codes that
  change and those that do not (vq), per-action and per-factor figures and atomicity after
  chained steps (:mod:`vqcausal.eval.counterfactual`).
* ``disentanglement``: :func:`~vqcausal.eval.disentanglement.disentanglement_scores` with
  represent(values) = encode(render(values)) flattened (code indices for vq, treated as
  discrete; the deterministic latent means otherwise). Needs every factor combination to be
  renderable, so it is skipped (with the reason) for sources that store only part of the grid.
* ``structure``: where the model has a graph and the source a true DAG of the same size
  (scm on the pendulum), SHD and edge counts of the thresholded graph. MIC/TIC per concept
  against ``source.concepts(values)`` for every latent: scm blocks ``i`` vs concept ``i``;
  other latents by post-hoc alignment, each concept against the latent dim that matches it
  best by MIC (see :func:`vqcausal.eval.alignment.align_latents`).

On factor grids small enough to hold in memory (the toy scene, the pendulum), every grid
point is rendered and encoded at most once, however often the metrics ask for it
(:mod:`vqcausal.eval.grid_cache`). The checks before anything is written live in
:mod:`vqcausal.eval.inputs`, the sections but the counterfactual one in
:mod:`vqcausal.eval.sections`; this module runs them in order and writes the results.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqcausal.data.source import to_float
from vqcausal.data.transitions import Transitions
from vqcausal.eval.alignment import MIC_CANDIDATES
from vqcausal.eval.grid_cache import ImageCache, Representation
from vqcausal.eval.inputs import Inputs, prepare
from vqcausal.eval.pairs import CHUNK, PairLatents, encode_images
from vqcausal.eval.sections import (
    EDGE_THRESHOLD,
    TOP_K,
    disentanglement_section,
    reconstruction_section,
    retrieval_section,
    structure_section,
)
from vqcausal.models.base import CausalImageModel

MIC_POINTS = 1000
FAST_MIC_POINTS = 300
FIGURE_COLUMNS = 12  # images in a row of recon.png


# ---- figures --------------------------------------------------------------------------------
@torch.no_grad()
def save_figures(
    model: CausalImageModel,
    folder: Path,
    retrieval: dict,
    names: list[str],
    pairs: PairLatents,
    transitions: Transitions,
    recon: torch.Tensor,
    graph: torch.Tensor | None,
) -> list[Path]:
    from vqcausal.eval.counterfactual import diagnosis_rows
    from vqcausal.eval.grids import intervention_grid
    from vqcausal.eval.plots import confusion_png, per_action_bar
    from vqcausal.viz import heatmap, labelled_rows, save_png

    paths = []
    for method, report in retrieval.items():
        paths.append(
            confusion_png(
                report["confusion"], names, folder / f"confusion_{method}.png", f"{method}"
            )
        )
        paths.append(
            per_action_bar(
                report["per_action"],
                folder / f"per_action_{method}.png",
                f"{method}: per-action accuracy",
            )
        )
    rows, labels = intervention_grid(model, pairs.x)
    paths.append(save_png(labelled_rows(rows, labels), folder / "interventions.png"))
    n = min(len(recon), FIGURE_COLUMNS)
    recon_rows = [to_float(pairs.x[:n]), recon[:n]]
    paths.append(save_png(labelled_rows(recon_rows, ["x", "decoded"]), folder / "recon.png"))
    # per action, a few pairs: x | x' | decode(encode(x')) | counterfactual | difference map
    cf_rows, cf_labels = diagnosis_rows(model, pairs, transitions.actions, names)
    cf_image = labelled_rows(cf_rows, cf_labels, group=5)
    paths.append(save_png(cf_image, folder / "counterfactuals.png"))
    if graph is not None:
        cell = max(6, 240 // max(graph.shape))
        paths.append(save_png(heatmap(graph.cpu(), cell=cell), folder / "adjacency.png"))
    return paths


# ---- the whole evaluation ---------------------------------------------------------------------
def json_safe(value: Any) -> Any:
    """Plain JSON types; NaN and infinities become None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return json_safe(value.tolist())
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


@dataclass
class Result:
    metrics: dict
    out_dir: Path
    figures: list[Path]


def evaluate_prepared(inputs: Inputs, disentanglement: bool = True) -> Result:
    """Compute every section, write the figures and metrics.json, return them; each section
    shows as it runs (:func:`vqcausal.progress.section`).

    ``disentanglement=False`` skips the slowest section (sklearn models over 10k points),
    which sweeps that only compare retrieval and counterfactuals do not need."""
    from vqcausal.atomic import write_text_atomic
    from vqcausal.eval.counterfactual import counterfactual_section, training_fit
    from vqcausal.eval.disentanglement import DisentanglementSettings
    from vqcausal.eval.oracle import OracleSettings, load_or_train_oracle
    from vqcausal.progress import section

    sections = ["encoding held-out pairs", "factor oracle", "counterfactuals"]
    sections += ["disentanglement scores"] * disentanglement + ["structure and MIC", "figures"]

    def status(name: str):
        return section("evaluate", sections.index(name) + 1, len(sections), name)

    model, source, sampler, t = inputs.model, inputs.source, inputs.sampler, inputs.transitions
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    names = list(model.args.action_names)
    latent = model.args.model.latent
    oracle_settings = OracleSettings.fast() if inputs.fast else OracleSettings()
    dis_settings = DisentanglementSettings.fast() if inputs.fast else DisentanglementSettings()
    mic_points = FAST_MIC_POINTS if inputs.fast else MIC_POINTS
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 3)
        clock = now

    inputs.out_dir.mkdir(parents=True, exist_ok=True)
    render = ImageCache(source)
    with status("encoding held-out pairs"):
        if t.rows is None:
            images = render(torch.cat([t.values, t.values_next]))
            x, x_next = images[: len(t)], images[len(t) :]
        else:  # photos: the two the sampler drew
            x, x_next = sampler.images(t)
            images = torch.cat([x, x_next])
        latents = encode_images(model, images)
        pairs = PairLatents(x, x_next, latents[: len(t)], latents[len(t) :])
        reconstruction, recon = reconstruction_section(model, pairs)
        retrieval = retrieval_section(model, pairs, t.actions, names)
        with torch.no_grad():
            graph = model.graph(pairs.latents[:CHUNK].to(device))
        graph = None if graph is None else graph.detach().float().cpu()
    lap("pairs")
    with status("factor oracle"):
        data = {
            "data": dataclasses.asdict(inputs.config.data),
            "split_seed": inputs.config.transitions.seed,
            "test_fraction": inputs.config.transitions.test_fraction,
        }
        oracle, oracle_info = load_or_train_oracle(
            inputs.out_dir,
            inputs.config.data.dataset,
            source,
            sampler,
            oracle_settings,
            data,
            render,
            device,
        )
    lap("oracle")
    with status("counterfactuals"):
        counterfactual = counterfactual_section(model, pairs, t, oracle, oracle_info, source.space)
        if not source.unique_images:
            counterfactual["reference"] = (
                "x' is another photo whose labels are x's with one moved: a different person, "
                "so psnr/ssim compare with a stranger (psnr_unchanged is x against x'); "
                "atomicity, the oracle reading the labels, is the figure that counts"
            )
        cache = inputs.training_cache
        if cache is not None and "codes" in counterfactual:  # fit: the same on training pairs
            counterfactual["codes_training"] = training_fit(model, cache, len(t))
    lap("counterfactual")
    represent = Representation(model, render)
    scores: dict = {"skipped": "not asked for (--no-disentanglement)"}
    if disentanglement:
        with status("disentanglement scores"):
            scores = disentanglement_section(
                represent, source, dis_settings, inputs.seed, latent == "vq"
            )
    lap("disentanglement")
    with status("structure and MIC"):
        structure = structure_section(
            model, graph, source, sampler, represent, mic_points, inputs.seed
        )
    lap("structure")
    with status("figures"):
        figures = save_figures(model, inputs.out_dir, retrieval, names, pairs, t, recon, graph)
    lap("figures")
    metrics = {
        "run": inputs.run_dir.resolve().name,
        "step": inputs.checkpoint.step,
        "latent": latent,
        "split": inputs.split,
        "pairs": len(t),
        "retrieval": retrieval,
        "reconstruction": reconstruction,
        "counterfactual": counterfactual,
        "disentanglement": scores,
        "structure": structure,
        "settings": {
            "fast": inputs.fast,
            "seed": inputs.seed,
            "device": str(device),
            "top_k": list(TOP_K),
            "mic_points": mic_points,
            "mic_candidates": MIC_CANDIDATES,
            "edge_threshold": EDGE_THRESHOLD,
            "disentanglement": dataclasses.asdict(dis_settings),
            "oracle": oracle_settings.to_dict(),
        },
        "seconds": seconds,
    }
    metrics = json_safe(metrics)
    write_text_atomic(inputs.out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return Result(metrics, inputs.out_dir, figures)


def evaluate_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    split: str = "test",
    pairs: int | None = None,
    fast: bool = False,
    seed: int | None = None,
    disentanglement: bool = True,
) -> Result:
    """Validate, then evaluate (see the module docstring)."""
    inputs = prepare(run_dir, out, split, pairs, fast, seed)
    return evaluate_prepared(inputs, disentanglement)
