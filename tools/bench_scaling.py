"""Retrieval cost vs the number of actions A and of code variables N (the scaling curve).

    python tools/bench_scaling.py [--device cpu|cuda] [--batch 16] [--repeats 5] [--out FILE]

Analysis-by-synthesis retrieval from cached codes scores every action for every pair: one
batched pass over B*A slots of N variables, so its work is O(B * A * N * hidden) (the graph
is factorised: O(B * N^2) memory for the attention scores, never O(B * N^2 * D)). The table
reports pairs/s and pairs*actions/s (flat when the cost is linear in A) at the official
CT-VAE setting, varying A in 4..40 at N = 64 and N in 16..256 (image 32..128 px) at A = 12.
"""

from __future__ import annotations

import torch
from rich.console import Console
from rich.table import Table

from vqcausal.benchmarking import median_rate, setting_config, spread, write_report
from vqcausal.commandline import OneLineParser, bounded
from vqcausal.models.base import ModelArgs
from vqcausal.models.build import build_model

ACTIONS = (4, 8, 12, 20, 40)
IMAGE_SIZES = (32, 64, 128)  # -> N = 16, 64, 256 variables with three stride-2 stages


def retrieval_rate(
    size: int, num_actions: int, batch: int, repeats: int, device: str
) -> tuple[float, list[float], int]:
    """Median pairs/s of retrieval from random codes, its timed runs and the number N."""
    config = setting_config("official")
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

    rate, runs = median_rate(fn, repeats)
    return rate, runs, n


def run(
    device: str,
    batch: int,
    repeats: int,
    actions: tuple[int, ...] = ACTIONS,
    image_sizes: tuple[int, ...] = IMAGE_SIZES,
) -> list[dict]:
    """The scaling curve: every A at 64x64 (N = 64), every image size (N) at A = 12."""
    grid = [(64, a) for a in actions] + [(s, 12) for s in image_sizes if s != 64]
    rows = []
    for size, num_actions in grid:
        rate, runs, n = retrieval_rate(size, num_actions, batch, repeats, device)
        row = {"image": size, "variables": n, "actions": num_actions, "pairs_per_s": rate}
        row["slots_per_s"] = rate * num_actions  # flat in A when the cost is linear in A
        row["variable_slots_per_s"] = rate * num_actions * n  # flat in N when linear in N
        rows.append(row | {"runs": runs, **spread(runs)})
    rows.sort(key=lambda r: (r["variables"], r["actions"]))
    return rows


def scaling_table(rows: list[dict], title: str) -> Table:
    """Pairs/s and the per-slot rates that stay flat when the cost is linear in A and N."""
    columns = ("N variables", "A actions", "pairs/s", "min - max", "pairs*A/s", "pairs*A*N/s")
    table = Table(*columns, title=title)
    for r in rows:
        table.add_row(
            str(r["variables"]),
            str(r["actions"]),
            f"{r['pairs_per_s']:,.1f}",
            f"{r['min']:,.1f} - {r['max']:,.1f}",
            f"{r['slots_per_s']:,.0f}",
            f"{r['variable_slots_per_s']:,.0f}",
        )
    return table


def main() -> None:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=bounded(1, 65_536), default=16)
    parser.add_argument("--repeats", type=bounded(1, 1000), default=5)
    parser.add_argument("--out", default="bench_results/bench_scaling.json")
    args = parser.parse_args()

    rows = run(args.device, args.batch, args.repeats)
    title = f"retrieval scaling: {args.device}, batch {args.batch}, median of {args.repeats}"
    Console().print(scaling_table(rows, title))
    settings = {"batch": args.batch, "repeats": args.repeats, "device": args.device}
    write_report(args.out, "scaling", settings, rows)


if __name__ == "__main__":
    main()
