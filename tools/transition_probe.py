"""Transition designs compared on one run's encoded pairs: which learns the codes that change.

    python tools/transition_probe.py RUN [--steps 1500] [--held-out 8000] [--threads 1]
        [--variant NAME model.transition.KEY=VALUE ...] ... [--out bench_results/probe.json]

A full stage 2 encodes its pairs, trains the classifier beside the transition and ends with an
evaluation through the decoder and the oracle (~30 CPU minutes at the default config). The
probe asks a narrower question in a few minutes: given the codes a finished ``vq`` run's
autoencoder gives x and x' (its ``cache/stage2_latents.safetensors``), how well does a causal
transition of some design learn to predict the codes of x'? It holds out the last
``--held-out`` cached pairs, then trains each variant's transition alone, from the same seed,
on the others (its losses as in stage 2: code, identity and retrieval CE; the run's stage-2
rate, batch, schedule and gradient clip), and scores the held-out pairs:

- codes right among the variables that change between x and x', and among those that do not;
- the share of changing variables whose thresholded intervention mask is on (mask recall);
- codes right among the changing variables, per factor of the pair's action.

``base`` (the run's own transition settings) always runs first; each ``--variant`` names a
set of ``model.transition.*`` overrides on top of them. The figures are code accuracies, not
atomicity: a design that wins here still has to be trained and judged with ``vqcausal
evaluate`` (README, Atomic counterfactuals), but one that does not win here will not there.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from vqcausal.benchmarking import console, write_report
from vqcausal.commandline import OneLineParser, bounded, command_main
from vqcausal.config import Config, load_config
from vqcausal.data.factors import FactorSpace
from vqcausal.errors import VQCausalError
from vqcausal.models.transition import CausalTransition
from vqcausal.runs import latest_checkpoint, model_args_from_meta, read_latent_cache
from vqcausal.schedule import lr_factor

PREFIX = "model.transition."
SCORE_CHUNK = 500  # held-out pairs scored per pass


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a finished vq run folder (its stage-2 cache is read)")
    parser.add_argument("--steps", type=bounded(1, 1_000_000), default=1500)
    parser.add_argument("--held-out", type=bounded(1, 1_000_000), default=8000)
    parser.add_argument("--threads", type=bounded(1, 1024), default=1)
    parser.add_argument("--seed", type=bounded(0, 2**31 - 1), default=0)
    parser.add_argument(
        "--variant",
        nargs="+",
        action="append",
        default=[],
        metavar=("NAME", "KEY=VALUE"),
        help="a name and model.transition.* overrides (repeatable)",
    )
    parser.add_argument("--out", default="bench_results/transition_probe.json")
    return parser


def variant_configs(run: Path, variants: list[list[str]]) -> dict[str, tuple[list[str], Config]]:
    """name -> (overrides, config) for ``base`` (the run's config) and each variant, checked
    like any ``--set``."""
    configs = {"base": ([], load_config(run / "config.toml"))}
    for name, *overrides in variants:
        if name in configs:
            raise VQCausalError(f"variant name {name!r} is used twice")
        wrong = [o for o in overrides if not o.startswith(PREFIX)]
        if wrong or not overrides:
            raise VQCausalError(f"variant {name!r}: give {PREFIX}KEY=VALUE overrides, got {wrong}")
        configs[name] = (overrides, load_config(run / "config.toml", overrides))
    return configs


def train_transition(
    config: Config, args, cache: dict[str, torch.Tensor], train: int, steps: int, seed: int
) -> tuple[CausalTransition, float]:
    """A fresh transition trained on the first ``train`` cached pairs; (model, seconds)."""
    torch.manual_seed(seed)
    cfg = config.model
    model = CausalTransition(
        args.num_variables,
        cfg.quantizer.codebook_size,
        cfg.quantizer.codebooks,
        args.num_actions,
        cfg.transition,
    )
    t = config.train
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.stage2_lr)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(steps):
        rate = lr_factor(
            t.lr_schedule, step, 0, steps, t.warmup_steps, t.lr_final, t.lr_decay_fraction
        )
        for group in optimizer.param_groups:
            group["lr"] = t.stage2_lr * rate
        idx = torch.randint(0, train, (t.stage2_batch_size,), generator=generator)
        batch = (cache["latents"][idx], cache["actions"][idx], cache["latents_next"][idx])
        loss = model.losses(*batch)["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
    return model.eval(), time.perf_counter() - start


@torch.no_grad()
def score(
    model: CausalTransition, codes: torch.Tensor, actions: torch.Tensor, nxt: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Predicted codes and thresholded masks of the true actions, in chunks."""
    parts = [
        model(c, a, hard=True)
        for c, a in zip(codes.split(SCORE_CHUNK), actions.split(SCORE_CHUNK), strict=True)
    ]
    predicted = torch.cat([p.logits[:, 0].argmax(-1) for p in parts])
    mask = torch.cat([p.mask[:, 0] for p in parts]) > model.config.mask_threshold
    return {"right": predicted == nxt, "changed": nxt != codes, "mask": mask}


def figures(scored: dict[str, torch.Tensor], actions: torch.Tensor, names: list[str]) -> dict:
    right, changed, mask = scored["right"], scored["changed"], scored["mask"]
    row = {
        "changed_right": right[changed].float().mean().item(),
        "unchanged_right": right[~changed].float().mean().item(),
        "exact": right.all(1).float().mean().item(),
        "mask_recall": mask[changed].float().mean().item(),
        "per_factor": {},
    }
    factors = FactorSpace.action_factor(actions)
    for f, name in enumerate(names[::2]):  # actions come as (f+, f-): the factor's name
        sel = (factors == f)[:, None] & changed
        if sel.any():
            row["per_factor"][name[:-1]] = right[sel].float().mean().item()
    return row


def probe(args: argparse.Namespace) -> None:
    run = Path(args.run)
    if not (run / "config.toml").is_file():
        raise VQCausalError(f"{run}: not a run folder (no config.toml)")
    configs = variant_configs(run, args.variant)
    margs = model_args_from_meta(latest_checkpoint(run).meta)
    if margs.model.latent != "vq":
        raise VQCausalError(f"{run}: the probe needs a vq run, this one is {margs.model.latent}")
    cache = read_latent_cache(run)
    if cache is None:
        raise VQCausalError(f"{run}: no stage-2 cache (cache/stage2_latents.safetensors)")
    cache = {k: v.long() for k, v in cache.items()}
    train = len(cache["actions"]) - args.held_out
    if train < 1:
        pairs = train + args.held_out
        raise VQCausalError(f"--held-out {args.held_out} leaves no training pairs of {pairs}")
    torch.set_num_threads(args.threads)
    held = {k: v[train:] for k, v in cache.items()}
    results = []
    for name, (overrides, config) in configs.items():
        model, seconds = train_transition(config, margs, cache, train, args.steps, args.seed)
        scored = score(model, held["latents"], held["actions"], held["latents_next"])
        row = {"variant": name, "overrides": overrides, "seconds": round(seconds, 1)}
        row |= figures(scored, held["actions"], margs.action_names)
        row["parameters"] = sum(p.numel() for p in model.parameters())
        results.append(row)
        console().print(
            f"{name}: changed codes right {row['changed_right']:.3f}, unchanged "
            f"{row['unchanged_right']:.3f}, mask recall {row['mask_recall']:.3f} ({seconds:.0f} s)"
        )
    print_table(results)
    settings = {"run": str(run), "steps": args.steps, "held_out": args.held_out, "seed": args.seed}
    write_report(args.out, "transition_probe", settings, results)


def print_table(results: list[dict]) -> None:
    from rich.table import Table

    factors = list(results[0]["per_factor"])
    table = Table(title="held-out pairs: codes right (changed / unchanged), per factor changed")
    for column in ["variant", "changed", "unchanged", "exact", "mask recall", *factors, "s"]:
        table.add_column(column, justify="left" if column == "variant" else "right")
    for r in results:
        cells = [r["changed_right"], r["unchanged_right"], r["exact"], r["mask_recall"]]
        cells += [r["per_factor"].get(f, float("nan")) for f in factors]
        table.add_row(r["variant"], *(f"{v:.3f}" for v in cells), f"{r['seconds']:.0f}")
    console().print(table)


def main(argv: list[str] | None = None) -> int:
    return command_main(build_parser, probe, argv)


if __name__ == "__main__":
    raise SystemExit(main())
