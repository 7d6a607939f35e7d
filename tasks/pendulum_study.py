"""Pendulum study: does a latent recover the pendulum's causal graph and concepts?

Trains each latent module on the pendulum scene (procedural by default, a CausalVAE pendulum
folder with ``--path``) with the ordinary training code, then reports, per latent:

* SHD: structural Hamming distance of the learned, thresholded graph to the true DAG
  (pendulum angle, light angle -> shadow length, shadow position); ``scm`` only, the other
  latents have no concept graph;
* alignment: MIC / TIC of each concept against its label (``scm``: concept block i vs label i;
  the others: each label vs its best-matching latent dimension, a post-hoc alignment);
* held-out retrieval accuracy, reconstruction and counterfactual PSNR (the run's summary);
* a do-grid PNG: ``scm`` rows = do(concept_i = v) for v over +-2 label std, the others rows =
  actions applied 1..6 times.

The runs are a sweep's cells (``pendulum-<latent>-default-s<seed>``, each trained and put
through ``vqcausal evaluate --fast`` on Ray, :mod:`vqcausal.sweep`), so a re-run skips finished
cells and resumes stopped ones, ``--jobs`` trains several at once and ``--address`` sends them
to a Ray cluster. Output in ``--out`` (default ``runs/pendulum_study``; one folder per data
setting): ``study.json``, ``study.md`` (mean ± std over ``--seeds``, beside CausalVAE's
published MIC / TIC), ``do_grid_<latent>_s<seed>.png``.

    python tasks/pendulum_study.py                       # scm, gaussian, ladder, vq; CPU ~40 min
    python tasks/pendulum_study.py --latents scm         # the CausalVAE latent only, ~10 min
    python tasks/pendulum_study.py --latents scm --seeds 0 1 2 --set data.stride=1 \\
        --out runs/pendulum_stride1                      # the real folder's grid, 3 seeds
    python tasks/pendulum_study.py --path ~/causal_data/pendulum
    python tasks/pendulum_study.py --set train.stage1_steps=20000   # longer (GPU)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

from vqcausal.atomic import write_text_atomic
from vqcausal.commandline import SEED, OneLineParser, add_set_arg, command_main
from vqcausal.data.registry import load_source
from vqcausal.data.source import GroundTruthSource, to_float
from vqcausal.data.transitions import TransitionSampler
from vqcausal.eval.grids import intervention_grid
from vqcausal.eval.mic import mic, mic_per_concept
from vqcausal.eval.structure import edge_counts, shd
from vqcausal.models.base import LATENTS, CausalImageModel
from vqcausal.runs import (
    config_from_meta,
    latest_checkpoint,
    load_model_from_run,
)
from vqcausal.sweep.command import add_engine_args, engine_options, finish
from vqcausal.sweep.engine import run_sweep
from vqcausal.sweep.plan import default_cells
from vqcausal.sweep.results import evaluated_metrics
from vqcausal.viz import labelled_rows, save_png

ALIGNMENT_POINTS = 1000
DO_VALUES = torch.linspace(-2.0, 2.0, 7)


@torch.no_grad()
def held_out_latents(
    model: CausalImageModel, source: GroundTruthSource, sampler: TransitionSampler, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(latents, concept labels, uint8 images) of ``n`` held-out source images."""
    t = sampler.sample(n, "test", torch.Generator().manual_seed(0))
    x, _ = sampler.images(t)
    latents = torch.cat([model.encode(to_float(x[i : i + 256])) for i in range(0, n, 256)])
    return latents, source.concepts(t.values), x


