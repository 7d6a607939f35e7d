"""The ``vqcausal`` command line: one parser, one handler per sub-command.

Every user error (bad file, bad config key, unknown dataset) becomes one line on stderr and
exit status 2; Ctrl-C exits 130. Tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from vqcausal.commandline import (
    MAX_PAIRS,
    SEED,
    OneLineParser,
    add_config_args,
    add_run_args,
    bounded,
    config_from_args,
    run,
)
from vqcausal.errors import VQCausalError


def build_parser() -> argparse.ArgumentParser:
    from vqcausal import __version__

    parser = OneLineParser(prog="vqcausal", description="Causal representation learning on images.")
    parser.add_argument("--version", action="version", version=f"vqcausal {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="inspect, preview and export datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    info = data_commands.add_parser("info", help="factors, actions and sizes of a dataset")
    add_config_args(info)
    info.add_argument("--json", action="store_true", help="print JSON instead of tables")
    info.set_defaults(handler=_data_info)

    preview = data_commands.add_parser("preview", help="PNG grid of transition pairs")
    add_config_args(preview)
    preview.add_argument("--out", default="preview.png", help="PNG to write")
    preview.add_argument("--pairs", type=bounded(1, 256), default=4, help="pairs per action")
    preview.add_argument("--split", default="train", choices=["train", "test"])
    preview.add_argument("--scale", type=bounded(1, 16), default=2, help="pixel upscaling")
    preview.set_defaults(handler=_data_preview)

    export = data_commands.add_parser(
        "export", help="write transition pairs to safetensors (or the pendulum's CausalVAE folder)"
    )
    add_config_args(export)
    export.add_argument("--out", required=True, help="new (or empty) export folder")
    export.add_argument(
        "--layout",
        choices=["pairs", "causalvae"],
        default="pairs",
        help="pairs: safetensors shards of --train/--test pairs; causalvae: every grid image of "
        "the procedural pendulum as CausalVAE's train/ and test/ PNGs (the run's split)",
    )
    export.add_argument(
        "--train", type=bounded(0, 10 * MAX_PAIRS), default=10_000, help="train pairs"
    )
    export.add_argument("--test", type=bounded(0, MAX_PAIRS), default=1_000, help="test pairs")
    export.add_argument("--shard-size", type=bounded(1, 65_536), default=4096)
    export.set_defaults(handler=_data_export)

    retrieve = commands.add_parser("retrieve", help="which action turns image a into image b")
    retrieve.add_argument("image_a", help="image file, or a folder of images")
    retrieve.add_argument("image_b", help="image file, or a folder paired with image_a by name")
    add_run_args(retrieve)
    retrieve.add_argument(
        "--top-k", type=bounded(1, 1000), default=3, help="how many actions to list"
    )
    retrieve.add_argument(
        "--method", choices=["synthesis", "classifier"], help="retrieval head (default: the run's)"
    )
    retrieve.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: autocast (quantizer in fp32), ~1.6x faster on CPUs with bf16 instructions",
    )
    retrieve.add_argument("--json", action="store_true", help="print JSON")
    retrieve.set_defaults(handler=_retrieve)

    intervene = commands.add_parser("intervene", help="apply actions to an image, save a PNG")
    intervene.add_argument("image", help="image file")
    intervene.add_argument(
        "--action",
        action="append",
        required=True,
        help="e.g. object_hue+ (repeatable: a sequence)",
    )
    intervene.add_argument(
        "--steps", type=bounded(1, 100), default=1, help="apply each action this often"
    )
    add_run_args(intervene)
    intervene.add_argument("--out", default="intervention.png", help="PNG to write")
    intervene.add_argument("--scale", type=bounded(1, 16), default=2, help="pixel upscaling")
    intervene.set_defaults(handler=_intervene)

    ablate = commands.add_parser(
        "ablate", help="imbalance ablation sweep (same as tasks/imbalance_ablation.py)"
    )
    ablate.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the sweep")
    ablate.set_defaults(handler=_ablate)
    tune = commands.add_parser(
        "tune", help="hyperparameter search over --set keys on Ray Tune (ranked table, best TOML)"
    )
    tune.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the search")
    tune.set_defaults(handler=_tune)

    train = commands.add_parser("train", help="train a model (same as train.py)")
    train.add_argument("args", nargs=argparse.REMAINDER, help="arguments for train.py")
    train.set_defaults(handler=_train)

    report = commands.add_parser("report", help="one self-contained HTML page of a run's results")
    report.add_argument("run_dir", help="training run folder")
    report.add_argument(
        "--eval-dir", help="folder with metrics.json and figures (default: RUN_DIR/eval)"
    )
    report.add_argument("--out", help="HTML file to write (default: EVAL_DIR/report.html)")
    report.set_defaults(handler=_report)

    evaluate = commands.add_parser(
        "evaluate", help="held-out metrics and figures of a finished run (metrics.json)"
    )
    evaluate.add_argument("run_dir", help="training run folder")
    evaluate.add_argument("--split", default="test", help="test (default) or train pairs")
    evaluate.add_argument(
        "--out", help="folder for metrics.json and figures (default: RUN_DIR/eval)"
    )
    evaluate.add_argument(
        "--pairs",
        type=bounded(1, MAX_PAIRS),
        help="held-out pairs to evaluate (default 1024; with --fast 128)",
    )
    evaluate.add_argument(
        "--fast", action="store_true", help="small samples and a tiny oracle: a quick smoke check"
    )
    evaluate.add_argument("--seed", type=SEED, help="seed of the drawn pairs (default: the run's)")
    evaluate.add_argument(
        "--no-disentanglement",
        dest="disentanglement",
        action="store_false",
        help="skip the disentanglement scores (the slowest section)",
    )
    evaluate.set_defaults(handler=_evaluate)
    return parser


# ---- handlers -------------------------------------------------------------------------
def _source_and_sampler(args: argparse.Namespace):
    from vqcausal.data.registry import load_source
    from vqcausal.data.transitions import TransitionSampler

    config = config_from_args(args)
    source = load_source(config.data)
    return config, source, TransitionSampler(source, config.transitions)


def _data_info(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    _, source, sampler = _source_and_sampler(args)
    info = source.describe()
    info["actions"] = [
        {"index": i, "name": name, "probability": round(float(p), 6)}
        for i, (name, p) in enumerate(
            zip(source.space.action_names, sampler.action_probs, strict=True)
        )
    ]
    info["concepts"] = source.concept_names
    info["splits"] = sampler.split_sizes()
    if args.json:
        print(json.dumps(info, indent=2))
        return
    console = Console()
    stored = info["stored_images"]
    if "photos" in info:  # a photo collection: many photos per factor vector
        held = f"photos {info['photos']:,} with {stored:,} distinct factor vectors"
        held += "".join(f", {n:,} {why} left out" for why, n in info.get("left_out", {}).items())
    else:
        held = f"stored images {'all (procedural)' if stored is None else f'{stored:,}'}"
    console.print(
        f"[bold]{source.name}[/]  images {tuple(source.image_shape)}  "
        f"grid points {info['grid_points']:,}  {held}  "
        + "  ".join(f"{name} {n:,}" for name, n in info["splits"].items())
    )
    factors = Table("factor", "size", "cyclic", title="factors")
    for f in source.space.factors:
        factors.add_row(f.name, str(f.size), "yes" if f.cyclic else "no")
    console.print(factors)
    actions = Table("index", "action", "train frequency", title="actions")
    for a in info["actions"]:
        actions.add_row(str(a["index"]), a["name"], f"{a['probability']:.4f}")
    console.print(actions)


def _data_preview(args: argparse.Namespace) -> None:
    import torch
    from einops import rearrange

    from vqcausal.viz import labelled_rows, save_png

    config, source, sampler = _source_and_sampler(args)
    generator = torch.Generator().manual_seed(config.seed)
    rows, labels = [], []
    for a, name in enumerate(source.space.action_names):
        actions = torch.full((args.pairs,), a, dtype=torch.long)
        x, x_next = sampler.images(sampler.sample(args.pairs, args.split, generator, actions))
        rows.append(rearrange([x, x_next], "two n c h w -> (n two) c h w"))
        labels.append(name)
    path = save_png(labelled_rows(rows, labels, scale=args.scale, group=2), args.out)
    print(f"wrote {path}: {len(labels)} actions x {args.pairs} pairs (x | x') from {source.name}")


def _data_export(args: argparse.Namespace) -> None:
    from vqcausal.data.export import export_pairs
    from vqcausal.progress import Progress

    config, source, sampler = _source_and_sampler(args)
    if args.layout == "causalvae":
        _export_causalvae(source, sampler, args.out)
        return
    counts = {"train": args.train, "test": args.test}
    with Progress("rendering pairs", sum(counts.values()), transient=True) as progress:
        export_pairs(
            sampler, args.out, counts, args.shard_size, config.seed, progress=progress.advance
        )
    print(f"wrote {args.train:,} train + {args.test:,} test pairs of {source.name} to {args.out}")


def _export_causalvae(source, sampler, out: str) -> None:
    """The procedural pendulum's grid as CausalVAE's folder, split as training splits it."""
    import torch

    from vqcausal.data.export import new_export_folder
    from vqcausal.data.pendulum import PendulumRenderer
    from vqcausal.data.pendulum_folder import write_causalvae_folder
    from vqcausal.progress import Progress

    if not isinstance(source, PendulumRenderer):
        raise VQCausalError("--layout causalvae writes the procedural pendulum only")
    target = new_export_folder(out)
    values = source.space.unravel(torch.arange(source.space.num_values))
    splits = sampler.split_of(values)
    with Progress("writing PNGs", len(values), transient=True) as progress:
        write_causalvae_folder(source, target, values, splits, progress=progress.advance)
    test = int(splits.sum())
    print(f"wrote {len(values) - test:,} train + {test:,} test images of pendulum to {target}")


def _retrieve(args: argparse.Namespace) -> None:
    from vqcausal.inference import open_run, pair_paths, retrieve

    pairs = pair_paths(args.image_a, args.image_b)
    model, run_dir = open_run(args.run, args.runs)
    results = retrieve(model, pairs, args.top_k, args.method, precision=args.precision)
    if args.json:
        print(json.dumps({"run": str(run_dir), "pairs": [r.to_dict() for r in results]}, indent=2))
        return
    for r in results:
        ranked = ", ".join(f"{name} {p:.3f}" for name, p in r.actions)
        print(f"{r.image_a} -> {r.image_b}: {ranked}")


def _intervene(args: argparse.Namespace) -> None:
    from vqcausal.inference import intervene, open_run
    from vqcausal.viz import labelled_rows, save_png

    model, _ = open_run(args.run, args.runs)
    images, labels = intervene(model, Path(args.image), args.action, args.steps)
    path = save_png(labelled_rows([images], [" -> ".join(args.action)], scale=args.scale), args.out)
    print(f"wrote {path}: input then {len(labels) - 1} step(s): {', '.join(labels[1:])}")


def _train(args: argparse.Namespace) -> None:
    raise SystemExit(_pass_through("train")(args.args))


def _ablate(args: argparse.Namespace) -> None:
    raise SystemExit(_pass_through("ablate")(args.args))


def _tune(args: argparse.Namespace) -> None:
    raise SystemExit(_pass_through("tune")(args.args))


def _report(args: argparse.Namespace) -> None:
    from vqcausal.eval.report import build_report

    eval_dir = Path(args.eval_dir) if args.eval_dir else None
    out = Path(args.out) if args.out else None
    print(build_report(Path(args.run_dir), eval_dir, out))


def _evaluate(args: argparse.Namespace) -> None:
    from vqcausal.eval.evaluate import evaluate_run
    from vqcausal.eval.summary import print_summary

    result = evaluate_run(
        args.run_dir,
        args.out,
        args.split,
        args.pairs,
        args.fast,
        args.seed,
        disentanglement=args.disentanglement,
    )
    print_summary(result)


def _pass_through(command: str) -> Callable[[list[str]], int]:
    """``train``, ``ablate`` and ``tune`` hand their arguments to their own parsers as they are
    (argparse's REMAINDER does not capture a leading ``--option`` inside a subcommand)."""
    if command == "train":
        from vqcausal.train.run import main as train_main

        return train_main
    if command == "tune":
        from vqcausal.sweep.tune import main as tune_main

        return tune_main
    from vqcausal.sweep.command import main as ablate_main

    return ablate_main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("train", "ablate", "tune"):
        return _pass_through(argv[0])(argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # a bad argument (one line printed) or --help / --version
        return int(stop.code or 0)
    return run(lambda: args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
