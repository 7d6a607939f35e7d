"""One cell's folder and the commands that bring it to ``done``: train (new or resumed), evaluate.

A cell folder holds what the cell is and its training run::

    SWEEP/<cell>/cell.json                 what the cell is (checked on re-runs)
    SWEEP/<cell>/run-<stamp>/              the training run (train.py's layout)
    SWEEP/<cell>/run-<stamp>/eval/metrics.json   vqcausal evaluate
    SWEEP/<cell>/train.log, evaluate.log   the commands' output

Every command is the ordinary one (``python -m vqcausal.train.run``, ``vqcausal evaluate``)
in a child process: a cell is re-runnable from its folder alone, on any machine that sees
it. Nothing here knows where cells run (:mod:`vqcausal.sweep.engine` does).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from vqcausal.atomic import copy_atomic, write_text_atomic
from vqcausal.errors import VQCausalError
from vqcausal.sweep.plan import Cell
from vqcausal.sweep.spec import SweepError

CELL_FILE = "cell.json"


RUN_PREFIX = "run"


ORACLE_CACHE = ".oracle"


def metrics_file(run_dir: Path) -> Path:
    return run_dir / "eval" / "metrics.json"


def _run_folders(cell_dir: Path) -> list[Path]:
    if not cell_dir.is_dir():
        return []
    return sorted(p for p in cell_dir.glob(f"{RUN_PREFIX}-*") if p.is_dir())


def find_run(cell_dir: Path) -> Path | None:
    """The cell's newest run folder that has a readable checkpoint, if any."""
    from vqcausal.runs import CheckpointError, latest_checkpoint

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
    from vqcausal.runs import latest_checkpoint

    done = evaluated_run(cell_dir)
    if done is not None:
        return CellState("done", done)
    run_dir = find_run(cell_dir)
    if run_dir is None:
        return CellState("new")
    finished = latest_checkpoint(run_dir).finished
    return CellState("evaluate" if finished else "resume", run_dir)


class Runner(Protocol):
    """Runs one command with an environment, output appended to a log; returns its exit code."""

    def __call__(self, argv: list[str], env: dict[str, str], log: Path) -> int: ...


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, before exec
    """The child gets SIGINT when the process that started it dies (a Ray worker killed with
    its node or its trial, a sweep killed with -9): training saves a checkpoint then, instead
    of running on orphaned. SIGINT is reset to its default and unblocked first: a Ray worker
    runs tasks with SIGINT blocked, and a blocked or ignored signal stays so across exec,
    where training would never see its Ctrl-C (a stopped sweep's cells trained on to the end).
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGINT)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def start_child(argv: list[str], env: dict[str, str], out: IO[str]) -> subprocess.Popen:
    """A vqcausal command as a child process of its own session, output to ``out``.

    Its own session: a Ctrl-C in the terminal reaches the sweep only, which forwards exactly
    one SIGINT (a second one would cut the checkpoint short).
    """
    out.write(f"$ {shlex.join(argv)}\n")
    out.flush()
    return subprocess.Popen(
        argv,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - only signal calls, no locks taken
    )


def interrupt(process: subprocess.Popen, grace_s: float) -> int:
    """One SIGINT (training checkpoints on it), ``grace_s`` to finish, then SIGKILL."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


class SubprocessRunner:
    """Runs a cell's commands one after another as child processes.

    ``should_stop`` is asked every ``poll_s`` seconds while a command runs (the engine's stop
    flag: Ctrl-C of the sweep, SIGTERM of a batch system); when it says yes the command gets
    one SIGINT and ``grace_s`` to save its checkpoint, so the next sweep resumes the cell.
    """

    def __init__(
        self,
        should_stop: Callable[[], bool] = lambda: False,
        poll_s: float = 1.0,
        grace_s: float = 120.0,
    ) -> None:
        self.should_stop = should_stop
        self.poll_s = poll_s
        self.grace_s = grace_s

    def __call__(self, argv: list[str], env: dict[str, str], log: Path) -> int:
        if self.should_stop():
            return 130
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as out:
            process = start_child(argv, env, out)
            try:
                while True:
                    try:
                        return process.wait(timeout=self.poll_s)
                    except subprocess.TimeoutExpired:
                        if self.should_stop():
                            return interrupt(process, self.grace_s)
            except BaseException:
                interrupt(process, self.grace_s)
                raise


def cell_env(threads: int) -> dict[str, str]:
    """This process's environment with ``threads`` torch/BLAS threads for a cell's commands
    (a GPU, if the cell has one, is already in ``CUDA_VISIBLE_DEVICES``)."""
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[key] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def train_command(cell: Cell, cell_dir: Path, python: str) -> list[str]:
    """A new run of the cell, placed in its folder (``runs`` = the cell folder)."""
    argv = [python, "-m", "vqcausal.train.run", "--config", str(cell.config_path)]
    placement = [f"runs={json.dumps(str(cell_dir))}", f"name={json.dumps(RUN_PREFIX)}"]
    placement.append(f"tags={json.dumps(cell.tags(cell_dir.parent.name))}")
    for override in (*cell.overrides, *placement):
        argv += ["--set", override]
    return argv


def resume_command(run_dir: Path, python: str) -> list[str]:
    return [python, "-m", "vqcausal.train.run", "--resume", str(run_dir)]


#: a cell's copy of the stage-1 run it starts from (not a ``run-*`` folder: never evaluated)
STAGE1_COPY = "stage1"
STAGE1_LOCK = ".stage1.lock"


def stage1_finished(run_dir: Path) -> bool:
    from vqcausal.runs import latest_checkpoint

    ckpt = latest_checkpoint(run_dir)
    return ckpt.step >= int(ckpt.meta.get("stage1_steps", 0))


