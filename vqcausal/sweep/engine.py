"""Running a sweep's cells on Ray: one Ray task per cell, on this machine or on a cluster.

With no address a local Ray is started for the sweep with ``jobs x threads`` CPUs, so at
most ``jobs`` cells train at once, each with ``threads`` torch threads (cores / jobs by
default: several processes each using every core thrash it). ``--address auto`` or
``ray://host:10001`` sends the same cells to a running cluster, whose resources decide how
many run at once; the sweep folder must then be on storage every node sees, and vqcausal
installed the same way on every node.

Each task brings its cell to ``done`` with the ordinary commands in child processes
(:func:`vqcausal.sweep.cells.run_cell`), so the guarantees are the cell folder's: a re-run
skips evaluated cells, resumes stopped runs from their newest checkpoint and only evaluates
finished ones. A stop (Ctrl-C, SIGTERM) writes a stop file that every task polls; each sends its
running command one SIGINT, training checkpoints, and the sweep waits for that before Ray
goes down. A child whose worker dies anyway gets the same SIGINT from the kernel.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqcausal.progress import duration, interval
from vqcausal.progress import enabled as progress_enabled
from vqcausal.sweep.cells import CELL_FILE, Outcome, SubprocessRunner, cell_env, run_cell
from vqcausal.sweep.plan import Cell
from vqcausal.sweep.spec import SweepError

LOCK_FILE = ".sweep.lock"
#: written by a stopping sweep, polled by its cells: a file, so that it reaches every node that
#: sees the sweep folder with nothing else to start (an actor took a minute to come up on a
#: busy machine, too late for a stop)
STOP_FILE = ".stop"
#: seconds a stopped sweep waits for its cells' checkpoints before Ray goes down
STOP_GRACE_S = 150.0
#: GPUs per cell where the cluster has GPUs: small models leave a GPU mostly idle and
#: evaluation is CPU-bound, so two cells share one
GPUS_PER_CELL = 0.5
CLUSTER_THREADS = 2  # threads per cell on a cluster unless told


@dataclass
class SweepOptions:
    """Where and how cells run."""

    jobs: int | None = None  # cells at once on a local Ray (default 1); a cluster: all it fits
    threads: int | None = None  # torch threads (Ray CPUs) per cell
    gpus_per_cell: float | None = None  # default: GPUS_PER_CELL where there are GPUs, else 0
    evaluate_args: tuple[str, ...] = ()
    address: str | None = None  # None: a local Ray for this sweep

    def __post_init__(self) -> None:
        if self.jobs is not None and self.jobs < 1:
            raise SweepError(f"--jobs must be >= 1, got {self.jobs}")
        if self.threads is not None and self.threads < 1:
            raise SweepError(f"--threads must be >= 1, got {self.threads}")
        if self.gpus_per_cell is not None and not 0 <= self.gpus_per_cell <= 64:
            raise SweepError(f"--gpus-per-cell must be from 0 to 64, got {self.gpus_per_cell}")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def check_address(address: str) -> None:
    """Refuse an address no Ray answers at, in seconds (``ray.init`` waits minutes on one)."""
    if address == "auto":
        return  # ray.init says at once when no cluster runs here
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(f"--address wants auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as err:
        raise SweepError(f"no Ray cluster answers at {address} ({err.strerror or err})") from None


@dataclass(frozen=True)
class Resources:
    """What each cell asks Ray for."""

    threads: int
    gpus: float


@contextlib.contextmanager
def ray_session(options: SweepOptions) -> Iterator[Resources]:
    """Connect to the cluster at ``options.address``, or start a local Ray sized for the
    sweep; shut down what was started here on the way out (a Ray already initialised in this
    process, e.g. by a caller, is used as it is and left running)."""
    import ray

    if options.address is not None:
        check_address(options.address)
    started = not ray.is_initialized()
    local = options.address is None
    jobs = options.jobs or 1
    default_threads = max(1, usable_cores() // jobs) if local else CLUSTER_THREADS
    threads = options.threads or default_threads
    # no usage report from a user's sweep unless they ask for one (and none offline)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray gives a new local GCS 20 s to answer; a 2-core machine busy with a sweep (or a
    # cluster still shutting down) can take longer, and a user can still set it lower
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "90")
    if started:
        if local:
            # "local": a Ray of its own even where a cluster runs (ray.init() would join it)
            kwargs: dict[str, Any] = {"address": "local", "num_cpus": jobs * threads}
        else:
            kwargs = {"address": options.address}
        try:
            ray.init(
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
                namespace="vqcausal",
                **kwargs,
            )
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise SweepError(f"cannot start or reach Ray: {str(err).splitlines()[0]}") from None
    try:
        has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        gpus = options.gpus_per_cell
        if gpus is None:
            gpus = GPUS_PER_CELL if has_gpus else 0.0
        yield Resources(threads, gpus)
    finally:
        if started:
            ray.shutdown()


def _cell_task(cell: Cell, sweep_dir: str, threads: int, evaluate_args: tuple[str, ...]) -> Outcome:
    """Body of one cell's Ray task (runs on whichever node Ray picks)."""
    folder = Path(sweep_dir)
    runner = SubprocessRunner(lambda: (folder / STOP_FILE).exists())
    try:
        return run_cell(cell, folder, cell_env(threads), runner, evaluate_args)
    except (SweepError, OSError) as err:  # this cell's folder is unusable: the others go on
        return Outcome(cell, "failed", 0.0, str(err))


