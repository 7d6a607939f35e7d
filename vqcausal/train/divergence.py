"""A stage 1 that diverges says so: an evaluation far below the run's best so far is named.

A finite divergence does not stop training (a non-finite loss does), so without this a run
that fell from 34.8 to 27.8 dB at step ~9,150 and recovered only in part looked finished and
fine until its evaluation.
"""

from __future__ import annotations

from pathlib import Path

from vqcausal.runs import metric_records

#: a stage-1 evaluation this many dB below the best of the run so far is reported: training
#: diverged. Seen once in a 12,000-step shapes3d stage 1 at the full rate (seed 2, step ~9,150:
#: the MSE 50x, the code perplexity halved; recon 34.8 -> 27.8 dB and only 30.4 at the end)
DIVERGED_DB = 3.0


def divergence(best: float | None, psnr: float, step: int) -> str | None:
    """The warning for a stage-1 evaluation at ``psnr`` dB after a best of ``best``, if any."""
    if best is None or psnr > best - DIVERGED_DB:
        return None
    return (
        f"step {step}: reconstruction PSNR fell to {psnr:.1f} dB from the run's best "
        f"{best:.1f} dB; stage 1 diverged (a lower train.lr or a longer "
        "train.lr_decay_fraction lowers the full rate's time)"
    )


def best_recon(path: Path) -> float | None:
    """The best stage-1 reconstruction PSNR a run's ``metrics.jsonl`` holds (for a resume)."""
    if not path.exists():
        return None
    found = [
        r["eval"]["recon_psnr"]
        for _, r in metric_records(path)
        if r.get("stage") == 1 and isinstance(r.get("eval"), dict) and "recon_psnr" in r["eval"]
    ]
    return max(found, default=None)
