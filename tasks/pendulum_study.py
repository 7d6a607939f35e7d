"""Pendulum study: does a latent recover the pendulum's causal graph and concepts?

Trains each latent module on the pendulum scene (procedural by default, a CausalVAE pendulum
folder with ``--data-dir``) with the ordinary training code, then reports, per latent:

* SHD: structural Hamming distance of the learned, thresholded graph to the true DAG
  (pendulum angle, light angle -> shadow length, shadow position); ``scm`` only, the other
  latents have no concept graph;
* alignment: MIC / TIC of each concept against its label (``scm``: concept block i vs label i;
  the others: each label vs its best-matching latent dimension, a post-hoc alignment);
* held-out retrieval accuracy, reconstruction and counterfactual PSNR (the run's summary);
* a do-grid PNG: ``scm`` rows = do(concept_i = v) for v over +-2 label std, the others rows =
  actions applied 1..6 times.

Runs are resumable: a finished latent is skipped, an unfinished one resumed. Output in
``--out`` (default ``runs/pendulum_study``): ``study.json``, ``study.md``, ``do_grid_*.png``.

    python tasks/pendulum_study.py                       # scm, gaussian, ladder, vq; CPU ~40 min
    python tasks/pendulum_study.py --latents scm         # the CausalVAE latent only, ~10 min
    python tasks/pendulum_study.py --data-dir ~/causal_data/pendulum
    python tasks/pendulum_study.py --set train.stage1_steps=20000   # longer (GPU)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from scipy.stats import spearmanr

from vqcausal.cli import add_set_arg
from vqcausal.cli import run as run_cli
from vqcausal.data.registry import load_source
from vqcausal.data.source import GroundTruthSource, to_float
from vqcausal.data.transitions import TransitionSampler
from vqcausal.errors import VQCausalError
from vqcausal.eval.mic import mic, mic_per_concept
from vqcausal.eval.structure import edge_counts, shd
from vqcausal.models.base import LATENTS, CausalImageModel
from vqcausal.train import run as train_run
from vqcausal.train.checkpoint import (
    CheckpointError,
    config_from_meta,
    latest_checkpoint,
    load_model_from_run,
)
from vqcausal.train.evaluation import intervention_grid
from vqcausal.viz import labelled_rows, save_png

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "pendulum_scm.toml"
ALIGNMENT_POINTS = 1000
DO_VALUES = torch.linspace(-2.0, 2.0, 7)


def find_run(out: Path, latent: str) -> Path | None:
    """The newest run folder of this latent under ``out`` with a checkpoint, if any."""
    runs = []
    for folder in out.glob(f"{latent}-*"):
        try:
            runs.append((latest_checkpoint(folder).meta["saved_at"], folder))
        except CheckpointError:
            continue
    return max(runs)[1] if runs else None


def train(out: Path, latent: str, data_dir: str | None, overrides: list[str]) -> Path:
    """Train (or resume, or skip when finished) one latent; returns its run folder."""
    found = find_run(out, latent)
    if found is not None and latest_checkpoint(found).finished:
        print(f"{latent}: finished run {found}, skipped")
        return found
    if found is not None:
        argv = ["--resume", str(found)]
    else:
        sets = [f'model.latent="{latent}"', f'runs="{out}"', f'name="{latent}"', *overrides]
        if data_dir is not None:
            sets.append(f'data.path="{data_dir}"')
        argv = ["--config", str(CONFIG)] + [a for s in sets for a in ("--set", s)]
    code = train_run.main(argv)
    if code != 0:
        raise VQCausalError(f"{latent}: training failed (exit {code})")
    found = find_run(out, latent)
    assert found is not None
    return found


@torch.no_grad()
def test_latents(
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
    latents, labels, x = test_latents(model, source, sampler, ALIGNMENT_POINTS)
    summary = json.loads((run_dir / "summary.json").read_text())
    result = {
        "latent": latent,
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
    save_png(labelled_rows(rows, names), out / f"do_grid_{latent}.png")
    return result


def markdown(results: list[dict], concept_names: list[str]) -> str:
    def fmt(v: float | None, digits: int = 3) -> str:
        return "n/a" if v is None else f"{v:.{digits}f}"

    head = (
        "| latent | SHD | MIC mean | TIC mean | rank corr. mean | "
        + " | ".join(f"MIC {c}" for c in concept_names)
        + " | retrieval (synthesis) | retrieval (classifier) | recon PSNR | CF PSNR |"
    )
    lines = [head, "|" + "---|" * (9 + len(concept_names))]
    for r in results:
        a = r["alignment"]
        lines.append(
            f"| {r['latent']} | {r.get('shd', 'n/a')} | {fmt(a['mic_mean'])} | "
            f"{fmt(a['tic_mean'])} | {fmt(a['spearman_mean'])} | "
            + " | ".join(fmt(v) for v in a["mic"])
            + f" | {fmt(r['retrieval_synthesis'])} | {fmt(r['retrieval_classifier'])} | "
            f"{fmt(r['recon_psnr'], 1)} | {fmt(r['counterfactual_psnr'], 1)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latents", nargs="+", default=list(LATENTS), choices=list(LATENTS))
    parser.add_argument("--data-dir", help="a CausalVAE pendulum folder (default: procedural)")
    parser.add_argument("--out", default="runs/pendulum_study", help="study folder")
    add_set_arg(parser, "train.stage1_steps=20000")
    args = parser.parse_args(argv)

    def work() -> None:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        results = []
        for latent in args.latents:
            run_dir = train(out, latent, args.data_dir, args.overrides)
            results.append(study_one(run_dir, out))
        source_names = load_source(
            config_from_meta(latest_checkpoint(run_dir).meta).data
        ).concept_names
        (out / "study.json").write_text(json.dumps(results, indent=2))
        table = markdown(results, source_names)
        (out / "study.md").write_text(table)
        print(table)

    return run_cli(work)


if __name__ == "__main__":
    sys.exit(main())