def alignment(model: CausalImageModel, latents: torch.Tensor, labels: torch.Tensor) -> dict:
    """Per concept: MIC / TIC and |Spearman rho| of its latent against its label.

    The latent of concept i is block i (its mean) for ``scm``, else the latent dimension with
    the highest MIC (post-hoc alignment). MIC saturates near 1 for any functional relation on
    the pendulum's small grid, even for an untrained encoder; the rank correlation says
    whether the latent moves *monotonically* with its label, as a concept variable should.
    """
    flat = latents.float().flatten(1).numpy()
    if model.args.model.latent == "scm":
        k = model.args.model.scm.concept_dim
        columns = flat.reshape(len(flat), -1, k)[:, : labels.shape[1]].mean(-1)
        extra: dict = {}
    else:
        varying = [d for d in range(flat.shape[1]) if flat[:, d].std() > 0]
        best = []
        for c in range(labels.shape[1]):
            scores = [(mic(flat[:, d], labels[:, c].numpy()), d) for d in varying] or [(0.0, 0)]
            best.append(max(scores)[1])
        columns, extra = flat[:, best], {"dims": best}
    result = mic_per_concept(columns, labels.numpy())
    rho = [float(spearmanr(columns[:, c], labels[:, c]).statistic) for c in range(columns.shape[1])]
    rho = [0.0 if math.isnan(r) else abs(r) for r in rho]
    return result | extra | {"spearman": rho, "spearman_mean": sum(rho) / len(rho)}


@torch.no_grad()
def do_grid(model: CausalImageModel, x: torch.Tensor, concept_names: list[str]):
    """``scm``: rows = do(concept_i = v), v over DO_VALUES; others: the intervention grid."""
    if model.args.model.latent != "scm":
        return intervention_grid(model, x, steps=6)
    latent = model.latent
    z = model.encode(to_float(x[:1]))
    rows, labels = [], []
    for i in range(latent.concepts):
        values = DO_VALUES.to(z.dtype)
        moved = latent.do(z.expand(len(values), -1), i, values)
        rows.append(torch.cat([to_float(x[:1]), model.decode_latent(moved)]))
        labels.append(f"do({concept_names[i]})")
    return rows, labels


def study_one(run_dir: Path, out: Path) -> dict:
    model, ckpt = load_model_from_run(run_dir)
    config = config_from_meta(ckpt.meta)
    source = load_source(config.data)
    sampler = TransitionSampler(source, config.transitions)
    latent = model.args.model.latent
    latents, labels, x = held_out_latents(model, source, sampler, ALIGNMENT_POINTS)
    summary = json.loads((run_dir / "summary.json").read_text())
    result = {
        "latent": latent,
        "seed": config.seed,
        "stride": config.data.stride,
        "run": str(run_dir),
        "step": ckpt.step,
        "alignment": alignment(model, latents, labels),
        "retrieval_synthesis": summary.get("retrieval_synthesis_accuracy"),
        "retrieval_classifier": summary.get("retrieval_classifier_accuracy"),
        "recon_psnr": summary.get("recon_psnr"),
        "counterfactual_psnr": summary.get("counterfactual_psnr"),
    }
    true_dag = source.true_dag
    if latent == "scm" and true_dag is not None:
        graph = model.latent.learned_graph()
        result["shd"] = shd(graph, true_dag)
        result["edges"] = edge_counts(graph, true_dag)
        result["graph"] = graph.tolist()
        result["edge_strength"] = model.latent.edge_strength().tolist()
    rows, names = do_grid(model, x, source.concept_names)
    save_png(labelled_rows(rows, names), out / f"do_grid_{latent}_s{config.seed}.png")
    return result


#: CausalVAE's pendulum figures (Yang et al. 2021, Table 1: MIC / TIC in %, mean ± std)
PUBLISHED = [
    ("CausalVAE (published)", "96.3 ± 3.6", "89.0 ± 2.9"),
    ("beta-VAE (published)", "22.6", "12.5"),
    ("Ladder VAE (published)", "22.4", "12.8"),
]


