"""Learning-rate schedules, as a pure function of the step.

The rate is recomputed from the global step before every optimizer step instead of being
kept in a scheduler object, so a resumed run continues on exactly the same curve (nothing to
save or restore) and each stage gets its own warm-up and decay.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "wsd")


def lr_factor(
    schedule: str,
    step: int,
    start: int,
    end: int,
    warmup: int,
    final: float,
    decay_fraction: float,
) -> float:
    """Multiplier of the base rate at global ``step`` of a stage spanning ``[start, end)``.

    ``constant``: 1 throughout. ``cosine``: linear warm-up over ``warmup`` steps (at most a
    tenth of the stage), then a half cosine from 1 down to ``final`` at the stage's last step.
    ``wsd`` (warm-up, stable, decay): the same warm-up, 1 until the last ``decay_fraction`` of
    the stage, then a straight line down to ``final`` at its last step. A budget-bound run
    keeps its full rate for most of the stage (a cosine gives up progress from the middle on)
    and still ends on a low rate, which settles the weights instead of stopping mid-step.
    """
    if schedule == "constant":
        return 1.0
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule '{schedule}'; choose from {', '.join(SCHEDULES)}")
    done = step - start
    length = end - start
    warmup = min(warmup, length // 10)
    if done < warmup:
        return (done + 1) / warmup
    if schedule == "wsd":
        decay = max(round(length * decay_fraction), 1)
        into_decay = done - (length - decay) + 1  # 1 on the first decaying step, decay on the last
        if into_decay <= 0:
            return 1.0
        return 1 - (1 - final) * min(into_decay / decay, 1.0)
    span = max(length - warmup, 1)
    progress = min(max((done - warmup) / span, 0.0), 1.0)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))
