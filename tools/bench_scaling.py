"""Retrieval cost vs the number of actions A and of code variables N (the scaling curve).

    python tools/bench_scaling.py [--device cpu|cuda] [--batch 16] [--repeats 5] [--out FILE]

Analysis-by-synthesis retrieval from cached codes scores every action for every pair: one
batched pass over B*A slots of N variables, so its work is O(B * A * N * hidden) (the graph
is factorised: O(B * N^2) memory for the attention scores, never O(B * N^2 * D)). The table
reports pairs/s and pairs*actions/s (flat when the cost is linear in A) at the official
CT-VAE setting, varying A in 4..40 at N = 64 and N in 16..256 (image 32..128 px) at A = 12.
"""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.table import Table

from vqcausal.benchmarking import median_rate, write_report
from vqcausal.config import load_config
from vqcausal.models.base import ModelArgs, build_model

OFFICIAL = [
    "model.autoencoder.widths=[64, 128, 256]",
    "model.autoencoder.residual_layers=2",
    "model.autoencoder.embed_dim=128",
    "model.quantizer.codebook_size=64",
    "model.quantizer.codebooks=1",
]
ACTIONS = (4, 8, 12, 20, 40)
IMAGE_SIZES = (32, 64, 128)  # -> N = 16, 64, 256 variables with three stride-2 stages


def retrieval_rate(
    size: int, num_actions: int, batch: int, repeats: int, device: str
) -> tuple[float, int]:
    """Median pairs/s of retrieval from random codes, and the number of variables N."""
    config = load_config("configs/shapes3d.toml", OFFICIAL)
    torch.manual_seed(0)
    names = [f"a{i}" for i in range(num_actions)]
    model = build_model(ModelArgs([3, size, size], names, config.model)).to(device).eval()
    n, k = model.args.num_variables, config.model.quantizer.codebook_size
    codes, codes_next = (torch.randint(k, (batch, n), device=device) for _ in range(2))

    def fn() -> int:
        out = model.retrieve_from_latents(codes, codes_next)
        if device != "cpu":
            torch.cuda.synchronize()
        return out.shape[0]

    rate, _ = median_rate(fn, repeats)
    return rate, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="bench_results/bench_scaling.json")
    args = parser.parse_args()

    grid = [(64, a) for a in ACTIONS] + [(s, 12) for s in IMAGE_SIZES if s != 64]
    rows = []
    for size, actions in grid:
        rate, n = retrieval_rate(size, actions, args.batch, args.repeats, args.device)
        rows.append({"image": size, "variables": n, "actions": actions, "pairs_per_s": rate})
        rows[-1]["slots_per_s"] = rate * actions  # flat in A when the cost is linear in A
        rows[-1]["variable_slots_per_s"] = rate * actions * n  # flat in N when linear in N
    rows.sort(key=lambda r: (r["variables"], r["actions"]))

    table = Table(
        "N variables",
        "A actions",
        "pairs/s",
        "pairs*A/s",
        "pairs*A*N/s",
        title=f"retrieval scaling: {args.device}, batch {args.batch}, median of {args.repeats}",
    )
    for r in rows:
        table.add_row(
            str(r["variables"]),
            str(r["actions"]),
            f"{r['pairs_per_s']:,.1f}",
            f"{r['slots_per_s']:,.0f}",
            f"{r['variable_slots_per_s']:,.0f}",
        )
    Console().print(table)
    settings = {"batch": args.batch, "repeats": args.repeats, "device": args.device}
    write_report(args.out, "scaling", settings, rows)


if __name__ == "__main__":
    main()