def mean_std(values: list[float | None], digits: int = 3) -> str:
    """``mean ± std`` over seeds (population std; the value alone for one seed)."""
    kept = [v for v in values if v is not None]
    if not kept:
        return "n/a"
    mean = sum(kept) / len(kept)
    if len(kept) == 1:
        return f"{mean:.{digits}f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in kept) / len(kept))
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown(results: list[dict], concept_names: list[str]) -> str:
    """One row per latent, mean ± std over its seeds (SHD per seed), then the published
    figures; MIC and TIC in %, as the paper prints them."""
    head = (
        "| latent | seeds | SHD per seed | MIC mean (%) | TIC mean (%) | rank corr. mean | "
        + " | ".join(f"MIC {c} (%)" for c in concept_names)
        + " | retrieval (synthesis) | retrieval (classifier) | recon PSNR | CF PSNR |"
    )
    lines = [head, "|" + "---|" * (10 + len(concept_names))]
    latents = list(dict.fromkeys(r["latent"] for r in results))
    for latent in latents:
        rows = [r for r in results if r["latent"] == latent]

        def col(key: str, rows: list[dict] = rows) -> list[float | None]:
            return [r[key] for r in rows]

        def pct(key: str, rows: list[dict] = rows) -> str:
            return mean_std([100 * r["alignment"][key] for r in rows], 1)

        mic = [mean_std([100 * r["alignment"]["mic"][c] for r in rows], 1)
               for c in range(len(concept_names))]  # fmt: skip
        shds = ", ".join(str(r.get("shd", "n/a")) for r in rows)
        lines.append(
            f"| {latent} | {len(rows)} | {shds} | {pct('mic_mean')} | {pct('tic_mean')} | "
            f"{mean_std([r['alignment']['spearman_mean'] for r in rows])} | "
            + " | ".join(mic)
            + f" | {mean_std(col('retrieval_synthesis'))} | {mean_std(col('retrieval_classifier'))}"
            f" | {mean_std(col('recon_psnr'), 1)} | {mean_std(col('counterfactual_psnr'), 1)} |"
        )
    blank = " | ".join("" for _ in concept_names)
    for name, mic_mean, tic_mean in PUBLISHED:
        lines.append(f"| {name} | | | {mic_mean} | {tic_mean} | | {blank} | | | | |")
    return "\n".join(lines) + "\n"


#: evaluate's options for a study cell (its own figures come from the study)
EVALUATE_ARGS = ("--fast", "--pairs", "1024", "--no-disentanglement")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="pendulum_study.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--latents", nargs="+", default=list(LATENTS), choices=list(LATENTS))
    parser.add_argument("--path", help="a CausalVAE pendulum folder (default: procedural)")
    parser.add_argument("--out", default="runs/pendulum_study", help="study folder")
    parser.add_argument("--seeds", nargs="+", type=SEED, default=[0], help="one run per seed")
    add_engine_args(parser)
    add_set_arg(parser, "train.stage1_steps=20000")
    return parser


def study(args: argparse.Namespace) -> None:
    start = time.monotonic()
    overrides = list(args.overrides)
    if args.path is not None:
        overrides.append(f"data.path={json.dumps(args.path)}")
    cells = default_cells("full", ["pendulum"], args.latents, args.seeds, overrides)
    out = Path(args.out)
    outcomes = run_sweep(cells, out, engine_options(args, 1, EVALUATE_ARGS))
    results = [study_one(run_dir, out) for _, run_dir, _ in evaluated_metrics(out, cells)]
    if results:
        source = load_source(config_from_meta(latest_checkpoint(results[0]["run"]).meta).data)
        write_text_atomic(out / "study.json", json.dumps(results, indent=2))
        table = markdown(results, source.concept_names)
        write_text_atomic(out / "study.md", table)
        print(table)
    finish(outcomes, start)


def main(argv: list[str] | None = None) -> int:
    """Run it; 0 on success, 2 on bad input or failed runs, 130 on Ctrl-C."""
    return command_main(build_parser, study, argv)


if __name__ == "__main__":
    sys.exit(main())
