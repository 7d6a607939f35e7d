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
point is rendered and encoded at most once, however often the metrics ask for it.
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

from vqcausal.config import Config
from vqcausal.data.source import GroundTruthSource, to_float
from vqcausal.data.transitions import SPLITS, Transitions, TransitionSampler
from vqcausal.errors import VQCausalError
from vqcausal.eval.alignment import MIC_CANDIDATES, align_latents
from vqcausal.eval.pairs import CHUNK, PairLatents, chunks, encode_images, model_device
from vqcausal.models.base import RETRIEVAL_METHODS, CausalImageModel
from vqcausal.runs import Checkpoint

DEFAULT_PAIRS = 1024
FAST_PAIRS = 128
MIC_POINTS = 1000
FAST_MIC_POINTS = 300
EDGE_THRESHOLD = 0.3  # graph weights above this count as edges (unless the latent has its own)
TOP_K = (1, 3)
PAIR_SEED_OFFSET = 104729  # the same offset as the in-training EvalSet
FIGURE_COLUMNS = 12  # images in a row of recon.png
IMAGE_CACHE_BYTES = 512 * 2**20
REPRESENTATION_CACHE_ELEMENTS = 32 * 2**20


class EvaluationError(VQCausalError):
    """A run or option that ``vqcausal evaluate`` cannot use."""


# ---- inputs ---------------------------------------------------------------------------------
@dataclass
class Inputs:
    """Everything validated before anything is written."""

    run_dir: Path
    out_dir: Path
    model: CausalImageModel
    checkpoint: Checkpoint
    config: Config
    source: GroundTruthSource
    sampler: TransitionSampler
    split: str
    seed: int
    fast: bool
    transitions: Transitions
    # the stage-2 training pairs as latents, for the transition's fit (None without a cache)
    training_cache: dict[str, torch.Tensor] | None


def prepare(
    run_dir: str | Path,
    out: str | Path | None = None,
    split: str = "test",
    pairs: int | None = None,
    fast: bool = False,
    seed: int | None = None,
) -> Inputs:
    """Load and check the run, its data and the options; writes nothing."""
    from vqcausal.data.registry import load_source
    from vqcausal.runs import config_from_meta, load_model_from_run, read_latent_cache

    if split not in SPLITS:
        raise EvaluationError(f"unknown split '{split}'; choose from {', '.join(SPLITS)}")
    if pairs is not None and pairs < 1:
        raise EvaluationError(f"--pairs must be at least 1, got {pairs}")
    run_dir = Path(run_dir)
    out_dir = Path(out) if out is not None else run_dir / "eval"
    if out_dir.exists() and not out_dir.is_dir():
        raise EvaluationError(f"output folder {out_dir} is a file; name a folder with --out")
    for parent in out_dir.parents:
        if parent.exists() and not parent.is_dir():
            raise EvaluationError(f"cannot create output folder {out_dir}: {parent} is a file")
    model, ckpt = load_model_from_run(run_dir)
    if not ckpt.finished:
        raise EvaluationError(
            f"{run_dir}: training has not finished (newest checkpoint at step {ckpt.step}); "
            f"finish it with `python train.py --resume {run_dir}`"
        )
    config = config_from_meta(ckpt.meta)
    source = load_source(config.data)
    if list(source.image_shape) != list(model.args.image_shape):
        raise EvaluationError(
            f"{run_dir}: the model takes {tuple(model.args.image_shape)} images but its data "
            f"source now gives {tuple(source.image_shape)}"
        )
    if list(source.space.action_names) != list(model.args.action_names):
        raise EvaluationError(f"{run_dir}: the data source's actions differ from the model's")
    sampler = TransitionSampler(source, config.transitions)
    seed = config.seed if seed is None else int(seed)
    n = pairs if pairs is not None else (FAST_PAIRS if fast else DEFAULT_PAIRS)
    transitions = sampler.sample(n, split, torch.Generator().manual_seed(seed + PAIR_SEED_OFFSET))
    cache = read_latent_cache(run_dir)
    return Inputs(
        run_dir,
        out_dir,
        model,
        ckpt,
        config,
        source,
        sampler,
        split,
        seed,
        fast,
        transitions,
        cache,
    )


# ---- rendering and encoding, at most once per grid point on small grids ------------------
class ImageCache:
    """``source.render`` remembering every image of a grid small enough to hold in memory."""

    def __init__(self, source: GroundTruthSource, max_bytes: int = IMAGE_CACHE_BYTES) -> None:
        self.source = source
        self.space = source.space
        per_image = math.prod(source.image_shape)
        self.images: torch.Tensor | None = None
        # a photo collection draws a different photo each time: nothing to remember
        if source.unique_images and self.space.num_values * per_image <= max_bytes:
            self.images = torch.empty(
                (self.space.num_values, *source.image_shape), dtype=torch.uint8
            )
            self.have = torch.zeros(self.space.num_values, dtype=torch.bool)

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        values = values.long().cpu()
        if self.images is None:
            return self.source.render(values)
        index = self.space.ravel(values)
        missing = index[~self.have[index]].unique()
        if missing.numel():
            self.images[missing] = self.source.render(self.space.unravel(missing))
            self.have[missing] = True
        return self.images[index]


class Representation:
    """represent(values) = encode(render(values)) flattened, memoised per grid point.

    The memo (one row per grid point) is kept when it has at most
    ``REPRESENTATION_CACHE_ELEMENTS`` entries; larger grids are encoded on every call.
    """

    def __init__(self, model: CausalImageModel, render: ImageCache) -> None:
        self.model, self.render, self.space = model, render, render.space
        self.table: torch.Tensor | None = None
        self.have: torch.Tensor | None = None
        self.sized = False

    def _encode(self, values: torch.Tensor) -> torch.Tensor:
        return encode_images(self.model, self.render(values)).flatten(1)

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        values = torch.as_tensor(values).long()
        if not self.sized:
            self.sized = True
            first = self._encode(values[:1])
            small = self.space.num_values * first.shape[1] <= REPRESENTATION_CACHE_ELEMENTS
            if small and self.render.source.unique_images:
                shape = (self.space.num_values, first.shape[1])
                self.table = torch.empty(shape, dtype=first.dtype)
                self.have = torch.zeros(self.space.num_values, dtype=torch.bool)
        if self.table is None or self.have is None:
            return self._encode(values)
        index = self.space.ravel(values)
        missing = index[~self.have[index]].unique()
        for part in chunks(len(missing), 1024):
            rows = missing[part]
            self.table[rows] = self._encode(self.space.unravel(rows))
            self.have[rows] = True
        return self.table[index]


# ---- sections -------------------------------------------------------------------------------
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


# ---- structure: graph and MIC ----------------------------------------------------------------
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
