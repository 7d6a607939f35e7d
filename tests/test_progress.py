"""Progress in a non-interactive log: plain lines every VQCAUSAL_PROGRESS_SECONDS (rich would
print nothing until the end), sections with their times, nothing when switched off."""

from __future__ import annotations

import io

from vqcausal.progress import Progress, duration, section
from vqcausal.sweep.engine import _status


def test_plain_lines_with_rate_eta_and_fields(monkeypatch):
    monkeypatch.setenv("VQCAUSAL_PROGRESS_SECONDS", "0")  # a line on every update
    out = io.StringIO()
    with Progress("stage 1", 4, completed=1, stream=out) as bar:
        bar.advance(loss=0.5)
        bar.advance(2, loss=0.25)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # the last update's line is not repeated at the end
    assert lines[0].startswith("stage 1: 2/4 (50%)  ") and "ETA " in lines[0]
    assert lines[0].endswith("loss 0.5000")
    assert lines[1].startswith("stage 1: 4/4 (100%)") and "ETA" not in lines[1]


def test_quiet_until_the_interval_and_off_when_asked(monkeypatch):
    out = io.StringIO()
    monkeypatch.setenv("VQCAUSAL_PROGRESS_SECONDS", "3600")
    with Progress("short job", 10, stream=out) as bar:
        bar.advance(10)
    assert out.getvalue() == ""  # a job shorter than the interval prints nothing
    monkeypatch.setenv("VQCAUSAL_PROGRESS_SECONDS", "0")
    monkeypatch.setenv("VQCAUSAL_PROGRESS", "off")
    with Progress("silenced", 10, stream=out) as bar, section("job", 1, 1, "x", out):
        bar.advance(10)
    assert out.getvalue() == ""


def test_sections_say_where_the_job_is_and_how_long_each_took():
    out = io.StringIO()
    with section("evaluate", 2, 6, "factor oracle", out):
        pass
    assert out.getvalue().splitlines() == [
        "evaluate [2/6] factor oracle ...",
        "evaluate [2/6] factor oracle: 0s",
    ]


def test_durations_and_the_sweep_status_line():
    assert [duration(s) for s in (5, 466, 3720)] == ["5s", "7m46s", "1h02m"]
    line = _status([], 36, 2, start=0.0)
    assert line.startswith("sweep: 0/36 done, 2 running, 0 failed, ") and "ETA" not in line
