"""Sweeps and searches on real Ray (no mocks): a local Ray, a killed and resumed sweep, a Ray
cluster started with ``ray start``, ``vqcausal tune``, and the bad inputs refused before
anything is written. Cells are configs/smoke.toml-sized and train for seconds."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TOY_TINY

from vqcausal.config import load_config
from vqcausal.sweep import engine, results, tables
from vqcausal.sweep.cells import cell_state
from vqcausal.sweep.plan import plan
from vqcausal.sweep.tune import main as tune

pytestmark = pytest.mark.slow  # sweeps and tuning on a local Ray

ROOT = Path(__file__).resolve().parent.parent

EVALUATE_FAST = ("--fast", "--pairs", "256", "--no-disentanglement")


def sets(overrides) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def wait_for(condition, timeout: float, what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            out = process.stdout.read() if process.stdout else ""
            pytest.fail(f"the sweep ended (exit {process.returncode}) before {what}:\n{out}")
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def test_a_killed_sweep_resumes_where_it_stopped(tmp_path):
    """Kill the driver mid-sweep (SIGTERM, what a batch system sends) while one cell is
    evaluated and the other trains: the training checkpoints; the re-run skips the finished
    cell and resumes the interrupted one."""
    out = tmp_path / "sweep"
    overrides = [*TOY_TINY, "train.stage1_steps=600", "train.checkpoint_every=10"]
    argv = [sys.executable, str(ROOT / "tasks" / "imbalance_ablation.py"), "--size", "smoke"]
    argv += ["--datasets", "toy", "--latents", "vq", "--rhos", "1", "10", "--jobs", "1"]
    argv += ["--threads", "1", "--out", str(out), *sets(overrides)]
    cells = plan("smoke", datasets=["toy"], latents=["vq"], rhos=[1, 10], overrides=overrides)
    folders = [out / c.name for c in cells]

    def states() -> list[str]:
        return sorted(cell_state(f).state for f in folders)

    driver = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path
    )
    try:
        wait_for(lambda: states() == ["done", "resume"], 600, "one cell done, one mid-run", driver)
        driver.send_signal(signal.SIGTERM)
        printed, _ = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, printed
    assert "stopping: 1 running cells save their checkpoints" in printed
    assert states() == ["done", "resume"]  # the stopped training saved its last checkpoint
    done, stopped = sorted(folders, key=lambda f: cell_state(f).state != "done")

    options = engine.SweepOptions(jobs=1, threads=1, evaluate_args=EVALUATE_FAST)
    again = {o.cell.name: o for o in engine.run_sweep(cells, out, options, echo=lambda _: None)}
    assert again[done.name].status == "skipped"
    assert again[stopped.name].message == "resumed and evaluated", again[stopped.name].message
    log = (stopped / "train.log").read_text()
    assert log.count("vqcausal.train.run --config") == 1 and "--resume" in log
    assert (done / "train.log").read_text().count("$ ") == 1  # trained once, never again
    rows = results.collect(out)
    assert [r.rho_or_k for r in rows] == [1.0, 10.0]
    assert load_config(again[stopped.name].run_dir / "config.toml").train.stage1_steps == 600
    assert "| toy | vq | actions | rho=10 | 1 |" in tables.write_results(out)["table"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_cluster(tmp_path):
    """A one-node Ray cluster started as a user would (``ray start --head``), stopped after;
    yields the address and the environment its clients need.

    ``--block`` keeps the command in the foreground, in a process group of its own; ending
    that group stops this cluster only (``ray stop`` would stop every Ray of the machine,
    a developer's running sweep included). The group is waited for until it is empty, so the
    next test's Ray does not start beside a cluster still shutting down. The auth setting
    lives in the environment of the cluster and its clients only, never in this process
    (Ray keeps the first one a process sees).
    """
    ray = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    port = free_port()
    start = [ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false"]
    # a throw-away cluster on localhost: no auth token to share between head and client
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    log = (tmp_path / "ray-start.log").open("w")
    head = subprocess.Popen(
        [*start, "--block"], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )

    def answers() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    def group_alive() -> bool:
        try:
            os.killpg(head.pid, 0)
        except ProcessLookupError:
            return False
        return True

    try:
        wait_for(answers, 180, "the Ray head to listen")
        yield f"127.0.0.1:{port}", env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while group_alive() and time.monotonic() < deadline:
            head.poll()  # reaps the head once it exits; its children are reaped by init
            time.sleep(0.5)
        if group_alive():
            os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        log.close()


def test_the_same_sweep_runs_on_a_ray_cluster(tmp_path, ray_cluster):
    address, env = ray_cluster
    out = tmp_path / "sweep"
    argv = ["ablate", "--size", "smoke", "--datasets", "toy", "--latents", "vq", "--rhos", "1"]
    argv += ["--address", address, "--threads", "1", "--out", str(out), *sets(TOY_TINY)]
    vqcausal = [sys.executable, "-c", "import sys; from vqcausal.cli import main; sys.exit(main())"]
    done = subprocess.run(
        [*vqcausal, *argv], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = results.collect(out)
    assert row.cell == "toy-vq-actions-rho1-s0" and 0 <= row.balanced_accuracy <= 1
    assert (out / "results.md").is_file() and (out / "results.csv").is_file()


def test_tune_ranks_trials_and_its_best_config_trains(tmp_path, capsys):
    from vqcausal.train.run import main as train

    out = tmp_path / "search"
    steps = ["train.stage2_steps=40", "train.eval_every=20", "train.checkpoint_every=20"]
    argv = ["--config", str(ROOT / "configs" / "smoke.toml"), *sets([*TOY_TINY, *steps])]
    argv += ["--param", "train.stage2_lr=[1e-4, 3e-3]", "--search", "grid", "--out", str(out)]
    argv += ["--jobs", "2", "--threads", "1"]
    assert tune(argv) == 0, capsys.readouterr().err
    table = (out / "results.md").read_text().splitlines()
    assert table[0].startswith("| rank | trial | train.stage2_lr | retrieval_synthesis_")
    ranked = [line.split(" | ") for line in table[2:]]
    assert len(ranked) == 2 and [r[0] for r in ranked] == ["| 1", "| 2"]
    scores = [float(r[3]) for r in ranked]
    assert scores[0] >= scores[1] and all(0 <= s <= 1 for s in scores)
    # the stage-2 evaluations (steps 60 and 80) were reported; each row is its trial's best
    assert all(r[4] in ("60", "80") and r[5].startswith("done") for r in ranked)
    assert all(r[1].startswith("trial-") for r in ranked)
    assert len(list((out / "trials").glob("trial-*/checkpoints/latest"))) == 2
    best = load_config(out / "best.toml")
    assert best.train.stage2_lr == float(ranked[0][2]) and best.runs == "runs"
    assert best.train.stage1_steps == 40  # the whole resolved config, not just the searched key
    runs = tmp_path / "again"
    assert train(["--config", str(out / "best.toml"), "--set", f'runs="{runs}"']) == 0
    assert len(list(runs.glob("*/checkpoints/latest"))) == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--param", "train.no_such_key=[1, 2]"], "--param train.no_such_key=1: "),
        (["--param", "train.lr=[]"], "--param train.lr: no values to search"),
        (["--param", "train.lr=loguniform(1e-4, 1e-2)"], "needs --search random"),
        (["--param", "train.lr=[1e-3]", "--param", "train.lr=[2e-3]"], "is given twice"),
        (["--param", "runs=[1]"], "is set per trial"),
        ([], "nothing to search"),
        (["--param", "train.lr=[1e-3]", "--address", "127.0.0.1:1"], "no Ray cluster answers"),
    ],
)
def test_bad_searches_are_one_line_and_write_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "search"
    config = ["--config", str(ROOT / "configs" / "smoke.toml")]
    assert tune([*config, *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()


def test_bad_sweeps_are_one_line_and_write_nothing(tmp_path, capsys):
    from vqcausal.cli import main as cli

    out = tmp_path / "sweep"
    base = ["ablate", "--size", "smoke", "--datasets", "toy", "--latents", "vq", "--rhos", "1"]
    assert cli([*base, "--out", str(out), "--address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no Ray cluster answers at 127.0.0.1:1")
    assert cli([*base, "--out", str(out), "--address", "nohost"]) == 2
    assert "--address wants auto, HOST:PORT" in capsys.readouterr().err
    assert not out.exists()