def train_stage1(
    stage1: Cell, sweep_dir: Path, env: dict[str, str], runner: Runner, python: str
) -> Path:
    """The shared stage-1 run of ``stage1`` (a ``stage1``-mode cell), trained or resumed
    (``--stage 1``) if it is not finished yet. Cells that share it take its lock in turn: the
    first trains it, the others wait for it and find it done."""
    from filelock import FileLock

    cell_dir = sweep_dir / stage1.name
    write_cell_file(stage1, cell_dir)
    log = cell_dir / "train.log"
    with FileLock(cell_dir / STAGE1_LOCK):
        run_dir = find_run(cell_dir)
        if run_dir is not None and stage1_finished(run_dir):
            return run_dir
        if run_dir is None:
            for folder in _run_folders(cell_dir):  # killed before its first checkpoint
                shutil.rmtree(folder)
            argv = train_command(stage1, cell_dir, python)
        else:
            argv = resume_command(run_dir, python)
        code = runner([*argv, "--stage", "1"], env, log)
        run_dir = find_run(cell_dir)
        if code != 0 or run_dir is None or not stage1_finished(run_dir):
            error = _last_error(log)
            detail = f": {error}" if error else ""
            raise SweepError(
                f"shared stage 1 {stage1.name} failed (exit {code}){detail} [log: {log}]"
            )
        return run_dir


def copy_stage1(run_dir: Path, cell_dir: Path) -> Path:
    """A copy of a stage-1 run's newest checkpoint, records and figures in the cell folder,
    so that the cell stays re-runnable from its own folder (``--stage1-from`` reads it)."""
    from vqcausal.runs import LATEST, latest_checkpoint

    target = cell_dir / STAGE1_COPY
    if target.is_dir():
        try:
            if stage1_finished(target):
                return target
        except VQCausalError:
            pass
        shutil.rmtree(target)  # an earlier copy cut short
    partial = cell_dir / f".{STAGE1_COPY}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    ckpt = latest_checkpoint(run_dir)
    shutil.copytree(ckpt.path, partial / "checkpoints" / ckpt.path.name)
    write_text_atomic(partial / "checkpoints" / LATEST, ckpt.path.name)
    for name in ("config.toml", "metrics.jsonl", "figures"):
        source = run_dir / name
        if source.is_dir():
            shutil.copytree(source, partial / name)
        elif source.is_file():
            shutil.copyfile(source, partial / name)
    partial.rename(target)
    return target


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
            raise SweepError(f"{path}: unreadable ({err})") from None
        if not same_run(old, cell):
            changed = [
                f.name
                for f in dataclasses.fields(Cell)
                if getattr(old, f.name) != getattr(cell, f.name)
            ]
            raise SweepError(
                f"{cell_dir} was started with other settings ({', '.join(changed)} differ); "
                "use another --out or remove that folder"
            )
        return
    cell_dir.mkdir(parents=True, exist_ok=True)

    write_text_atomic(path, json.dumps(cell.to_dict(), indent=2) + "\n")


def run_cell(
    cell: Cell,
    sweep_dir: Path,
    env: dict[str, str],
    runner: Runner,
    evaluate_args: Sequence[str] = (),
    python: str = sys.executable,
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
        argv = train_command(cell, cell_dir, python)
        stage1 = cell.stage1_cell()
        if stage1 is not None:
            try:
                shared = train_stage1(stage1, sweep_dir, env, runner, python)
            except SweepError as err:
                return Outcome(cell, "failed", time.monotonic() - start, str(err))
            argv += ["--stage1-from", str(copy_stage1(shared, cell_dir))]
        code = runner(argv, env, train_log)
        run_dir = find_run(cell_dir)
        if code != 0 or run_dir is None:
            return failed("training failed", train_log, code)
    elif state.state == "resume":
        assert run_dir is not None
        code = runner(resume_command(run_dir, python), env, train_log)
        if code != 0:
            return failed("resumed training failed", train_log, code)
    assert run_dir is not None
    from vqcausal.runs import latest_checkpoint

    if not latest_checkpoint(run_dir).finished:
        return failed("training stopped before its last step", train_log)

    # The factor oracle depends on the data and its split, not on the model: evaluate trains
    # one per eval folder unless it finds one whose description matches, so hand every
    # cell the newest one. A stale one (other settings) is simply retrained by evaluate.
    eval_dir = run_dir / "eval"
    cache = sweep_dir / ORACLE_CACHE
    eval_dir.mkdir(parents=True, exist_ok=True)
    _copy_oracle(cache, eval_dir, sweep_dir)
    eval_log = cell_dir / "evaluate.log"
    code = runner(evaluate_command(run_dir, evaluate_args, python), env, eval_log)
    if code != 0 or not metrics_file(run_dir).is_file():
        return failed("evaluation failed", eval_log, code)
    _copy_oracle(eval_dir, cache, sweep_dir)
    did = {"new": "trained and evaluated", "resume": "resumed and evaluated"}
    message = did.get(state.state, "evaluated (training had finished)")
    return Outcome(cell, "done", time.monotonic() - start, message, run_dir)


ORACLE_LOCK = ".oracle.lock"


def _copy_oracle(source: Path, target: Path, sweep_dir: Path) -> None:
    """Copy the cached factor oracle files (``oracle-*``) from one folder to another.

    Its weights and description move together: cells on other processes (or machines
    sharing the folder) take the sweep's oracle lock file for the copy.
    """
    from filelock import FileLock

    with FileLock(sweep_dir / ORACLE_LOCK):
        files = [p for p in source.glob("oracle-*") if p.is_file()] if source.is_dir() else []
        if files:
            target.mkdir(parents=True, exist_ok=True)
        for path in files:
            copy_atomic(path, target / path.name)
