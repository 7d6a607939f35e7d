"""Learning-rate schedules, as a pure function of the step.

The rate is recomputed from the global step before every optimizer step instead of being
kept in a scheduler object, so a resumed run continues on exactly the same curve (nothing to
save or restore) and each stage gets its own warm-up and decay.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine")


def lr_factor(schedule: str, step: int, start: int, end: int, warmup: int, final: float) -> float:
    """Multiplier of the base rate at global ``step`` of a stage spanning ``[start, end)``.

    ``cosine``: linear warm-up over ``warmup`` steps (at most a tenth of the stage), then a
    half cosine from 1 down to ``final`` at the stage's last step. ``constant``: 1 throughout.
    """
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown lr schedule '{schedule}'; choose from {', '.join(SCHEDULES)}")
    done = step - start
    warmup = min(warmup, (end - start) // 10)
    if done < warmup:
        return (done + 1) / warmup
    span = max(end - start - warmup, 1)
    progress = min(max((done - warmup) / span, 0.0), 1.0)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))
