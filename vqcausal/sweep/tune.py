"""``vqcausal tune``: a hyperparameter search over any ``--set`` keys, on Ray Tune.

    vqcausal tune --config configs/shapes3d.toml \\
        --param 'train.lr=loguniform(3e-4, 3e-3)' --param 'model.transition.hidden=[64, 128]' \\
        --search random --samples 8 --scheduler asha --out runs/tune-lr

Each trial is an ordinary training run (``python -m vqcausal.train.run``, a child process
of the trial) in ``OUT/trials/``; every held-out evaluation it logs during stage 2
(``train.eval_every``) is reported to Tune, which ranks trials on ``--metric`` and, with
``--scheduler asha``, stops the weak ones early (ASHA on the training step). Values:

* a TOML array, ``KEY=[a, b, c]``: the grid's values (``--search grid``) or a uniform choice
  (``--search random``);
* ``uniform(lo, hi)``, ``loguniform(lo, hi)``, ``randint(lo, hi)`` (hi excluded): random only.

Every key and value is checked against the config before anything runs (the official CT-VAE
search silently ignored keys it did not know). The search writes ``OUT/results.md`` and
``OUT/results.csv`` (trials ranked best first) and ``OUT/best.toml``, the best trial's full
resolved config, which ``python train.py --config OUT/best.toml`` trains again.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vqcausal.commandline import (
    OneLineParser,
    add_config_args,
    bounded,
    command_main,
    config_from_args,
    overrides_from_args,
)
from vqcausal.config import Config, ConfigError, load_config, parse_override
from vqcausal.progress import duration
from vqcausal.sweep.cells import cell_env, interrupt, start_child
from vqcausal.sweep.command import add_engine_args, engine_options
from vqcausal.sweep.engine import ray_session
from vqcausal.sweep.spec import SweepError

DEFAULT_METRIC = "retrieval_synthesis_balanced_accuracy"
DISTRIBUTIONS = ("uniform", "loguniform", "randint")
TRIALS = "trials"
#: keys a trial sets itself
RESERVED = {"runs": "--out", "name": "--out"}


@dataclass(frozen=True)
class Param:
    """One searched key: its values (a list), or a distribution ``kind(low, high)``."""

    key: str
    values: tuple[Any, ...] = ()
    kind: str = "choice"  # choice | uniform | loguniform | randint
    low: float = 0.0
    high: float = 0.0

    def space(self, search: str) -> Any:
        from ray import tune

        if self.kind == "choice":
            return (
                tune.grid_search(list(self.values))
                if search == "grid"
                else tune.choice(list(self.values))
            )
        return getattr(tune, self.kind)(self.low, self.high)


_DISTRIBUTION = re.compile(r"^\s*(\w+)\s*\(\s*([^,]+?)\s*,\s*([^,]+?)\s*\)\s*$")


def parse_param(text: str) -> Param:
    """``KEY=[v, ...]`` or ``KEY=kind(low, high)`` -> Param (values not yet checked)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SweepError(f"--param wants KEY=[values] or KEY=loguniform(lo, hi), got {text!r}")
    if key in RESERVED:
        raise SweepError(f"--param {key} is set per trial; use {RESERVED[key]} instead")
    found = _DISTRIBUTION.match(raw)
    if found:
        kind, low, high = found.groups()
        if kind not in DISTRIBUTIONS:
            raise SweepError(f"--param {key}: unknown distribution {kind!r}; use {DISTRIBUTIONS}")
        try:
            lo, hi = float(low), float(high)
        except ValueError:
            raise SweepError(
                f"--param {key}: {kind} wants two numbers, got {raw.strip()}"
            ) from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise SweepError(f"--param {key}: {kind} wants low < high, got {raw.strip()}")
        if kind == "loguniform" and lo <= 0:
            raise SweepError(f"--param {key}: loguniform wants low > 0, got {low}")
        if kind == "randint" and not (lo.is_integer() and hi.is_integer()):
            raise SweepError(f"--param {key}: randint wants whole numbers, got {raw.strip()}")
        return Param(key, kind=kind, low=lo, high=hi)
    _, values = parse_override(f"v={raw}")
    if not isinstance(values, list):
        raise SweepError(
            f"--param {key}: values are a TOML array such as [1e-3, 3e-3] or a distribution "
            f"such as loguniform(1e-4, 1e-2), got {raw.strip()[:40]}"
        )
    if not values:
        raise SweepError(f"--param {key}: no values to search")
    return Param(key, values=tuple(values))


