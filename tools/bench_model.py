"""Model throughput and peak memory at the official CT-VAE setting and at our default config.

    python tools/bench_model.py [--settings official default] [--repeats 5] [--out FILE.json]
    python tools/bench_model.py --device cuda --precision bf16 --batch 256   # on a GPU

Each measurement runs in a fresh subprocess, so its peak memory (max RSS, whole process,
torch included) is its own. Rates are medians of ``--repeats`` timed runs after a warm-up.

Official setting: the official CT-VAE Shapes3D model layer for layer
where ours allows (``vqcausal.benchmarking.SETTINGS``): 64x64 RGB, encoder widths 64-128-256
-> 8x8 grid, 6 residual layers each side, 3x3 encoder convs, 64 codes, D = 128, 12 actions,
batch 16; each row prints the parameters of each part. ``stage2_train`` is our real stage-2
cost (cached codes); ``stage2_train_e2e`` also encodes x and x' as the official step does.
Targets on the 2-core CPU: transition-stage
training >= 15 samples/s, retrieval >= 25 pairs/s from images and >= 1,000 pairs/s from
cached codes, peak memory <= 1 GB.

On a GPU (``--device cuda``) every timed call ends with a device synchronisation, peak memory
is the allocator's peak on the device, ``--precision bf16`` runs under bf16 autocast (the
quantizer stays in fp32), and ``retrieve_codes_compiled`` uses torch.compile as on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vqcausal.benchmarking import (
    SETTINGS,
    console,
    measure,
    median_rate,
    parameter_counts,
    parameters_text,
    peak_memory_mb,
    rates_table,
    setting_config,
    spread,
    write_report,
)
from vqcausal.commandline import OneLineParser, bounded

BENCHES = {
    "stage1_train": ("images/s", "VQ-VAE step (encode, quantize, decode, backward)"),
    "stage2_train": ("samples/s", "transition + classifier step on cached codes (our real cost)"),
    "stage2_train_e2e": (
        "samples/s",
        "the same step encoding x and x' first (frozen encoder): what the official step computes",
    ),
    "retrieve_codes": ("pairs/s", "analysis-by-synthesis over all actions, from codes"),
    "retrieve_codes_compiled": ("pairs/s", "the same with torch.compile (compile time excluded)"),
    "retrieve_images": ("pairs/s", "encode x and x', then retrieve"),
    "intervene": ("images/s", "encode, one action, decode"),
}
TARGETS = {
    "stage2_train": 15,
    "stage2_train_e2e": 15,
    "retrieve_codes": 1000,
    "retrieve_codes_compiled": 1000,
    "retrieve_images": 25,
}


def worker(
    bench: str,
    setting: str,
    batch: int,
    repeats: int,
    device: str = "cpu",
    precision: str = "fp32",
    threads: int | None = None,
    compile_backend: str = "inductor",
) -> dict:
    """One measurement in this process; returns its rate and the process's peak memory."""
    from vqcausal.models.base import ModelArgs
    from vqcausal.models.build import build_model

    if threads:
        torch.set_num_threads(threads)

    config = setting_config(setting)
    actions = [f"a{i}" for i in range(12)]
    torch.manual_seed(0)
    model = build_model(ModelArgs([3, 64, 64], actions, config.model)).to(device)
    n, k = model.args.num_variables, config.model.quantizer.codebook_size
    x, x_next = (torch.rand(batch, 3, 64, 64, device=device) for _ in range(2))
    codes, codes_next = (torch.randint(k, (batch, n), device=device) for _ in range(2))
    action = torch.randint(12, (batch,), device=device)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16")

    def synced(fn: Callable[[], int]) -> Callable[[], int]:
        if device == "cpu":
            return fn

        def run() -> int:
            count = fn()
            torch.cuda.synchronize()
            return count

        return run

    def train_step(objective: torch.nn.Module, batch: dict, count: int) -> Callable[[], int]:
        optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad])

        def step() -> int:
            with autocast:
                loss = objective(batch)[0]["total"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return count

        return step

    if bench == "stage1_train":
        model.train()
        fn = train_step(model.stage1_objective(), {"x": x}, batch)
    elif bench in ("stage2_train", "stage2_train_e2e"):
        model.train()
        for module in model.stage1_modules():
            module.eval()
            module.requires_grad_(False)
        pairs = {"latents": codes, "actions": action, "latents_next": codes_next}
        step = train_step(model.stage2_objective(), pairs, batch)
        fn = step
        if bench == "stage2_train_e2e":

            def fn() -> int:
                with torch.no_grad():
                    pairs["latents"], pairs["latents_next"] = model.encode(x), model.encode(x_next)
                return step()

    elif bench == "retrieve_codes_compiled":
        model.eval()
        score = torch.compile(model.transition.score_actions, backend=compile_backend)

        def fn() -> int:
            with torch.no_grad(), autocast:
                return score(codes, codes_next).softmax(-1).shape[0]

    else:
        model.eval()

        # retrieval from images as `vqcausal retrieve` does it: encoded in fp32 whatever the
        # precision, the actions scored under autocast
        scoring = "bf16" if precision == "bf16" else "fp32"
        fns = {
            "retrieve_codes": lambda: model.retrieve_from_latents(codes, codes_next).shape[0],
            "retrieve_images": lambda: model.retrieve(x, x_next, precision=scoring).shape[0],
            "intervene": lambda: model.intervene(x, action).shape[0],
        }

        def fn() -> int:
            with autocast:
                return fns[bench]()

    rate, runs = median_rate(synced(fn), repeats)
    return {
        "rate": rate,
        "runs": runs,
        **spread(runs),
        "peak_mb": peak_memory_mb(device),
        "variables": n,
        "threads": torch.get_num_threads(),
        "parameters": parameters_text(parameter_counts(model)),
    }


def run(
    settings: list[str],
    benches: list[str],
    batch: int,
    repeats: int,
    device: str = "cpu",
    precision: str = "fp32",
    isolate: bool = True,
    threads: int | None = None,
    compile_backend: str = "inductor",
) -> list[dict]:
    """Every bench at every setting, each in a fresh process (``isolate``) for its peak memory.

    ``threads`` (default: torch's, one per core) caps intra-op threads; ``compile_backend``
    "aot_eager" traces without generating code (a cold inductor compile takes ~30 s on CPU).
    """
    calls = [
        {"bench": bench, "setting": setting, "batch": batch, "repeats": repeats}
        | {"device": device, "precision": precision, "threads": threads}
        | {"compile_backend": compile_backend}
        for setting in settings
        for bench in benches
    ]
    units = {name: unit for name, (unit, _) in BENCHES.items()}
    return measure(__file__, calls, units, TARGETS, device == "cpu", isolate)


def main() -> None:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--benches", nargs="+", default=list(BENCHES), choices=list(BENCHES))
    parser.add_argument("--batch", type=bounded(1, 65_536), default=16)
    parser.add_argument("--repeats", type=bounded(1, 1000), default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--out", default="bench_results/bench_model.json")
    args = parser.parse_args()

    rows = run(args.settings, args.benches, args.batch, args.repeats, args.device, args.precision)
    title = (
        f"model benchmarks: {args.device} {args.precision}, batch {args.batch}, "
        f"median of {args.repeats}"
    )
    console().print(rates_table(rows, title))
    settings = {"batch": args.batch, "repeats": args.repeats, "device": args.device}
    settings["precision"] = args.precision
    settings["descriptions"] = {k: v[1] for k, v in BENCHES.items()}
    write_report(args.out, "model", settings, rows)


if __name__ == "__main__":
    main()
