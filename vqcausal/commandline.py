"""What every vqcausal command shares: its parser, option types, config options and exit codes.

Every user error (bad file, bad config key, unknown dataset) becomes one line on stderr and
exit status 2; Ctrl-C exits 130. Tracebacks are for bugs only. ``vqcausal.cli``, ``train.py``,
the sweeps and the task recipes all build on this module, which imports nothing of theirs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

from vqcausal.errors import VQCausalError

EXIT_USER_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments are one ``error:`` line and exit status 2, like every other user error."""

    def error(self, message: str):  # type: ignore[override]
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)


def bounded(low: float, high: float, kind: type = int) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` in [low, high], else one line naming the range.

    Every numeric option has one, so a typo such as ``--steps 1000000000`` fails at once
    instead of allocating terabytes or running for ever."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"wants {what}, got {text[:40]!r}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"must be from {low:,} to {high:,}, got {text[:40]}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


SEED = bounded(0, 2**31 - 1)


#: images or pairs one command may render or score at once
MAX_PAIRS = 1_000_000


def add_set_arg(parser: argparse.ArgumentParser, example: str = "transitions.imbalance=10") -> None:
    """Repeatable ``--set section.key=value`` config overrides (into ``args.overrides``)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config field, e.g. --set {example} (repeatable)",
    )


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """--config / --set plus shortcuts for the data section."""
    parser.add_argument("--config", help="TOML config file (see configs/)")
    add_set_arg(parser)
    parser.add_argument("--dataset", help="shapes3d | sprites | pendulum | folder")
    parser.add_argument("--path", help="a dataset file or folder you already have")


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """``--set`` overrides plus what the ``--dataset`` / ``--path`` shortcuts mean."""
    overrides = list(args.overrides)
    if getattr(args, "dataset", None):
        overrides.append(f"data.dataset={json.dumps(args.dataset)}")
    if getattr(args, "path", None):
        overrides.append(f"data.path={json.dumps(args.path)}")
    return overrides


def config_from_args(args: argparse.Namespace, default: Path | None = None):
    """``--config`` (or ``default``, when the command names neither a config nor a dataset and
    the file exists) with the data shortcuts and ``--set`` overrides on top."""
    from vqcausal.config import load_config

    path = args.config
    named = path or getattr(args, "dataset", None) or getattr(args, "path", None)
    if not named and default is not None and default.is_file():
        path = default
    return load_config(path, overrides_from_args(args))


def add_run_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", help="run folder (default: newest finished run under --runs)")
    parser.add_argument("--runs", default="runs", help="where to look for runs")


def run(handler: Callable[[], None]) -> int:
    """Run a command body, turning user errors into one line and an exit status."""
    try:
        handler()
    except VQCausalError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # unwritable output path, disk full, ...
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def command_main(
    build_parser: Callable[[], argparse.ArgumentParser],
    body: Callable[[argparse.Namespace], None],
    argv: list[str] | None,
) -> int:
    """Parse, then run ``body`` as a vqcausal command: 0 on success, 2 on bad input (one
    ``error:`` line), 130 on Ctrl-C; ``--help`` returns 0."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a bad argument (2, already printed)
        return stop.code if isinstance(stop.code, int) else EXIT_USER_ERROR
    return run(lambda: body(args))
