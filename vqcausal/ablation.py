"""The imbalance ablation: does a latent keep retrieving rare actions when training is skewed?

The claim under test: the causal-transition model (``vq``) keeps retrieving and applying rare
actions correctly when its training pairs are imbalanced, where the continuous baselines
(``gaussian``, ``ladder``, ``scm``) degrade. A *sweep* trains one ordinary run per *cell*,

    cell = (dataset, latent, mode, rho or k, seed),

evaluates it with ``vqcausal evaluate`` and aggregates the held-out metrics. Modes:

* ``actions``: action frequencies fall geometrically from 1 to 1/rho
  (``transitions.imbalance``); the last action of ``action_order`` is the rarest;
* ``values``: every factor's values are skewed the same way (``transitions.value_imbalance``);
  action frequencies stay uniform;
* ``held_out``: one action is held at ``k`` distinct training pairs
  (``transitions.rare_action`` / ``rare_examples``), the few-shot end of imbalance.

rho = 1 is the same (uniform) config in the ``actions`` and ``values`` modes, so it is trained
once, as an ``actions`` cell, and serves as the rho = 1 point of both.

Every cell runs the ordinary training code in a subprocess (``python -m vqcausal.train.run``,
what ``train.py`` calls), so ``--jobs N`` cells run side by side without sharing a Python
process (each with ``OMP_NUM_THREADS = cores / N``; ``--gpus`` gives each job slot its own
``CUDA_VISIBLE_DEVICES``). A sweep folder holds one folder per cell, named after the cell::

    SWEEP/shapes3d-vq-actions-rho100-s0/cell.json        what the cell is (checked on re-runs)
    SWEEP/shapes3d-vq-actions-rho100-s0/run-<stamp>/     the training run (train.py's layout)
    SWEEP/shapes3d-vq-actions-rho100-s0/run-<stamp>/eval/metrics.json   vqcausal evaluate
    SWEEP/results.csv, per_action.csv, results.md, figures/

Re-running a sweep is always safe: a cell with ``eval/metrics.json`` is skipped, a run that
stopped is resumed from its newest checkpoint (``--resume``), a finished but unevaluated run
is only evaluated. So a killed sweep picks up where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import queue
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from vqcausal.errors import VQCausalError

MODES = ("actions", "values", "held_out")
DEFAULT_MODE = "default"  # a cell with the dataset's config as it is (retrieval benchmark)
REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
CELL_FILE = "cell.json"
RUN_PREFIX = "run"
ORACLE_CACHE = ".oracle"
LOCK_FILE = ".sweep.lock"


class AblationError(VQCausalError):
    """A sweep request or sweep folder that cannot be used."""


# ---- what a size and a dataset mean -------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSpec:
    """A dataset's base config and the action the ``held_out`` mode holds at k pairs.

    The held-out action is one whose effect is plainly visible (a hue change, a scale step),
    so failing on it is the model's fault, not an invisible target's.
    """

    config: str  # file under configs/
    held_out_action: str


DATASETS: dict[str, DatasetSpec] = {
    "shapes3d": DatasetSpec("shapes3d.toml", "object_hue+"),
    "sprites": DatasetSpec("sprites.toml", "scale+"),
    "toy": DatasetSpec("smoke.toml", "hue+"),  # tests and quick checks
}


@dataclass(frozen=True)
class SizeSpec:
    """A sweep size: the default grid, settings for every cell and evaluate's options.

    ``overrides`` go on top of each dataset's own config, before the cell's overrides.
    """

    datasets: tuple[str, ...]
    latents: tuple[str, ...]
    modes: tuple[str, ...]
    rhos: tuple[float, ...]
    ks: tuple[int, ...]
    seeds: tuple[int, ...]
    overrides: tuple[str, ...]
    evaluate_args: tuple[str, ...]
    jobs: int  # default parallel cells


#: The default model scaled down (its 8x8 code grid kept, so codes stay local) and trained
#: briefly. Measured on a 2-core CPU that other work kept busy (load average ~4), two cells
#: side by side with one thread each: a vq cell 7-9 min, a gaussian one 4.5-7.5 min,
#: training plus ``evaluate --fast`` (~1-2 min of it); the 4-cell grid took 14 min.
SMOKE_OVERRIDES = (
    "model.autoencoder.widths=[16, 32, 64]",
    "model.autoencoder.embed_dim=32",
    "model.quantizer.codebook_size=64",
    "model.transition.hidden=32",
    "model.transition.context_layers=1",
    "model.classifier_hidden=64",
    "train.stage1_steps=1200",
    "train.stage2_steps=600",
    "train.cache_pairs=4000",
    "train.eval_pairs=256",
    "train.eval_every=1000000",  # no in-training evaluation: the final one only
    "train.checkpoint_every=300",
    "train.log_every=100",
)

SIZES: dict[str, SizeSpec] = {
    "smoke": SizeSpec(
        datasets=("shapes3d",),
        latents=("vq", "gaussian"),
        modes=("actions",),
        rhos=(1.0, 100.0),
        ks=(1,),
        seeds=(0,),
        overrides=SMOKE_OVERRIDES,
        # held-out actions are drawn uniformly (transitions.balanced_test), so 1024 pairs give
        # every action ~85; --fast keeps the oracle small; the sweep reads no disentanglement
        evaluate_args=("--fast", "--pairs", "1024", "--no-disentanglement"),
        jobs=2,
    ),
    # the claim at the size a 2-core CPU trains: the causal model against both baselines at
    # three imbalances and one held-out action, three seeds, the default model at half its
    # steps. 36 cells, two side by side: most of a working day on 2 cores (see the task's
    # docstring for the measured cell times); a GPU runs it in about an hour
    "cpu": SizeSpec(
        datasets=("shapes3d",),
        latents=("vq", "gaussian", "ladder"),
        modes=("actions", "held_out"),
        rhos=(1.0, 10.0, 100.0),
        ks=(16,),
        seeds=(0, 1, 2),
        overrides=("train.stage1_steps=3000", "train.stage2_steps=2000"),
        evaluate_args=("--pairs", "4096", "--no-disentanglement"),
        jobs=2,
    ),
    "full": SizeSpec(
        datasets=("shapes3d", "sprites"),
        latents=("vq", "scm", "gaussian", "ladder"),
        modes=MODES,
        rhos=(1.0, 10.0, 100.0),
        ks=(1, 10, 100),
        seeds=(0, 1, 2),
        overrides=(),  # the default model and steps of configs/<dataset>.toml
        # held-out actions are uniform (transitions.balanced_test): 4096 pairs give every
        # action ~340 (shapes3d) to ~410 (sprites) held-out pairs
        evaluate_args=("--pairs", "4096", "--no-disentanglement"),
        # small models leave a GPU mostly idle and evaluation is CPU-bound: two cells per GPU
        # keep both busy
        jobs=2,
    ),
}


# ---- cells and the planner ----------------------------------------------------------------------
def _level_text(level: float) -> str:
    return str(int(level)) if float(level).is_integer() else f"{level:g}"


@dataclass(frozen=True)
class Cell:
    """One training run of the sweep and the ``--set`` overrides that realise it.

    ``level`` is rho for the ``actions`` / ``values`` modes and k for ``held_out``. The name
    is stable (it names the cell's folder), so a re-run finds the cell's earlier work.
    """

    dataset: str
    latent: str
    mode: str
    level: float
    seed: int
    config: str  # base config, a file under configs/ (or an absolute path)
    overrides: tuple[str, ...]

    @property
    def level_key(self) -> str:
        return "k" if self.mode == "held_out" else "rho"

    @property
    def name(self) -> str:
        if self.mode == DEFAULT_MODE:
            return f"{self.dataset}-{self.latent}-{DEFAULT_MODE}-s{self.seed}"
        level = f"{self.level_key}{_level_text(self.level)}"
        return f"{self.dataset}-{self.latent}-{self.mode}-{level}-s{self.seed}"

    @property
    def config_path(self) -> Path:
        path = Path(self.config)
        return path if path.is_absolute() else CONFIG_DIR / path

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["overrides"] = list(self.overrides)
        data["name"] = self.name
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cell:
        try:
            return cls(
                dataset=str(data["dataset"]),
                latent=str(data["latent"]),
                mode=str(data["mode"]),
                level=float(data["level"]),
                seed=int(data["seed"]),
                config=str(data["config"]),
                overrides=tuple(str(o) for o in data["overrides"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise AblationError(f"damaged cell description ({err})") from None


def _unique(values: Iterable[Any]) -> list[Any]:
    seen: list[Any] = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


_SOURCES: dict[str, Any] = {}


def _source(dataset: str):
    """The dataset's source as its base config describes it (cached: planning renders nothing)."""
    if dataset not in _SOURCES:
        from vqcausal.config import load_config
        from vqcausal.data.registry import load_source

        config = load_config(CONFIG_DIR / DATASETS[dataset].config)
        _SOURCES[dataset] = load_source(config.data)
    return _SOURCES[dataset]


def _check_choice(kind: str, values: Sequence[str], known: Iterable[str]) -> None:
    known = list(known)
    for value in values:
        if value not in known:
            raise AblationError(f"unknown {kind} '{value}'; choose from {', '.join(known)}")


def mode_overrides(mode: str, level: float, held_out_action: str) -> list[str]:
    """The transition settings that realise one (mode, rho or k)."""
    if mode == "actions":
        return [f"transitions.imbalance={float(level)!r}"]
    if mode == "values":
        return [f"transitions.value_imbalance={float(level)!r}"]
    if mode == "held_out":
        return [
            f"transitions.rare_action={json.dumps(held_out_action)}",
            f"transitions.rare_examples={int(level)}",
        ]
    if mode == DEFAULT_MODE:
        return []
    raise AblationError(f"unknown mode '{mode}'; choose from {', '.join(MODES)}")


#: config keys a cell sets itself: a user override of one would make the cell's name lie
CELL_KEYS = {
    "seed": "--seeds",
    "model.latent": "--latents",
    "data.dataset": "--datasets",
    "transitions.imbalance": "--modes actions --rhos",
    "transitions.value_imbalance": "--modes values --rhos",
    "transitions.rare_action": "--held-out-action",
    "transitions.rare_examples": "--modes held_out --ks",
    "runs": "--out",
    "name": "--out",
}


def check_user_overrides(overrides: Sequence[str]) -> None:
    """Refuse ``--set`` of a key the sweep sets per cell (say which option to use instead)."""
    from vqcausal.config import parse_override

    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if key in CELL_KEYS:
            raise AblationError(
                f"--set {key}=... is set per cell by the sweep; use {CELL_KEYS[key]} instead"
            )


def make_cell(
    size: str,
    dataset: str,
    latent: str,
    mode: str,
    level: float,
    seed: int,
    overrides: Sequence[str] = (),
    held_out_action: str | None = None,
) -> Cell:
    """One cell: size settings, then mode, latent and seed, then the user's overrides (last,
    so they win; overriding the latent or seed there would make the name lie)."""
    spec = DATASETS[dataset]
    sets = [
        *SIZES[size].overrides,
        *mode_overrides(mode, level, held_out_action or spec.held_out_action),
        # what a latent takes from the data (scm: its concepts) the run fills in itself
        f"model.latent={json.dumps(latent)}",
        f"seed={int(seed)}",
        *overrides,
    ]
    return Cell(dataset, latent, mode, float(level), int(seed), spec.config, tuple(sets))


def plan(
    size: str = "smoke",
    datasets: Sequence[str] | None = None,
    latents: Sequence[str] | None = None,
    modes: Sequence[str] | None = None,
    rhos: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    ks: Sequence[int] | None = None,
    overrides: Sequence[str] = (),
    held_out_actions: dict[str, str] | None = None,
) -> list[Cell]:
    """The cells of a sweep; any grid axis left as None takes the size's default.

    Cells come seed-major (all of seed 0 first), so a sweep stopped half-way already has a
    complete table for its first seeds. ``values`` at rho = 1 is the ``actions`` rho = 1 cell
    (the same uniform config) and is only planned on its own when ``actions`` is not.
    """
    from vqcausal.models.base import LATENTS

    if size not in SIZES:
        raise AblationError(f"unknown size '{size}'; choose from {', '.join(SIZES)}")
    spec = SIZES[size]
    datasets = _unique(spec.datasets if datasets is None else datasets)
    latents = _unique(spec.latents if latents is None else latents)
    modes = _unique(spec.modes if modes is None else modes)
    rhos = _unique(float(r) for r in (spec.rhos if rhos is None else rhos))
    ks = _unique(int(k) for k in (spec.ks if ks is None else ks))
    seeds = _unique(int(s) for s in (spec.seeds if seeds is None else seeds))
    _check_choice("dataset", datasets, DATASETS)
    _check_choice("latent", latents, LATENTS)
    _check_choice("mode", modes, MODES)
    for name, axis in (("dataset", datasets), ("latent", latents), ("mode", modes)):
        if not axis:
            raise AblationError(f"no {name} to run")
    if not seeds:
        raise AblationError("no seed to run")
    if any(s < 0 for s in seeds):
        raise AblationError("seeds must be >= 0")
    if {"actions", "values"} & set(modes):
        if not rhos:
            raise AblationError("no rho to run")
        bad = [r for r in rhos if not (math.isfinite(r) and r >= 1)]
        if bad:
            raise AblationError(f"rho must be a finite number >= 1 (1 = uniform), got {bad[0]:g}")
    if "held_out" in modes:
        if not ks:
            raise AblationError("no k to run")
        if any(k < 1 for k in ks):
            raise AblationError("k (training pairs of the held-out action) must be >= 1")
    check_user_overrides(overrides)
    held_out_actions = dict(held_out_actions or {})
    _check_choice("dataset", list(held_out_actions), DATASETS)
    for dataset in datasets:
        if "held_out" in modes or dataset in held_out_actions:
            action = held_out_actions.get(dataset, DATASETS[dataset].held_out_action)
            names = list(_source(dataset).space.action_names)
            if action not in names:
                raise AblationError(
                    f"{dataset} has no action '{action}'; choose from {', '.join(names)}"
                )

    cells: list[Cell] = []
    for seed in seeds:
        for dataset in datasets:
            for mode in modes:
                levels: list[float] = list(ks) if mode == "held_out" else list(rhos)
                for level in levels:
                    if mode == "values" and level == 1.0 and "actions" in modes:
                        continue  # the same uniform config as actions at rho = 1
                    for latent in latents:
                        cells.append(
                            make_cell(
                                size,
                                dataset,
                                latent,
                                mode,
                                level,
                                seed,
                                overrides,
                                held_out_actions.get(dataset),
                            )
                        )
    from vqcausal.config import load_config

    for cell in cells:  # an unknown key or wrong type fails here, not in every cell's training
        load_config(cell.config_path, list(cell.overrides))
    return cells


def default_cells(
    size: str,
    datasets: Sequence[str],
    latents: Sequence[str] = ("vq",),
    seeds: Sequence[int] = (0,),
    overrides: Sequence[str] = (),
) -> list[Cell]:
    """Cells that train each dataset's config as it is (the retrieval benchmark)."""
    from vqcausal.models.base import LATENTS

    if size not in SIZES:
        raise AblationError(f"unknown size '{size}'; choose from {', '.join(SIZES)}")
    _check_choice("dataset", datasets, DATASETS)
    _check_choice("latent", latents, LATENTS)
    check_user_overrides(overrides)
    if not datasets or not latents or not seeds:
        raise AblationError("nothing to run: give at least one dataset, latent and seed")
    return [
        make_cell(size, dataset, latent, DEFAULT_MODE, 1.0, seed, overrides)
        for seed in _unique(int(s) for s in seeds)
        for dataset in _unique(datasets)
        for latent in _unique(latents)
    ]


# ---- the state of a cell's folder ---------------------------------------------------------------
def metrics_file(run_dir: Path) -> Path:
    return run_dir / "eval" / "metrics.json"


def _run_folders(cell_dir: Path) -> list[Path]:
    if not cell_dir.is_dir():
        return []
    return sorted(p for p in cell_dir.glob(f"{RUN_PREFIX}-*") if p.is_dir())


def find_run(cell_dir: Path) -> Path | None:
    """The cell's newest run folder that has a readable checkpoint, if any."""
    from vqcausal.train.checkpoint import CheckpointError, latest_checkpoint

    found = []
    for folder in _run_folders(cell_dir):
        try:
            saved = str(latest_checkpoint(folder).meta.get("saved_at", ""))
        except CheckpointError:
            continue
        found.append((saved, folder.name, folder))
    return max(found)[2] if found else None


def evaluated_run(cell_dir: Path) -> Path | None:
    """The run folder whose evaluation finished (``eval/metrics.json``), newest first."""
    done = [p for p in _run_folders(cell_dir) if metrics_file(p).is_file()]
    return max(done, key=lambda p: (metrics_file(p).stat().st_mtime, p.name)) if done else None


@dataclass(frozen=True)
class CellState:
    """What a cell still needs: ``done``, ``evaluate``, ``resume`` or ``new``."""

    state: str
    run_dir: Path | None = None


def cell_state(cell_dir: Path) -> CellState:
    from vqcausal.train.checkpoint import latest_checkpoint

    done = evaluated_run(cell_dir)
    if done is not None:
        return CellState("done", done)
    run_dir = find_run(cell_dir)
    if run_dir is None:
        return CellState("new")
    finished = latest_checkpoint(run_dir).finished
    return CellState("evaluate" if finished else "resume", run_dir)


# ---- running commands ---------------------------------------------------------------------------
class Runner(Protocol):
    """Runs one command with an environment, output appended to a log; returns its exit code."""

    def __call__(self, argv: list[str], env: dict[str, str], log: Path) -> int: ...


class SubprocessRunner:
    """Runs commands as child processes and can interrupt all of them (Ctrl-C, errors).

    Interrupted training saves a checkpoint (SIGINT is its Ctrl-C), so the next sweep
    resumes it instead of starting over.
    """

    def __init__(self) -> None:
        self._live: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self.stopping = False

    def __call__(self, argv: list[str], env: dict[str, str], log: Path) -> int:
        if self.stopping:
            return 130
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as out:
            out.write(f"$ {shlex.join(argv)}\n")
            out.flush()
            # a session of its own: a Ctrl-C in the terminal reaches the sweep only, which
            # forwards exactly one SIGINT (a second one would cut the checkpoint short)
            process = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            with self._lock:
                self._live.add(process)
            try:
                return process.wait()
            finally:
                with self._lock:
                    self._live.discard(process)

    def interrupt(self, grace_s: float = 60.0) -> None:
        """SIGINT every live child, wait up to ``grace_s`` for their checkpoints, then kill."""
        self.stopping = True
        with self._lock:
            live = list(self._live)
        for process in live:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + grace_s
        for process in live:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()


@dataclass
class SweepOptions:
    """How cells run: parallel jobs, threads per job, GPUs, evaluate's options."""

    jobs: int = 1
    threads: int | None = None  # per job; default: usable cores // jobs
    gpus: list[str] = field(default_factory=list)  # job slot i gets gpus[i % len(gpus)]
    evaluate_args: tuple[str, ...] = ()
    python: str = sys.executable

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise AblationError(f"--jobs must be >= 1, got {self.jobs}")
        if self.threads is not None and self.threads < 1:
            raise AblationError(f"--threads must be >= 1, got {self.threads}")
        if any(not g.strip() for g in self.gpus):
            raise AblationError("--gpus wants comma-separated device ids, e.g. 0,1")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def job_env(slot: int, options: SweepOptions) -> dict[str, str]:
    """The environment of job slot ``slot``: its share of the cores and its GPU, if any."""
    env = dict(os.environ)
    threads = options.threads or max(1, usable_cores() // options.jobs)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[key] = str(threads)
    if options.gpus:
        env["CUDA_VISIBLE_DEVICES"] = options.gpus[slot % len(options.gpus)].strip()
    env["PYTHONUNBUFFERED"] = "1"
    return env


def train_command(cell: Cell, cell_dir: Path, python: str) -> list[str]:
    """A new run of the cell, placed in its folder (``runs`` = the cell folder)."""
    argv = [python, "-m", "vqcausal.train.run", "--config", str(cell.config_path)]
    placement = [f"runs={json.dumps(str(cell_dir))}", f"name={json.dumps(RUN_PREFIX)}"]
    for override in (*cell.overrides, *placement):
        argv += ["--set", override]
    return argv


def resume_command(run_dir: Path, python: str) -> list[str]:
    return [python, "-m", "vqcausal.train.run", "--resume", str(run_dir)]


def evaluate_command(run_dir: Path, evaluate_args: Sequence[str], python: str) -> list[str]:
    out = run_dir / "eval"
    return [python, "-m", "vqcausal.cli", "evaluate", str(run_dir), "--out", str(out)] + list(
        evaluate_args
    )


def _last_error(log: Path) -> str:
    """The command's ``error: ...`` line if it printed one, else its last line."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [line for line in lines if line]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [""])[-1][:300]


def _copy_atomic(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


@dataclass
class Outcome:
    """What happened to one cell in this sweep."""

    cell: Cell
    status: str  # skipped | done | failed
    seconds: float = 0.0
    message: str = ""
    run_dir: Path | None = None


def same_run(old: Cell, cell: Cell) -> bool:
    """Two cells train the same run when they are equal or their resolved configs are: the
    overrides may come in another order (``--size cpu`` vs ``--size full --set ...``)."""
    if old == cell:
        return True
    from vqcausal.config import load_config, to_dict

    try:
        configs = [to_dict(load_config(c.config_path, list(c.overrides))) for c in (old, cell)]
    except VQCausalError:
        return False
    return configs[0] == configs[1]


def write_cell_file(cell: Cell, cell_dir: Path) -> None:
    """Record what the cell is; refuse a folder that a different cell (settings) started."""
    path = cell_dir / CELL_FILE
    if path.exists():
        try:
            old = Cell.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError) as err:
            raise AblationError(f"{path}: unreadable ({err})") from None
        if not same_run(old, cell):
            changed = [
                f.name
                for f in dataclasses.fields(Cell)
                if getattr(old, f.name) != getattr(cell, f.name)
            ]
            raise AblationError(
                f"{cell_dir} was started with other settings ({', '.join(changed)} differ); "
                "use another --out or remove that folder"
            )
        return
    cell_dir.mkdir(parents=True, exist_ok=True)
    from vqcausal.train.checkpoint import write_text_atomic

    write_text_atomic(path, json.dumps(cell.to_dict(), indent=2) + "\n")


def run_cell(
    cell: Cell,
    sweep_dir: Path,
    env: dict[str, str],
    runner: Runner,
    options: SweepOptions,
) -> Outcome:
    """Bring one cell to ``done``: train (new or resumed) as needed, then evaluate."""
    start = time.monotonic()
    cell_dir = sweep_dir / cell.name
    write_cell_file(cell, cell_dir)
    state = cell_state(cell_dir)
    if state.state == "done":
        return Outcome(cell, "skipped", 0.0, "already evaluated", state.run_dir)

    def failed(what: str, log: Path, code: int | None = None) -> Outcome:
        status = f" (exit {code})" if code is not None else ""
        detail = _last_error(log)
        message = f"{what}{status}{': ' + detail if detail else ''} [log: {log}]"
        return Outcome(cell, "failed", time.monotonic() - start, message, state.run_dir)

    train_log = cell_dir / "train.log"
    run_dir = state.run_dir
    if state.state == "new":
        for folder in _run_folders(cell_dir):  # started, but killed before its 1st checkpoint
            shutil.rmtree(folder)
        code = runner(train_command(cell, cell_dir, options.python), env, train_log)
        run_dir = find_run(cell_dir)
        if code != 0 or run_dir is None:
            return failed("training failed", train_log, code)
    elif state.state == "resume":
        assert run_dir is not None
        code = runner(resume_command(run_dir, options.python), env, train_log)
        if code != 0:
            return failed("resumed training failed", train_log, code)
    assert run_dir is not None
    from vqcausal.train.checkpoint import latest_checkpoint

    if not latest_checkpoint(run_dir).finished:
        return failed("training stopped before its last step", train_log)

    # The factor oracle depends on the data and its split, not on the model: evaluate trains
    # one per eval folder unless it finds one whose description matches, so hand every
    # cell the newest one. A stale one (other settings) is simply retrained by evaluate.
    eval_dir = run_dir / "eval"
    cache = sweep_dir / ORACLE_CACHE
    eval_dir.mkdir(parents=True, exist_ok=True)
    _copy_oracle(cache, eval_dir)
    eval_log = cell_dir / "evaluate.log"
    code = runner(evaluate_command(run_dir, options.evaluate_args, options.python), env, eval_log)
    if code != 0 or not metrics_file(run_dir).is_file():
        return failed("evaluation failed", eval_log, code)
    _copy_oracle(eval_dir, cache)
    did = {"new": "trained and evaluated", "resume": "resumed and evaluated"}
    message = did.get(state.state, "evaluated (training had finished)")
    return Outcome(cell, "done", time.monotonic() - start, message, run_dir)


_ORACLE_LOCK = threading.Lock()  # weights and description move together between folders


def _copy_oracle(source: Path, target: Path) -> None:
    """Copy the cached factor oracle files (``oracle-*``) from one folder to another."""
    with _ORACLE_LOCK:
        files = [p for p in source.glob("oracle-*") if p.is_file()] if source.is_dir() else []
        if files:
            target.mkdir(parents=True, exist_ok=True)
        for path in files:
            _copy_atomic(path, target / path.name)


class _SweepLock:
    """One sweep per folder at a time: two would train the same cells twice."""

    def __init__(self, sweep_dir: Path) -> None:
        self.path = sweep_dir / LOCK_FILE

    def __enter__(self) -> _SweepLock:
        try:
            pid = int(self.path.read_text().strip())
        except (OSError, ValueError):
            pid = None
        if pid is not None and pid != os.getpid() and _alive(pid):
            raise AblationError(
                f"another sweep (pid {pid}) is running in {self.path.parent}; "
                f"wait for it or stop it (if it is gone, remove {self.path})"
            )
        self.path.write_text(f"{os.getpid()}\n")
        return self

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _stoppable():
    """SIGTERM (``kill``, a batch system's time limit) stops the sweep like Ctrl-C does, so
    the running trainings get their SIGINT and checkpoint instead of running on orphaned.

    A sweep started in the background (``&``, nohup) has SIGINT *ignored*, and an ignored
    signal stays ignored in every child: training would never see the SIGINT it checkpoints
    on. A handled one is reset to the default in children, so the sweep handles it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous_term = signal.signal(signal.SIGTERM, interrupt)
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def run_sweep(
    cells: Sequence[Cell],
    sweep_dir: str | Path,
    options: SweepOptions | None = None,
    runner: Runner | None = None,
    echo: Callable[[str], None] = print,
) -> list[Outcome]:
    """Run every cell (``options.jobs`` at a time) until each is done or has failed.

    A failed cell does not stop the others; its outcome says why and where its log is.
    Ctrl-C interrupts the running trainings (they checkpoint) and re-raises.
    """
    options = options or SweepOptions()
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    names = [cell.name for cell in cells]
    if len(set(names)) != len(names):
        raise AblationError("two cells share a name; check the grid for duplicates")
    for cell in cells:  # refuse a folder of other settings before anything runs
        path = sweep_dir / cell.name / CELL_FILE
        if path.exists():
            write_cell_file(cell, sweep_dir / cell.name)
    runner = runner or SubprocessRunner()
    slots: queue.Queue[int] = queue.Queue()
    for slot in range(options.jobs):
        slots.put(slot)

    def in_slot(cell: Cell) -> Outcome:
        slot = slots.get()
        try:
            return run_cell(cell, sweep_dir, job_env(slot, options), runner, options)
        except (VQCausalError, OSError) as err:  # this cell's folder is unusable: the others go on
            return Outcome(cell, "failed", 0.0, str(err))
        finally:
            slots.put(slot)

    outcomes: list[Outcome] = []
    with _SweepLock(sweep_dir), _stoppable():
        pool = ThreadPoolExecutor(max_workers=options.jobs)
        pending: dict[Future, Cell] = {pool.submit(in_slot, cell): cell for cell in cells}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    cell = pending.pop(future)
                    outcome = future.result()
                    outcomes.append(outcome)
                    head = f"[{len(outcomes)}/{len(cells)}] {cell.name}:"
                    if outcome.status == "skipped":
                        echo(f"{head} skipped (already evaluated)")
                    elif outcome.status == "done":
                        echo(f"{head} {outcome.message} in {duration(outcome.seconds)}")
                    else:
                        echo(f"{head} FAILED: {outcome.message}")
        except BaseException:
            for future in pending:
                future.cancel()
            if isinstance(runner, SubprocessRunner):
                runner.interrupt()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    order = {name: i for i, name in enumerate(names)}
    return sorted(outcomes, key=lambda o: order[o.cell.name])


# ---- aggregation --------------------------------------------------------------------------------
@dataclass
class Row:
    """One evaluated cell's headline numbers (synthesis retrieval unless named classifier).

    The rarest action is the one with the lowest training frequency; ties (uniform
    frequencies) go to the action ``action_order`` puts last, the one that becomes rarest
    under action imbalance, so rho = 1 gives the baseline of the same action. In the
    ``held_out`` mode it is the held-out action.
    """

    cell: str
    dataset: str
    latent: str
    mode: str
    rho_or_k: float
    seed: int
    balanced_accuracy: float | None
    accuracy: float | None
    worst_action_accuracy: float | None
    rarest_action: str
    rarest_frequency: float | None
    rarest_accuracy: float | None
    rarest_test_pairs: int | None
    classifier_balanced_accuracy: float | None
    classifier_rarest_accuracy: float | None
    counterfactual_psnr: float | None
    atomicity: float | None
    # atomicity of the rarest action's counterfactuals, and the mean over the other actions:
    # a rare action is kept when the two are close
    rarest_atomicity: float | None
    common_atomicity: float | None
    oracle_accuracy: float | None  # how far atomicity can be trusted
    recon_psnr: float | None
    run: str
    per_action: dict[str, float | None] = field(default_factory=dict, repr=False)
    classifier_per_action: dict[str, float | None] = field(default_factory=dict, repr=False)
    test_pairs: dict[str, int] = field(default_factory=dict, repr=False)
    frequencies: dict[str, float] = field(default_factory=dict, repr=False)

    CSV_EXCLUDE = ("per_action", "classifier_per_action", "test_pairs", "frequencies")

    def csv_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in Row.CSV_EXCLUDE}


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


_FREQUENCIES: dict[str, dict[str, float]] = {}


def action_frequencies(config: Any) -> dict[str, float]:
    """Training frequency of each action by name, from the run's own transition sampler."""
    from vqcausal.data.registry import load_source
    from vqcausal.data.transitions import TransitionSampler

    key = json.dumps(
        [dataclasses.asdict(config.data), dataclasses.asdict(config.transitions)], sort_keys=True
    )
    if key not in _FREQUENCIES:
        source = load_source(config.data)
        sampler = TransitionSampler(source, config.transitions)
        _FREQUENCIES[key] = {
            name: float(p)
            for name, p in zip(source.space.action_names, sampler.action_probs, strict=True)
        }
    return dict(_FREQUENCIES[key])


def rarest_action(transitions: Any, frequencies: dict[str, float]) -> str:
    """The held-out action, else the least frequent one (ties: the last in ``action_order``)."""
    names = list(frequencies)
    if transitions.rare_action:
        return str(transitions.rare_action)
    order = transitions.action_order or list(range(len(names)))
    lowest = min(frequencies.values())
    tied = {i for i, n in enumerate(names) if frequencies[n] <= lowest * (1 + 1e-9)}
    return names[max(tied, key=order.index)]


def run_config(run_dir: Path):
    """The run's resolved config: its ``config.toml``, else its newest checkpoint's."""
    from vqcausal.config import ConfigError, load_config
    from vqcausal.train.checkpoint import CheckpointError, config_from_meta, latest_checkpoint

    try:
        return load_config(run_dir / "config.toml")
    except ConfigError:
        try:
            return config_from_meta(latest_checkpoint(run_dir).meta)
        except CheckpointError as err:
            raise AblationError(f"{run_dir}: no readable config ({err})") from None


def _test_pairs(report: Any, names: list[str]) -> dict[str, int]:
    confusion = _get(report, "confusion")
    if not isinstance(confusion, list) or len(confusion) != len(names):
        return {}
    return {name: int(sum(row)) for name, row in zip(names, confusion, strict=True)}


def row_of(cell: Cell, run_dir: Path) -> Row:
    """Read one evaluated cell's metrics.json into a row."""
    try:
        metrics = json.loads(metrics_file(run_dir).read_text())
    except (OSError, ValueError) as err:
        raise AblationError(f"{metrics_file(run_dir)}: unreadable ({err})") from None
    config = run_config(run_dir)
    frequencies = action_frequencies(config)
    names = list(frequencies)
    rarest = rarest_action(config.transitions, frequencies)
    synthesis = _get(metrics, "retrieval", "synthesis") or {}
    classifier = _get(metrics, "retrieval", "classifier") or {}
    per_action = {n: _num(_get(synthesis, "per_action", n)) for n in names}
    classifier_per_action = {n: _num(_get(classifier, "per_action", n)) for n in names}
    test_pairs = _test_pairs(synthesis, names)
    atomic = {n: _num(_get(metrics, "counterfactual", "per_action", n, "atomicity")) for n in names}
    others = [v for n, v in atomic.items() if n != rarest and v is not None]
    return Row(
        cell=cell.name,
        dataset=cell.dataset,
        latent=cell.latent,
        mode=cell.mode,
        rho_or_k=cell.level,
        seed=cell.seed,
        balanced_accuracy=_num(synthesis.get("balanced_accuracy")),
        accuracy=_num(synthesis.get("accuracy")),
        worst_action_accuracy=_num(synthesis.get("worst_action_accuracy")),
        rarest_action=rarest,
        rarest_frequency=frequencies.get(rarest),
        rarest_accuracy=per_action.get(rarest),
        rarest_test_pairs=test_pairs.get(rarest),
        classifier_balanced_accuracy=_num(classifier.get("balanced_accuracy")),
        classifier_rarest_accuracy=classifier_per_action.get(rarest),
        counterfactual_psnr=_num(_get(metrics, "counterfactual", "psnr")),
        atomicity=_num(_get(metrics, "counterfactual", "atomicity")),
        rarest_atomicity=atomic.get(rarest),
        common_atomicity=statistics.fmean(others) if others else None,
        oracle_accuracy=_num(_get(metrics, "counterfactual", "oracle_accuracy")),
        recon_psnr=_num(_get(metrics, "reconstruction", "psnr")),
        run=run_dir.name,
        per_action=per_action,
        classifier_per_action=classifier_per_action,
        test_pairs=test_pairs,
        frequencies=frequencies,
    )


def collect(sweep_dir: str | Path) -> list[Row]:
    """One row per evaluated cell of a sweep folder (cells still running are left out)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise AblationError(f"sweep folder not found: {sweep_dir}")
    rows = []
    for cell_file in sorted(sweep_dir.glob(f"*/{CELL_FILE}")):
        try:
            cell = Cell.from_dict(json.loads(cell_file.read_text()))
        except (OSError, ValueError) as err:
            raise AblationError(f"{cell_file}: unreadable ({err})") from None
        run_dir = evaluated_run(cell_file.parent)
        if run_dir is not None:
            rows.append(row_of(cell, run_dir))
    return sorted(
        rows, key=lambda r: (*_order_key(r.dataset, r.latent, r.mode, r.rho_or_k), r.seed)
    )


# ---- summaries, tables, figures -----------------------------------------------------------------
#: metrics summarised over seeds: (row field, table header, digits)
SUMMARY_METRICS: tuple[tuple[str, str, int], ...] = (
    ("balanced_accuracy", "balanced acc. (synthesis)", 3),
    ("rarest_accuracy", "rarest-action acc. (synthesis)", 3),
    ("classifier_balanced_accuracy", "balanced acc. (classifier)", 3),
    ("classifier_rarest_accuracy", "rarest-action acc. (classifier)", 3),
    ("counterfactual_psnr", "CF PSNR", 1),
    ("atomicity", "atomicity", 3),
    ("rarest_atomicity", "rarest-action atomicity", 3),
    ("common_atomicity", "other actions' atomicity", 3),
)


@dataclass
class Summary:
    """Mean and sample std over seeds of one (dataset, latent, mode, rho or k)."""

    dataset: str
    latent: str
    mode: str
    rho_or_k: float
    seeds: int
    rarest_action: str
    rarest_test_pairs: float | None  # mean per seed
    mean: dict[str, float | None]
    std: dict[str, float | None]


def _latent_rank(latent: str) -> tuple[int, str]:
    """Latents in their usual order (vq first), so every figure colours them alike."""
    from vqcausal.models.base import LATENTS

    return (LATENTS.index(latent) if latent in LATENTS else len(LATENTS), latent)


def _order_key(dataset: str, latent: str, mode: str, level: float) -> tuple:
    modes = [*MODES, DEFAULT_MODE]
    mode_rank = modes.index(mode) if mode in modes else len(modes)
    return (dataset, mode_rank, mode, level, _latent_rank(latent))


def summarise(rows: Sequence[Row]) -> list[Summary]:
    """Group rows by (dataset, latent, mode, rho or k); mean and std of each metric."""
    groups: dict[tuple[str, str, str, float], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.dataset, row.latent, row.mode, row.rho_or_k), []).append(row)
    out = []
    for key in sorted(groups, key=lambda k: _order_key(*k)):
        members = groups[key]
        mean: dict[str, float | None] = {}
        std: dict[str, float | None] = {}
        for name, _, _ in SUMMARY_METRICS:
            values = [v for v in (getattr(r, name) for r in members) if v is not None]
            mean[name] = statistics.fmean(values) if values else None
            std[name] = statistics.stdev(values) if len(values) > 1 else None
        pairs = [r.rarest_test_pairs for r in members if r.rarest_test_pairs is not None]
        out.append(
            Summary(
                *key,
                seeds=len(members),
                rarest_action=members[0].rarest_action,
                rarest_test_pairs=statistics.fmean(pairs) if pairs else None,
                mean=mean,
                std=std,
            )
        )
    return out


def _cell_text(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "n/a"
    text = f"{mean:.{digits}f}"
    return text if std is None else f"{text} ± {std:.{digits}f}"


def markdown_table(rows: Sequence[Row]) -> str:
    """The sweep's table: one line per (dataset, latent, mode, rho or k), mean ± std over seeds.

    ``rarest action`` names the action and its held-out test pairs per seed (accuracy on a
    handful of pairs is coarse: read it with that count).
    """
    head = ["dataset", "latent", "mode", "rho / k", "seeds", "rarest action (test pairs)"]
    head += [title for _, title, _ in SUMMARY_METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summarise(rows):
        level = (
            f"k={_level_text(s.rho_or_k)}"
            if s.mode == "held_out"
            else (f"rho={_level_text(s.rho_or_k)}")
        )
        pairs = "?" if s.rarest_test_pairs is None else f"{s.rarest_test_pairs:.0f}"
        cells = [s.dataset, s.latent, s.mode, level, str(s.seeds), f"{s.rarest_action} ({pairs})"]
        cells += [_cell_text(s.mean[n], s.std[n], d) for n, _, d in SUMMARY_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[Row], path: Path) -> Path:
    from vqcausal.train.checkpoint import write_text_atomic

    buffer = io.StringIO()
    names = [f.name for f in dataclasses.fields(Row) if f.name not in Row.CSV_EXCLUDE]
    writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.csv_dict().items()})
    write_text_atomic(path, buffer.getvalue())
    return path


def write_per_action_csv(rows: Sequence[Row], path: Path) -> Path:
    """Long format: one line per (cell, action) with its training frequency and accuracy."""
    from vqcausal.train.checkpoint import write_text_atomic

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "cell",
            "dataset",
            "latent",
            "mode",
            "rho_or_k",
            "seed",
            "action",
            "train_frequency",
            "test_pairs",
            "accuracy_synthesis",
            "accuracy_classifier",
        ]
    )
    for r in rows:
        for action, frequency in r.frequencies.items():
            writer.writerow(
                [
                    r.cell,
                    r.dataset,
                    r.latent,
                    r.mode,
                    r.rho_or_k,
                    r.seed,
                    action,
                    frequency,
                    r.test_pairs.get(action, ""),
                    "" if r.per_action.get(action) is None else r.per_action[action],
                    ""
                    if r.classifier_per_action.get(action) is None
                    else r.classifier_per_action[action],
                ]
            )
    write_text_atomic(path, buffer.getvalue())
    return path


def _series_over(
    summaries: Sequence[Summary], metric: str, levels: Sequence[float]
) -> dict[str, list[float | None]]:
    series: dict[str, list[float | None]] = {}
    for latent in _unique(s.latent for s in summaries):
        by_level = {s.rho_or_k: s.mean[metric] for s in summaries if s.latent == latent}
        series[latent] = [by_level.get(level) for level in levels]
    return series


def _both_heads(
    summaries: Sequence[Summary], metric: str, levels: Sequence[float]
) -> dict[str, list[float | None]]:
    """A metric per latent for the synthesis head ("vq") and the learned classifier
    ("vq (classifier)", drawn dashed): a latent may lose on one head and win on the other."""
    synthesis = _series_over(summaries, metric, levels)
    classifier = _series_over(summaries, f"classifier_{metric}", levels)
    return synthesis | {f"{latent} (classifier)": ys for latent, ys in classifier.items()}


def write_figures(rows: Sequence[Row], folder: Path) -> list[Path]:
    """Per dataset: accuracy vs rho per latent (log x), held-out accuracy vs k, and every
    action's accuracy vs its training frequency (``actions`` mode cells)."""
    from vqcausal.eval import plots

    paths: list[Path] = []
    summaries = summarise(rows)

    def curve(
        these: Sequence[Summary], metric: str, name: str, xlabel: str, ylabel: str, title: str
    ) -> Path:
        """``metric`` of both retrieval heads per latent against rho or k (log x)."""
        levels = sorted({s.rho_or_k for s in these})
        series = _both_heads(these, metric, levels)
        return plots.accuracy_vs(levels, series, folder / name, xlabel, ylabel, title, logx=True)

    for dataset in _unique(s.dataset for s in summaries):
        mine = [s for s in summaries if s.dataset == dataset]
        uniform = [s for s in mine if s.mode == "actions" and s.rho_or_k == 1.0]
        for mode, what in (("actions", "action"), ("values", "factor-value")):
            these = [s for s in mine if s.mode == mode]
            if mode == "values" and these and not any(s.rho_or_k == 1.0 for s in these):
                these = uniform + these  # rho = 1 is the shared uniform cell
            if not these:
                continue
            rho = f"{what} imbalance rho (most / least frequent)"
            paths.append(
                curve(
                    these,
                    "balanced_accuracy",
                    f"accuracy_vs_rho-{dataset}-{mode}.png",
                    rho,
                    "balanced retrieval accuracy",
                    f"{dataset}: retrieval under {what} imbalance",
                )
            )
            if mode == "actions":
                paths.append(
                    curve(
                        these,
                        "rarest_accuracy",
                        f"rarest_vs_rho-{dataset}.png",
                        rho,
                        "rarest action's retrieval accuracy",
                        f"{dataset}: the rarest action ({these[0].rarest_action})",
                    )
                )
        held = [s for s in mine if s.mode == "held_out"]
        if held:
            paths.append(
                curve(
                    held,
                    "rarest_accuracy",
                    f"held_out_vs_k-{dataset}.png",
                    "distinct training pairs of the held-out action (k)",
                    "held-out action's retrieval accuracy",
                    f"{dataset}: {held[0].rarest_action} from k examples",
                )
            )
        points: dict[str, tuple[list[float], list[float | None]]] = {}
        for row in sorted(rows, key=lambda r: _latent_rank(r.latent)):
            if row.dataset == dataset and row.mode == "actions":
                xs, ys = points.setdefault(row.latent, ([], []))
                for action, frequency in row.frequencies.items():
                    xs.append(frequency)
                    ys.append(row.per_action.get(action))
        if points:
            paths.append(
                plots.scatter(
                    points,
                    folder / f"per_action_vs_frequency-{dataset}.png",
                    xlabel="training frequency of the action",
                    ylabel="per-action retrieval accuracy (synthesis)",
                    title=f"{dataset}: every action of every actions-mode cell",
                    logx=True,
                )
            )
    return paths


def write_results(sweep_dir: str | Path, rows: Sequence[Row] | None = None) -> dict[str, Any]:
    """results.csv, per_action.csv, results.md and figures/ of a sweep folder."""
    from vqcausal.train.checkpoint import write_text_atomic

    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir) if rows is None else list(rows)
    table = markdown_table(rows)
    write_text_atomic(sweep_dir / "results.md", table)
    return {
        "csv": write_csv(rows, sweep_dir / "results.csv"),
        "per_action_csv": write_per_action_csv(rows, sweep_dir / "per_action.csv"),
        "markdown": sweep_dir / "results.md",
        "figures": write_figures(rows, sweep_dir / "figures"),
        "table": table,
    }


def failure_summary(outcomes: Sequence[Outcome]) -> str | None:
    """One line naming the failed cells (None when every cell is done)."""
    failed = [o for o in outcomes if o.status == "failed"]
    if not failed:
        return None
    first = failed[0]
    return (
        f"{len(failed)} of {len(outcomes)} cells failed; first: {first.cell.name}: {first.message}"
    )


def finish(outcomes: list, start: float) -> None:
    """Close a sweep: print its wall time, raise one line if any cell failed."""
    print(f"wall time: {duration(time.monotonic() - start)}")
    problem = failure_summary(outcomes)
    if problem is not None:
        raise AblationError(problem)


def command_main(
    build_parser: Callable[[], argparse.ArgumentParser],
    body: Callable[[argparse.Namespace], None],
    argv: list[str] | None,
) -> int:
    """Parse, then run ``body`` as a vqcausal command: 0 on success, 2 on bad input or failed
    cells (one ``error:`` line), 130 on Ctrl-C; ``--help`` returns 0."""
    from vqcausal.cli import run

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a bad argument (2, already printed)
        return stop.code if isinstance(stop.code, int) else 2
    return run(lambda: body(args))