def toml_value(value: Any) -> str:
    """A Python value as the right-hand side of a ``--set`` override."""
    import tomli_w

    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def override(key: str, value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = float(value)  # keep floats floats (tomli_w writes 1.0, not 1)
    return f"{key}={toml_value(value)}"


def check_params(params: list[Param], search: str, config: str | None, base: list[str]) -> None:
    """Every key exists and takes every value (a distribution: both ends), before Ray starts."""
    if not params:
        raise SweepError("nothing to search: give at least one --param KEY=[values]")
    keys = [p.key for p in params]
    duplicated = {k for k in keys if keys.count(k) > 1}
    if duplicated:
        raise SweepError(f"--param {sorted(duplicated)[0]} is given twice")
    for param in params:
        if search == "grid" and param.kind != "choice":
            raise SweepError(
                f"--param {param.key}: a grid takes a list of values; {param.kind}(...) needs "
                "--search random"
            )
        ends: tuple[Any, ...] = param.values
        if param.kind == "randint":
            ends = (int(param.low), int(param.high) - 1)
        elif param.kind != "choice":
            ends = (param.low, param.high)
        for value in ends:
            try:
                load_config(config, [*base, override(param.key, value)])
            except ConfigError as err:
                raise SweepError(f"--param {param.key}={value!r}: {err}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="vqcausal tune", description=__doc__.split("\n\n")[0].strip())
    add_config_args(parser)
    parser.add_argument(
        "--param",
        dest="params",
        action="append",
        default=[],
        metavar="KEY=VALUES",
        help="a searched key: KEY=[a, b] or KEY=loguniform(lo, hi) (repeatable)",
    )
    parser.add_argument("--search", choices=["grid", "random"], default="grid")
    parser.add_argument(
        "--samples",
        type=bounded(1, 10_000),
        default=1,
        help="random: trials drawn; grid: repeats of the whole grid (default 1)",
    )
    parser.add_argument(
        "--scheduler",
        choices=["fifo", "asha"],
        default="fifo",
        help="asha stops weak trials at stage-2 evaluations (train.eval_every)",
    )
    parser.add_argument("--metric", default=DEFAULT_METRIC, help="an in-training eval metric")
    parser.add_argument("--mode", choices=["max", "min"], default="max")
    parser.add_argument("--out", help="search folder (default runs/tune-<stamp>)")
    add_engine_args(parser)
    return parser


# ---- one trial -----------------------------------------------------------------------------
def _eval_records(run_dir: Path | None, seen: int) -> tuple[list[dict], int]:
    """The in-training evaluations logged after the first ``seen`` records of a run."""
    if run_dir is None or not (run_dir / "metrics.jsonl").is_file():
        return [], seen
    from vqcausal.runs import metric_records

    records = [r for _, r in metric_records(run_dir / "metrics.jsonl")]
    new = [r for r in records[seen:] if isinstance(r.get("eval"), dict)]
    return new, len(records)


def _report(record: dict, metric: str) -> dict | None:
    numbers = {k: v for k, v in record["eval"].items() if isinstance(v, int | float)}
    if metric not in numbers:
        return None  # a stage-1 evaluation: no retrieval yet
    return numbers | {"step": int(record["step"])}


def run_trial(params: dict[str, Any], setup: dict[str, Any]) -> None:
    """A Ray Tune function trainable: one training run, its stage-2 evaluations reported."""
    from ray import tune

    trial = tune.get_context().get_trial_id()
    trials = Path(setup["trials"])
    name = f"trial-{trial}"
    sets = [*setup["overrides"], *(override(k, v) for k, v in params.items())]
    sets += [f"runs={json.dumps(str(trials))}", f"name={json.dumps(name)}"]
    labels = [f"search={trials.parent.name}", f"trial={name}"]
    labels += [f"{k}={json.dumps(v)}" for k, v in params.items()]
    sets.append(f"tags={json.dumps(labels)}")
    argv = [sys.executable, "-m", "vqcausal.train.run"]
    if setup["config"]:
        argv += ["--config", setup["config"]]
    argv += [a for s in sets for a in ("--set", s)]
    trials.mkdir(parents=True, exist_ok=True)
    seen, reported = 0, False
    with (trials / f"{name}.log").open("a") as log:
        process = start_child(argv, cell_env(setup["threads"]), log)
        try:
            while True:
                try:
                    code = process.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    code = None
                runs = sorted(trials.glob(f"{name}-*"))
                records, seen = _eval_records(runs[-1] if runs else None, seen)
                for record in records:
                    result = _report(record, setup["metric"])
                    if result is not None:
                        tune.report(result | {"run": str(runs[-1])})
                        reported = True
                if code is not None:
                    break
        except BaseException:  # stopped by the scheduler, or the search stopped
            interrupt(process, 60.0)
            raise
    if code != 0:
        raise SweepError(f"training failed (exit {code}); log: {trials / f'{name}.log'}")
    if not reported:
        raise SweepError(
            f"training logged no {setup['metric']}; check --metric and train.eval_every"
        )


# ---- the search ----------------------------------------------------------------------------
@dataclass
class TrialRow:
    trial: str
    status: str
    params: dict[str, Any]
    metric: float | None
    step: int | None
    run: str
    error: str = ""


def ranked(rows: list[TrialRow], mode: str) -> list[TrialRow]:
    """Best first; trials without the metric last."""
    sign = -1.0 if mode == "max" else 1.0
    return sorted(rows, key=lambda r: (r.metric is None, sign * (r.metric or 0.0), r.trial))


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def results_markdown(rows: list[TrialRow], keys: list[str], metric: str) -> str:
    head = ["rank", "trial", *keys, metric, "step", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows, 1):
        value = "n/a" if r.metric is None else f"{r.metric:.4f}"
        cells = [str(i), r.trial, *(_number(r.params.get(k)) for k in keys), value]
        cells += [str(r.step or ""), r.status + (f": {r.error}" if r.error else "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def results_csv(rows: list[TrialRow], keys: list[str], metric: str) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["rank", "trial", *keys, metric, "step", "status", "run", "error"])
    for i, r in enumerate(rows, 1):
        values = [r.params.get(k) for k in keys]
        writer.writerow([i, r.trial, *values, r.metric, r.step, r.status, r.run, r.error])
    return buffer.getvalue()


def best_config(run_dir: Path) -> Config:
    """The trial's resolved config, placed back in the default runs folder."""
    config = load_config(run_dir / "config.toml")
    return replace(config, runs=Config().runs, name=Config().name)


def _trial_rows(results: Any, keys: list[str], metric: str, mode: str) -> list[TrialRow]:
    rows = []
    for result in results:
        history = result.metrics_dataframe
        best_metric, best_step, run = None, None, ""
        if history is not None and metric in history:
            scored = history.dropna(subset=[metric])
            if len(scored):
                best = scored[metric].idxmax() if mode == "max" else scored[metric].idxmin()
                best_metric = float(scored.loc[best, metric])
                best_step = int(scored.loc[best, "step"])
                run = str(scored.loc[best, "run"])
        error = ""
        if result.error is not None:
            lines = [line for line in str(result.error).splitlines() if line.strip()]
            error = next((line for line in reversed(lines) if "SweepError" in line), lines[-1])
            error = error.split("SweepError: ")[-1][:200]
        trial_id = (result.metrics or {}).get("trial_id")
        trial = f"trial-{trial_id}" if trial_id else Path(result.path or "?").name
        params = {k: result.config.get(k) for k in keys}
        status = "error" if result.error is not None else "done"
        rows.append(TrialRow(trial, status, params, best_metric, best_step, run, error))
    return rows


def search(args: argparse.Namespace) -> None:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from vqcausal.atomic import write_text_atomic
    from vqcausal.train.run import config_toml

    start = time.monotonic()
    base = config_from_args(args)  # the config file and --set must load on their own
    overrides = overrides_from_args(args)
    params = [parse_param(text) for text in args.params]
    check_params(params, args.search, args.config, overrides)
    out = Path(args.out or f"runs/tune-{time.strftime('%Y%m%d-%H%M%S')}").absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SweepError(f"{out} exists and is not empty; give a new --out")
    train = base.train
    first_eval = train.stage1_steps + train.eval_every
    if args.scheduler == "asha" and first_eval >= train.stage1_steps + train.stage2_steps:
        raise SweepError(
            "asha needs evaluations during stage 2: set train.eval_every below train.stage2_steps"
        )
    options = engine_options(args, 1)
    keys = [p.key for p in params]
    with ray_session(options) as resources:
        out.mkdir(parents=True, exist_ok=True)
        setup = {
            "config": str(Path(args.config).absolute()) if args.config else None,
            "overrides": overrides,
            "trials": str(out / TRIALS),
            "threads": resources.threads,
            "metric": args.metric,
        }
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, setup=setup),
            {"cpu": resources.threads, "gpu": resources.gpus},
        )
        scheduler = None
        if args.scheduler == "asha":
            scheduler = ASHAScheduler(
                time_attr="step",
                max_t=train.stage1_steps + train.stage2_steps,
                grace_period=first_eval,
                reduction_factor=2,
            )
        tuner = tune.Tuner(
            trainable,
            param_space={p.key: p.space(args.search) for p in params},
            tune_config=tune.TuneConfig(
                metric=args.metric,
                mode=args.mode,
                num_samples=args.samples,
                scheduler=scheduler,
                max_concurrent_trials=None if options.address else options.jobs,
            ),
            run_config=tune.RunConfig(name="ray_tune", storage_path=str(out), verbose=1),
        )
        results = tuner.fit()
    rows = ranked(_trial_rows(results, keys, args.metric, args.mode), args.mode)
    table = results_markdown(rows, keys, args.metric)
    write_text_atomic(out / "results.md", table)
    write_text_atomic(out / "results.csv", results_csv(rows, keys, args.metric))
    print()
    print(table)
    best = rows[0] if rows and rows[0].metric is not None else None
    if best is None:
        raise SweepError(f"no trial reported {args.metric}; see {out / TRIALS}/*.log")
    header = f"# vqcausal tune: best of {len(rows)} trials, {args.metric} = {best.metric:.4f}\n"
    write_text_atomic(out / "best.toml", header + config_toml(best_config(Path(best.run))))
    print(f"table: {out / 'results.md'}  rows: {out / 'results.csv'}")
    print(f"best config: {out / 'best.toml'}  (python train.py --config {out / 'best.toml'})")
    print(f"wall time: {duration(time.monotonic() - start)}")


def main(argv: list[str] | None = None) -> int:
    """Run it; 0 on success, 2 on bad input or no usable trial, 130 on Ctrl-C."""
    return command_main(build_parser, search, argv)
