"""What a run folder guarantees, with real processes and a real full disk.

One writer: a second training process in the same folder gets one line and writes nothing;
the lock dies with its holder, kill -9 included. SIGTERM stops training like Ctrl-C: a
checkpoint and the resume command. A full disk is one line, the last good checkpoint is kept
and the run resumes once there is space (a small tmpfs; needs root, skipped elsewhere).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_crash import argv, newest_step, only_run

from vqcausal.runs import CheckpointError, latest_checkpoint, metric_records
from vqcausal.train.checkpoint import run_lock
from vqcausal.train.run import main as train

pytestmark = pytest.mark.slow  # trains in subprocesses and signals them

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
LONG = ["--set", "train.stage1_steps=100000"]  # runs until the test stops it


@contextmanager
def training(args: list[str]) -> Iterator[subprocess.Popen]:
    """``train.py args`` as a process; killed with SIGKILL on leaving, if still running."""
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for_step(runs: Path, proc: subprocess.Popen, step: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while newest_step(runs) < step:
        assert proc.poll() is None, f"training ended early: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.1)


def test_one_writer_sigterm_checkpoints_and_kill_9_leaves_no_stale_lock(tmp_path, capsys):
    runs = tmp_path / "runs"
    with training(argv(runs) + LONG) as first:
        wait_for_step(runs, first, 20)
        run = only_run(runs)
        # a second writer: refused with one line, before it touches anything
        capsys.readouterr()
        assert train(["--resume", str(run)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is in use: another training process holds its lock" in err[0]
        with pytest.raises(CheckpointError, match="in use"), run_lock(run):
            pass
        assert first.poll() is None  # the first one trains on
        # SIGTERM (a scheduler, `timeout`, `docker stop`): a checkpoint and the resume hint
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 2, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "checkpoint saved; resume with" in lines[0], stderr
    ckpt = latest_checkpoint(run)
    assert not ckpt.finished and f"interrupted at step {ckpt.step};" in lines[0]
    # one writer: every step logged once, up to the checkpoint's step at least
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").open() if "total" in line]
    assert steps[: ckpt.step] == list(range(1, ckpt.step + 1))
    # kill -9 while holding the lock: the kernel drops it, so the next writer gets it
    with training(["--resume", str(run)]) as second:
        wait_for_step(runs, second, ckpt.step + 20)
    assert second.returncode == -signal.SIGKILL
    assert (run / ".lock").exists()  # the lock file stays; the lock does not
    with run_lock(run):
        pass
    steps = ["--set", f"train.stage1_steps={latest_checkpoint(run).step + 5}"]
    assert train(["--resume", str(run), *steps]) == 0
    assert latest_checkpoint(run).finished


def _tmpfs(path: Path, size: str) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)])
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")


def _fill(folder: Path) -> Path:
    """Write zeros until the file system is full; returns the filler file."""
    filler = folder / "filler"
    chunk = b"\0" * (1 << 16)
    with filler.open("wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
    return filler


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    _tmpfs(disk, "64m")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_is_one_line_keeps_the_checkpoint_and_resumes(small_disk, tmp_path):
    runs = small_disk / "runs"
    with training(argv(runs) + LONG) as proc:
        wait_for_step(runs, proc, 20)
        filler = _fill(small_disk)
        _, stderr = proc.communicate(timeout=240)
    run = only_run(runs)
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    # one error line; a tracker's writer thread meeting the full disk too may add a warning
    # line, before or after it (its own thread), never a traceback
    (error,) = [line for line in lines if line.startswith("error: ")]
    assert "disk is full" in error, stderr
    assert f"resume with `python train.py --resume {run}`" in error
    kept = latest_checkpoint(run)  # the last good checkpoint reads whole
    assert kept.step >= 20 and not list((run / "checkpoints").glob(".tmp-*"))
    filler.unlink()
    steps = ["--set", f"train.stage1_steps={kept.step + 5}"]
    assert train(["--resume", str(run), *steps]) == 0
    assert latest_checkpoint(run).finished


def test_damaged_metrics_lines_are_skipped_with_one_warning(tmp_path, capsys):
    log = tmp_path / "metrics.jsonl"
    good = ['{"stage": 1, "step": 1, "total": 0.5}', '{"stage": 2, "step": 3, "total": 0.25}']
    damaged = [
        "junk",
        '{"step": "3"}',
        '{"step": NaN}',
        '{"step": 1e400}',
        f'{{"step": {10**30}}}',
        '{"step": -1}',
        "[" * 100_000,
        '{"stage": 2, "st',  # a line cut by a crash
    ]
    with log.open("wb") as f:
        lines = [good[0], *damaged[:4], good[1], *damaged[4:]]
        f.write("\n".join(lines).encode() + b"\n\xff\xfe binary \x00\n")
    records = [record for _, record in metric_records(log)]
    assert [r["step"] for r in records] == [1, 3]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: {log}: skipped {len(damaged) + 1} damaged line(s)"]


def test_atomic_writes_leave_the_old_file_when_the_writer_fails(tmp_path):
    from vqcausal.atomic import atomic_path, copy_atomic, write_json_atomic, write_text_atomic

    target = tmp_path / "summary.json"
    write_json_atomic(target, {"step": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half a fi")
        raise RuntimeError("the writer died")
    assert json.loads(target.read_text()) == {"step": 1}  # the old file, whole
    write_text_atomic(target, '{"step": 2}')
    copy_atomic(target, tmp_path / "copy.json")
    assert json.loads((tmp_path / "copy.json").read_text()) == {"step": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.json", "summary.json"]
