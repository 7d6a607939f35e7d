"""What a sweep size and a dataset mean: the grids, the settings of every cell, evaluate's options.

Sizes: ``smoke`` (a laptop, minutes), ``cpu`` (the imbalance claim at the size 2 CPU cores
train, most of a day) and ``full`` (the paper's grid, a GPU job; about 15 GPU-hours).
"""

from __future__ import annotations

from dataclasses import dataclass

from vqcausal.config import DEFAULT_EXPERIMENT
from vqcausal.errors import VQCausalError

MODES = ("actions", "values", "held_out")
DEFAULT_MODE = "default"  # a cell with the dataset's config as it is (retrieval benchmark)
STAGE1_MODE = "stage1"  # a stage-1-only run that cells of one (dataset, latent, seed) share
#: modes whose images are the uniform config's (stage 1 reads images, never actions); the
#: ``values`` mode skews the images themselves, so its cells train their own stage 1
SHARED_STAGE1_MODES = ("actions", "held_out")
CONFIG_DIR = DEFAULT_EXPERIMENT.parent


class SweepError(VQCausalError):
    """A sweep request or sweep folder that cannot be used."""


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset's base config and the action the ``held_out`` mode holds at k pairs.

    The held-out action is one whose effect is plainly visible (a hue change, a scale step),
    so failing on it is the model's fault, not an invisible target's.
    """

    config: str  # file under configs/
    held_out_action: str


DATASETS: dict[str, DatasetSpec] = {
    "shapes3d": DatasetSpec("shapes3d.toml", "object_hue+"),
    "sprites": DatasetSpec("sprites.toml", "scale+"),
    "pendulum": DatasetSpec("pendulum_scm.toml", "light_angle+"),  # tasks/pendulum_study.py
    "toy": DatasetSpec("smoke.toml", "hue+"),  # tests and quick checks
}


@dataclass(frozen=True)
class SizeSpec:
    """A sweep size: the default grid, settings for every cell and evaluate's options.

    ``overrides`` go on top of each dataset's own config, before the cell's overrides.
    """

    datasets: tuple[str, ...]
    latents: tuple[str, ...]
    modes: tuple[str, ...]
    rhos: tuple[float, ...]
    ks: tuple[int, ...]
    seeds: tuple[int, ...]
    overrides: tuple[str, ...]
    evaluate_args: tuple[str, ...]
    jobs: int  # default parallel cells
    #: cells of one (dataset, latent, seed) start from one stage-1 run (``--stage1-from``)
    share_stage1: bool = False


#: The default model scaled down (its 8x8 code grid kept, so codes stay local) and trained
#: briefly. Measured on a 2-core CPU that other work kept busy (load average ~4), two cells
#: side by side with one thread each: a vq cell 7-9 min, a gaussian one 4.5-7.5 min,
#: training plus ``evaluate --fast`` (~1-2 min of it); the 4-cell grid took 14 min.
SMOKE_OVERRIDES = (
    "model.autoencoder.widths=[16, 32, 64]",
    "model.autoencoder.embed_dim=32",
    "model.quantizer.codebook_size=64",
    "model.transition.hidden=32",
    "model.transition.context_layers=1",
    "model.classifier_hidden=64",
    "train.stage1_steps=1200",
    "train.stage2_steps=600",
    "train.cache_pairs=4000",
    "train.eval_pairs=256",
    "train.eval_every=1000000",  # no in-training evaluation: the final one only
    "train.checkpoint_every=300",
    "train.log_every=100",
)


SIZES: dict[str, SizeSpec] = {
    "smoke": SizeSpec(
        datasets=("shapes3d",),
        latents=("vq", "gaussian"),
        modes=("actions",),
        rhos=(1.0, 100.0),
        ks=(1,),
        seeds=(0,),
        overrides=SMOKE_OVERRIDES,
        # held-out actions are drawn uniformly (transitions.balanced_test), so 1024 pairs give
        # every action ~85; --fast keeps the oracle small; the sweep reads no disentanglement
        evaluate_args=("--fast", "--pairs", "1024", "--no-disentanglement"),
        jobs=2,
    ),
    # the claim at the size a 2-core CPU trains: the causal model against both baselines at
    # three imbalances and one held-out action, three seeds, the default model with half its
    # stage 1 (6000 steps, the decay over the last fifth, as the default was until its stage 1
    # doubled) trained once per (latent, seed) and shared by that latent's four cells, and
    # 2000 stage-2 steps each. 36 cells plus 9 stage-1 runs, two side by side: ~6-7 h on 2
    # cores (the task's docstring has the measured times); a GPU, about an hour
    "cpu": SizeSpec(
        datasets=("shapes3d",),
        latents=("vq", "gaussian", "ladder"),
        modes=("actions", "held_out"),
        rhos=(1.0, 10.0, 100.0),
        ks=(16,),
        seeds=(0, 1, 2),
        overrides=(
            "train.stage1_steps=6000",
            "train.lr_decay_fraction=0.2",
            "train.stage2_steps=2000",
        ),
        evaluate_args=("--pairs", "4096", "--no-disentanglement"),
        jobs=2,
        share_stage1=True,
    ),
    "full": SizeSpec(
        datasets=("shapes3d", "sprites"),
        latents=("vq", "scm", "gaussian", "ladder"),
        modes=MODES,
        rhos=(1.0, 10.0, 100.0),
        ks=(1, 10, 100),
        seeds=(0, 1, 2),
        overrides=(),  # the default model and steps of configs/<dataset>.toml
        # held-out actions are uniform (transitions.balanced_test): 4096 pairs give every
        # action ~340 (shapes3d) to ~410 (sprites) held-out pairs
        evaluate_args=("--pairs", "4096", "--no-disentanglement"),
        # small models leave a GPU mostly idle and evaluation is CPU-bound: two cells per GPU
        # keep both busy
        jobs=2,
    ),
}