class _SweepLock:
    """One sweep per folder at a time: two would train the same cells twice. An OS lock
    (flock): the kernel drops it however the sweep ends, kill -9 included."""

    def __init__(self, sweep_dir: Path) -> None:
        from filelock import FileLock

        self.lock = FileLock(sweep_dir / LOCK_FILE, timeout=0)
        self.folder = sweep_dir

    def __enter__(self) -> _SweepLock:
        from filelock import Timeout

        try:
            self.lock.acquire()
        except Timeout:
            raise SweepError(
                f"another sweep is running in {self.folder}; wait for it or stop it"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


@contextlib.contextmanager
def _stoppable() -> Iterator[None]:
    """SIGTERM (``kill``, a batch system's time limit) stops the sweep like Ctrl-C does.

    A sweep started in the background (``&``, nohup) has SIGINT *ignored*; it is handled
    here so that Ctrl-C-like stops work there too.
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


def check_cells(cells: Sequence[Cell], sweep_dir: Path) -> None:
    """Refuse duplicate cells, and a folder another plan's cells started, before anything runs."""
    from vqcausal.sweep.cells import write_cell_file

    names = [cell.name for cell in cells]
    if len(set(names)) != len(names):
        raise SweepError("two cells share a name; check the grid for duplicates")
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise SweepError(f"{sweep_dir} is a file; --out names the sweep folder")
    for cell in cells:
        if (sweep_dir / cell.name / CELL_FILE).exists():
            write_cell_file(cell, sweep_dir / cell.name)  # only checks an existing one


def stage1_first(cells: Sequence[Cell]) -> list[Cell]:
    """The cells in the order to start them: first one cell of each shared stage 1 (it trains
    that stage 1), then the rest in their order. Cells that share a stage 1 wait for it while
    the first trains it, so starting two of them side by side would leave a slot idle."""
    seen: set[Cell] = set()
    first, rest = [], []
    for cell in cells:
        stage1 = cell.stage1_cell()
        if stage1 is not None and stage1 not in seen:
            seen.add(stage1)
            first.append(cell)
        else:
            rest.append(cell)
    return first + rest


def run_sweep(
    cells: Sequence[Cell],
    sweep_dir: str | Path,
    options: SweepOptions | None = None,
    echo: Callable[[str], None] = print,
) -> list[Outcome]:
    """Run every cell as a Ray task until each is done or has failed.

    A failed cell does not stop the others; its outcome says why and where its log is.
    Ctrl-C / SIGTERM stops the running cells (they checkpoint) and re-raises.
    """
    import ray

    options = options or SweepOptions()
    sweep_dir = Path(sweep_dir).absolute()
    check_cells(cells, sweep_dir)
    start = time.monotonic()
    outcomes: list[Outcome] = []
    with ray_session(options) as resources:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with _SweepLock(sweep_dir), _stoppable():
            stop = sweep_dir / STOP_FILE
            stop.unlink(missing_ok=True)  # left by a sweep that was killed while stopping
            task = ray.remote(_cell_task).options(
                num_cpus=resources.threads, num_gpus=resources.gpus, max_retries=2
            )
            where = options.address or f"a local Ray, {options.jobs or 1} at a time"
            threads = f"{resources.threads} thread{'s' if resources.threads > 1 else ''}"
            gpus = f", {resources.gpus:g} GPU" if resources.gpus else ""
            echo(f"{len(cells)} cells on {where}: {threads}{gpus} each")
            args = (str(sweep_dir), resources.threads, tuple(options.evaluate_args))
            pending = {task.remote(cell, *args): cell for cell in stage1_first(cells)}
            slots = max(1, int(ray.cluster_resources().get("CPU", 1) // resources.threads))
            try:
                while pending:
                    wait = (interval() if progress_enabled() else 0) or None  # None: no status
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=wait)
                    if not ready:  # nothing finished for a while: say where the sweep is
                        echo(_status(outcomes, len(cells), min(len(pending), slots), start))
                    for ref in ready:
                        cell = pending.pop(ref)
                        outcome = _result(ref, cell)
                        outcomes.append(outcome)
                        echo(_progress(outcome, outcomes, len(cells), start))
            except BaseException:
                echo(f"stopping: {len(pending)} running cells save their checkpoints")
                stop.touch()
                ray.wait(list(pending), num_returns=len(pending), timeout=STOP_GRACE_S)
                stop.unlink(missing_ok=True)
                raise
    order = {cell.name: i for i, cell in enumerate(cells)}
    return sorted(outcomes, key=lambda o: order[o.cell.name])


def _result(ref: Any, cell: Cell) -> Outcome:
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayError as err:  # its worker or node died, after Ray's retries
        lines = [line for line in str(err).splitlines() if line.strip()]
        return Outcome(cell, "failed", 0.0, f"Ray: {lines[-1] if lines else type(err).__name__}")


def _eta(outcomes: list[Outcome], total: int, start: float) -> str | None:
    """Time left at the mean time of the cells that ran (skipped ones took none); None before
    any ran or after the last."""
    worked = sum(o.status != "skipped" for o in outcomes)
    left = total - len(outcomes)
    if not (left and worked):
        return None
    return duration((time.monotonic() - start) / worked * left)


def _status(outcomes: list[Outcome], total: int, running: int, start: float) -> str:
    """``sweep: 3/36 done, 2 running, 0 failed, 41m elapsed, ETA 5h10m`` between cells."""
    failed = sum(o.status == "failed" for o in outcomes)
    text = f"sweep: {len(outcomes)}/{total} done, {running} running, {failed} failed, "
    text += f"{duration(time.monotonic() - start)} elapsed"
    eta = _eta(outcomes, total, start)
    return text + (f", ETA {eta}" if eta else "")


def _progress(outcome: Outcome, outcomes: list[Outcome], total: int, start: float) -> str:
    """``[done/total] cell: what happened``, with the failures so far and an ETA."""
    head = f"[{len(outcomes)}/{total}] {outcome.cell.name}:"
    if outcome.status == "skipped":
        text = f"{head} skipped (already evaluated)"
    elif outcome.status == "done":
        text = f"{head} {outcome.message} in {duration(outcome.seconds)}"
    else:
        text = f"{head} FAILED: {outcome.message}"
    failed = sum(o.status == "failed" for o in outcomes)
    extra = [f"{failed} failed"] if failed else []
    eta = _eta(outcomes, total, start)
    if eta:
        extra.append(f"ETA {eta}")
    return text + (f" ({', '.join(extra)})" if extra else "")
