"""How long a config's training run takes on this machine, projected from short timed parts.

    python tools/bench_train_time.py                          # configs/shapes3d.toml, all cores
    python tools/bench_train_time.py --config configs/sprites.toml --set train.stage2_steps=4000
    python tools/bench_train_time.py --threads 1 --out bench_results/train_time-1t.json

A run's minutes depend on the machine as much as on its config: two 2-core AMD EPYCs, one with
AVX-512 and one with AVX2 only, ran the default stage 1 at 10.5 and 4.1 steps/s. Rather than
train for half an hour to find out, this times each part of a run with the training code
itself (``Trainer``, on a run folder in a temporary directory that is removed afterwards):

* setup: the model built and the held-out evaluation pairs rendered;
* ``--steps1`` stage-1 steps and ``--steps2`` stage-2 steps, each after ``--warmup`` untimed
  ones (the first steps allocate buffers and optimizer state);
* the encoding of ``--pairs`` stage-2 training pairs (the run encodes ``train.cache_pairs``);
* one in-training evaluation of each stage (the run evaluates every ``train.eval_every`` steps
  and once at its end);

and projects the config's run from the measured rates: training (setup, steps, encoding), its
in-training evaluations, and the final one. Checkpoints (every ``train.checkpoint_every``
steps, a fraction of a second each) and the rendering of images for stage 1, which is part of
its step, are inside the step rates or left out. The projection is as good as the machine is
quiet: the JSON keeps the load average beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from rich.table import Table

from vqcausal.benchmarking import console, write_report
from vqcausal.commandline import OneLineParser, add_set_arg, bounded, command_main
from vqcausal.config import DEFAULT_EXPERIMENT, Config, load_config


def evaluations_per_stage(stage1_steps: int, stage2_steps: int, every: int) -> tuple[int, int]:
    """In-training evaluations of a run in stage 1 and in stage 2, its final one included:
    one at every multiple of ``every`` (in the stage whose loop reaches it) and one at the end
    unless the last step was an evaluation step (``Trainer.final_evaluation``)."""
    total = stage1_steps + stage2_steps
    first, second = stage1_steps // every, total // every - stage1_steps // every
    if total % every:
        if stage2_steps:
            second += 1
        else:
            first += 1
    return first, second


def projection(config: Config, parts: dict[str, float]) -> dict[str, float]:
    """The run's minutes from the measured parts (seconds, and rates per second)."""
    train = config.train
    evals1, evals2 = evaluations_per_stage(train.stage1_steps, train.stage2_steps, train.eval_every)
    seconds = {
        "setup": parts["setup_s"],
        "stage 1 steps": train.stage1_steps / parts["stage1_steps_per_s"],
        "stage-2 pair encoding": (
            train.cache_pairs / parts["encode_pairs_per_s"] if train.stage2_steps else 0.0
        ),
        "stage 2 steps": (
            train.stage2_steps / parts["stage2_steps_per_s"] if train.stage2_steps else 0.0
        ),
        "stage 1 evaluations": evals1 * parts["stage1_eval_s"],
        "stage 2 evaluations": evals2 * parts["stage2_eval_s"],
    }
    minutes = {k: v / 60 for k, v in seconds.items()}
    training = ("setup", "stage 1 steps", "stage-2 pair encoding", "stage 2 steps")
    minutes["training"] = sum(minutes[k] for k in training)
    minutes["evaluations"] = minutes["stage 1 evaluations"] + minutes["stage 2 evaluations"]
    minutes["total"] = minutes["training"] + minutes["evaluations"]
    return minutes


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@contextlib.contextmanager
def probe_trainer(config_path: Path, overrides: list[str]) -> Iterator[tuple[object, float]]:
    """A Trainer of the config on a throw-away run folder (no trackers, no in-training
    evaluations: they are timed apart), and the seconds its setup took."""
    from vqcausal.train.loop import Trainer
    from vqcausal.train.run import build_parser, build_training

    with tempfile.TemporaryDirectory() as tmp:
        sets = [*overrides, f'runs="{tmp}"', 'train.log_with="none"', "train.eval_every=1000000000"]
        argv = ["--config", str(config_path), *(x for s in sets for x in ("--set", s))]
        start = time.perf_counter()
        config, source, model, run_dir, accelerator, resume = build_training(
            build_parser().parse_args(argv)
        )
        trainer = Trainer(config, source, model, run_dir, accelerator, resume)
        yield trainer, time.perf_counter() - start


