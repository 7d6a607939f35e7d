"""No signal splits a training step: Ctrl-C and SIGTERM wait for the step to be whole (weights
and step counter), then act as they would have; ignored signals stay ignored."""

from __future__ import annotations

import os
import signal

import pytest
from conftest import run_folder

from vqcausal.runs import latest_checkpoint
from vqcausal.train import loop
from vqcausal.train.run import main as train
from vqcausal.train.signals import deferred_signals


def test_a_signal_inside_the_block_is_delivered_when_it_ends():
    done = []
    with pytest.raises(KeyboardInterrupt), deferred_signals():
        os.kill(os.getpid(), signal.SIGINT)
        done.append("the rest of the step")
    assert done == ["the rest of the step"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_signal_stops_a_stuck_block_at_once():
    done = []
    with pytest.raises(KeyboardInterrupt), deferred_signals():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        done.append("never reached")
    assert done == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_signal_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.slow  # trains a smoke run and resumes it
def test_sigterm_after_the_optimizer_step_checkpoints_that_step(tmp_path, monkeypatch):
    """SIGTERM lands right after the 7th update's ``optimizer.step()``: the checkpoint holds 7
    steps' weights and says so, and the resume trains exactly the steps left."""
    updates = []
    update = loop.Trainer._update

    def update_then_sigterm(self, *args, **kwargs):
        update(self, *args, **kwargs)
        updates.append(self.step)
        if len(updates) == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop.Trainer, "_update", update_then_sigterm)
    sets = ["train.stage1_steps=10", "train.stage2_steps=0", "train.checkpoint_every=100"]
    argv = ["--config", "configs/smoke.toml", "--set", f'runs="{tmp_path}"']
    assert train([*argv, *(a for s in sets for a in ("--set", s))]) == 2
    run = run_folder(tmp_path)
    assert latest_checkpoint(run).step == len(updates) == 7
    assert train(["--resume", str(run)]) == 0
    assert updates == list(range(10))  # each step trained once, none twice
    assert latest_checkpoint(run).finished
