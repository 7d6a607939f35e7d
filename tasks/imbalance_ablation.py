"""Imbalance ablation: do the latents keep retrieving *rare* actions when training is skewed?

Trains one ordinary run per cell (dataset, latent, mode, rho or k, seed), evaluates each with
``vqcausal evaluate`` and tabulates held-out retrieval, with the rarest action singled out.
Modes: ``actions`` (action frequencies 1 .. 1/rho), ``values`` (every factor's values skewed
1 .. 1/rho), ``held_out`` (one action held at k distinct training pairs). The library behind it
is :mod:`vqcausal.sweep` (cells run as Ray tasks: ``--address`` sends them to a cluster).

    python tasks/imbalance_ablation.py --size smoke                  # 2-core CPU: ~14 min
    python tasks/imbalance_ablation.py --size cpu                    # 2-core CPU: 6-16 h
    python tasks/imbalance_ablation.py --size full                   # the study, on a GPU
    python tasks/imbalance_ablation.py --size full --modes actions --latents vq gaussian
    python tasks/imbalance_ablation.py --size full --address auto    # on a running Ray cluster

Runtime. ``smoke`` (shapes3d; vq and gaussian; rho 1 and 100; one seed; a small model,
1200 + 600 steps; ``evaluate --fast``): 4 cells, two at a time with one thread each; it took
14 minutes end to end on a 2-core CPU that other work kept busy (load average ~4).
``full`` (shapes3d and sprites; vq, scm, gaussian, ladder; actions and values at rho 1, 10,
100, held_out at k 1, 10, 100; seeds 0, 1, 2; the default models and steps, shapes3d
12000 + 2500, sprites 6000 + 3000): 192 cells. On one H100 with two cells side by side (the
default ``--jobs 2``), a cell at 1500 + 750 steps took 5m46s: ~1 min training, ~4.5 min
``vqcausal evaluate`` (its disentanglement scores alone ~4 min, on the CPU); at the default
steps that is ~9 - 11 min per two cells (extrapolated), so ~15 - 17 hours for the whole grid
on one GPU, less on a cluster of GPUs
(``--address``; two cells share a GPU, ``--gpus-per-cell``) or fewer cells (``--modes
actions`` alone is 72 cells). On a 2-core CPU a full cell takes most of an hour: use a GPU.
Each job gets cores / jobs torch threads; on a machine that
other work keeps busy, ``--threads 1`` is safer (a toy cell once ran 6x slower with two
threads than with one while other processes loaded both cores).

``cpu`` is the claim at the size a 2-core CPU trains (the README's Rare actions grid):
shapes3d, ``vq`` against ``gaussian`` and ``ladder``, ``actions`` at rho 1, 10, 100 and
``held_out`` at k = 16, seeds 0, 1, 2 (36 cells), the default model with half its stage 1
(6000 steps, the decay over the last fifth: the default's stage 1 before it doubled; the
grid's cells compare with each other, not with the default run) and 2000 stage-2 steps per
cell. Stage 1 never reads an action, so the cells of one
(latent, seed) share one stage-1 run (a ``stage1`` cell folder, trained with ``train.py
--stage 1`` by the first cell that needs it; the others wait for it and each starts from a
copy of it with ``train.py --stage1-from``): 9 stage-1 runs instead of 36. Measured two side
by side at one thread each: a ``vq`` stage 1 takes 20 min, a ``vq`` cell on it ~28 min with
the default's wide transition (encoding the 80,000 cached pairs ~3.5 min, stage 2 ~21 min,
``vqcausal evaluate`` ~3 min; ~21 min with the narrow one); alone on 2 cores a ``gaussian``
stage 1 took 12 min and its cell 7: some 6 - 7 hours for the grid (all on a 2-core AMD EPYC
with AVX-512; one with AVX2 only ran a ``vq`` stage 1 in 53 min and its stage 2 at 0.6 steps/s,
two side by side, ~2.6x as long: ~16 hours), so run it overnight or on a GPU (``--set
train.mixed_precision=bf16``), or one axis at a time (``--seeds 0 --rhos 1 100``).
The sweep starts one cell of each stage-1 group first, so two slots rarely wait on one stage 1.
``values`` cells skew the images themselves and train their own stage 1.

Stage 2 of every cell samples its cached pairs balanced by action and also trains on every
pair reversed (``train.balance_actions``, ``train.reverse_pairs``, both on by default): a
rare action is drawn as often as a common one, and learns from its opposite's pairs too. In
the ``held_out`` mode that means the held-out action still sees its opposite's pairs
reversed; ``--set train.reverse_pairs=false`` measures it on its own k pairs alone.

Resumable: re-run the same command after a crash or Ctrl-C; evaluated cells are skipped,
unfinished runs resume from their newest checkpoint. ``--set KEY=VALUE`` goes to every
cell's config (e.g. ``--set train.mixed_precision=bf16`` on a GPU); a cell folder started with
other settings is refused rather than mixed.

Output in ``--out`` (default ``runs/imbalance_ablation-<size>``): ``results.md`` (the table
printed at the end: mean ± std over seeds per dataset, latent, mode and rho or k),
``results.csv`` (one row per cell), ``per_action.csv`` (one row per cell and action) and
``figures/``:

* ``accuracy_vs_rho-<dataset>-<mode>.png``: balanced held-out retrieval accuracy
  (synthesis) against rho (log x), one line per latent: how fast each latent degrades as
  the data get more skewed;
* ``rarest_vs_rho-<dataset>.png``: the rarest action's accuracy against rho: the claim
  itself (a flat line = rare actions are retrieved as well as common ones);
* ``held_out_vs_k-<dataset>.png``: the held-out action's accuracy against its k training
  pairs;
* ``per_action_vs_frequency-<dataset>.png``: every action of every ``actions`` cell, its
  accuracy against its training frequency (log x), coloured by latent.
"""

from __future__ import annotations

import sys

from vqcausal.sweep.command import main

if __name__ == "__main__":
    sys.exit(main())