def measure_parts(
    config_path: Path, overrides: list[str], steps1: int, steps2: int, warmup: int, pairs: int
) -> dict[str, float]:
    """Seconds and rates of each part of a run (see the module docstring)."""
    with probe_trainer(config_path, overrides) as (trainer, setup):
        train = trainer.train  # the probe's own copy: its step counts are moved stage by stage
        train.stage2_steps, train.cache_pairs = 0, pairs
        train.stage1_steps = warmup
        trainer.stage1()
        train.stage1_steps = warmup + steps1
        stage1 = timed(trainer.stage1)
        stage1_eval = timed(lambda: trainer.evaluate_now(1))
        encode = timed(trainer.latent_cache)  # stage2() reads the cache it writes
        train.stage2_steps = warmup
        trainer.stage2()
        train.stage2_steps = warmup + steps2
        stage2 = timed(trainer.stage2)
        stage2_eval = timed(lambda: trainer.evaluate_now(2))
    return {
        "setup_s": setup,
        "stage1_steps_per_s": steps1 / stage1,
        "encode_pairs_per_s": pairs / encode,
        "stage2_steps_per_s": steps2 / stage2,
        "stage1_eval_s": stage1_eval,
        "stage2_eval_s": stage2_eval,
    }


def table(config: Config, parts: dict[str, float], minutes: dict[str, float], title: str) -> Table:
    train = config.train
    evals1, evals2 = evaluations_per_stage(train.stage1_steps, train.stage2_steps, train.eval_every)
    measured = {
        "setup": f"{parts['setup_s']:.1f} s",
        "stage 1 steps": f"{train.stage1_steps:,} at {parts['stage1_steps_per_s']:.2f} steps/s",
        "stage-2 pair encoding": (
            f"{train.cache_pairs:,} pairs at {parts['encode_pairs_per_s']:,.0f} pairs/s"
        ),
        "stage 2 steps": f"{train.stage2_steps:,} at {parts['stage2_steps_per_s']:.2f} steps/s",
        "stage 1 evaluations": f"{evals1} x {parts['stage1_eval_s']:.1f} s",
        "stage 2 evaluations": f"{evals2} x {parts['stage2_eval_s']:.1f} s (with the final one)",
    }
    out = Table("part", "as measured", "minutes", title=title)
    for part, text in measured.items():
        out.add_row(part, text, f"{minutes[part]:.1f}")
    for total in ("training", "evaluations", "total"):
        out.add_row(f"[b]{total}[/b]", "", f"[b]{minutes[total]:.1f}[/b]")
    return out


def build_parser() -> OneLineParser:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_EXPERIMENT)
    add_set_arg(parser, "train.stage2_steps=2000")
    parser.add_argument("--steps1", type=bounded(1, 100_000), default=300, help="timed, stage 1")
    parser.add_argument("--steps2", type=bounded(1, 100_000), default=100, help="timed, stage 2")
    parser.add_argument("--warmup", type=bounded(1, 10_000), default=10, help="untimed, per stage")
    parser.add_argument("--pairs", type=bounded(1, 1_000_000), default=4096, help="encoded, timed")
    parser.add_argument(
        "--threads", type=bounded(1, 1024), help="torch threads (default: every core, as a run)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench_results/train_time.json"))
    return parser


def bench(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    config = load_config(args.config, args.overrides)  # a bad key or file: one line, nothing run
    parts = measure_parts(
        args.config, args.overrides, args.steps1, args.steps2, args.warmup, args.pairs
    )
    minutes = projection(config, parts)
    cpu = torch.backends.cpu.get_cpu_capability()
    title = f"{args.config} on {torch.get_num_threads()} threads ({cpu}): projected minutes"
    console().print(table(config, parts, minutes, title))
    settings = {"config": str(args.config), "overrides": args.overrides, "steps1": args.steps1}
    settings |= {"steps2": args.steps2, "warmup": args.warmup, "pairs": args.pairs}
    write_report(args.out, "train_time", settings, [parts], minutes=[minutes])


if __name__ == "__main__":
    sys.exit(command_main(build_parser, bench, None))
