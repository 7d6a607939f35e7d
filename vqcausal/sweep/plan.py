"""Cells and the planner: which training runs a sweep is made of, each with its ``--set`` overrides.

    cell = (dataset, latent, mode, rho or k, seed)

Modes: ``actions`` (action frequencies fall geometrically from 1 to 1/rho), ``values``
(every factor's values skewed the same way), ``held_out`` (one action held at k distinct
training pairs) and ``default`` (the dataset's config as it is: benchmarks and studies).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqcausal.sweep.spec import (
    CONFIG_DIR,
    DATASETS,
    DEFAULT_MODE,
    MODES,
    SHARED_STAGE1_MODES,
    SIZES,
    STAGE1_MODE,
    SweepError,
)


def level_text(level: float) -> str:
    return str(int(level)) if float(level).is_integer() else f"{level:g}"


@dataclass(frozen=True)
class Cell:
    """One training run of the sweep and the ``--set`` overrides that realise it.

    ``level`` is rho for the ``actions`` / ``values`` modes and k for ``held_out``. The name
    is stable (it names the cell's folder), so a re-run finds the cell's earlier work.
    ``variant`` names a set of overrides a study compares (a row of its table); it leads the
    name, so every variant of every cell runs in one sweep, as many at once as the slots allow.
    """

    dataset: str
    latent: str
    mode: str
    level: float
    seed: int
    config: str  # base config, a file under configs/ (or an absolute path)
    overrides: tuple[str, ...]
    variant: str = ""
    #: the overrides of the stage-1 run this cell shares with its (dataset, latent, seed)
    #: siblings (``SizeSpec.share_stage1``); empty: the cell trains its own stage 1
    stage1_overrides: tuple[str, ...] = ()

    @property
    def level_key(self) -> str:
        return "k" if self.mode == "held_out" else "rho"

    @property
    def name(self) -> str:
        prefix = f"{self.variant}-" if self.variant else ""
        if self.mode in (DEFAULT_MODE, STAGE1_MODE):
            return f"{prefix}{self.dataset}-{self.latent}-{self.mode}-s{self.seed}"
        level = f"{self.level_key}{level_text(self.level)}"
        return f"{prefix}{self.dataset}-{self.latent}-{self.mode}-{level}-s{self.seed}"

    @property
    def config_path(self) -> Path:
        path = Path(self.config)
        return path if path.is_absolute() else CONFIG_DIR / path

    def stage1_cell(self) -> Cell | None:
        """The cell that trains the stage 1 this cell starts from (None: it trains its own)."""
        if not self.stage1_overrides:
            return None
        return Cell(
            self.dataset,
            self.latent,
            STAGE1_MODE,
            0.0,
            self.seed,
            self.config,
            self.stage1_overrides,
            self.variant,
        )

    def tags(self, sweep: str) -> list[str]:
        """Tracker labels of the cell's run, so a dashboard groups a sweep's runs."""
        plain = self.mode in (DEFAULT_MODE, STAGE1_MODE)
        level = "" if plain else f"{self.level_key}={level_text(self.level)}"
        tags = [f"sweep={sweep}", f"dataset={self.dataset}", f"latent={self.latent}"]
        tags += [f"mode={self.mode}", *([level] if level else []), f"seed={self.seed}"]
        return tags + ([f"variant={self.variant}"] if self.variant else [])

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["overrides"] = list(self.overrides)
        data["stage1_overrides"] = list(self.stage1_overrides)
        data["name"] = self.name
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cell:
        try:
            return cls(
                dataset=str(data["dataset"]),
                latent=str(data["latent"]),
                mode=str(data["mode"]),
                level=float(data["level"]),
                seed=int(data["seed"]),
                config=str(data["config"]),
                overrides=tuple(str(o) for o in data["overrides"]),
                variant=str(data.get("variant", "")),
                stage1_overrides=tuple(str(o) for o in data.get("stage1_overrides", ())),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise SweepError(f"damaged cell description ({err})") from None


def unique(values: Iterable[Any]) -> list[Any]:
    seen: list[Any] = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


_SOURCES: dict[str, Any] = {}


def _source(dataset: str):
    """The dataset's source as its base config describes it (cached: planning renders nothing)."""
    if dataset not in _SOURCES:
        from vqcausal.config import load_config
        from vqcausal.data.registry import load_source

        config = load_config(CONFIG_DIR / DATASETS[dataset].config)
        _SOURCES[dataset] = load_source(config.data)
    return _SOURCES[dataset]


def _check_choice(kind: str, values: Sequence[str], known: Iterable[str]) -> None:
    known = list(known)
    for value in values:
        if value not in known:
            raise SweepError(f"unknown {kind} '{value}'; choose from {', '.join(known)}")


def mode_overrides(mode: str, level: float, held_out_action: str) -> list[str]:
    """The transition settings that realise one (mode, rho or k)."""
    if mode == "actions":
        return [f"transitions.imbalance={float(level)!r}"]
    if mode == "values":
        return [f"transitions.value_imbalance={float(level)!r}"]
    if mode == "held_out":
        return [
            f"transitions.rare_action={json.dumps(held_out_action)}",
            f"transitions.rare_examples={int(level)}",
        ]
    if mode == DEFAULT_MODE:
        return []
    raise SweepError(f"unknown mode '{mode}'; choose from {', '.join(MODES)}")


#: config keys a cell sets itself: a user override of one would make the cell's name lie
CELL_KEYS = {
    "seed": "--seeds",
    "model.latent": "--latents",
    "data.dataset": "--datasets",
    "transitions.imbalance": "--modes actions --rhos",
    "transitions.value_imbalance": "--modes values --rhos",
    "transitions.rare_action": "--held-out-action",
    "transitions.rare_examples": "--modes held_out --ks",
    "runs": "--out",
    "name": "--out",
}


def check_user_overrides(overrides: Sequence[str]) -> None:
    """Refuse ``--set`` of a key the sweep sets per cell (say which option to use instead)."""
    from vqcausal.config import parse_override

    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if key in CELL_KEYS:
            raise SweepError(
                f"--set {key}=... is set per cell by the sweep; use {CELL_KEYS[key]} instead"
            )


def stage1_settings(overrides: Sequence[str]) -> list[str]:
    """The overrides a stage-1 run needs: those of keys that stage 1 reads."""
    from vqcausal.config import parse_override
    from vqcausal.train.shared_stage1 import stage2_only

    return [o for o in overrides if not stage2_only(".".join(parse_override(o)[0]))]


def make_cell(
    size: str,
    dataset: str,
    latent: str,
    mode: str,
    level: float,
    seed: int,
    overrides: Sequence[str] = (),
    held_out_action: str | None = None,
) -> Cell:
    """One cell: size settings, then mode, latent and seed, then the user's overrides (last,
    so they win; overriding the latent or seed there would make the name lie).

    Where the size shares stage 1 and the mode leaves the images alone (``actions``,
    ``held_out``: stage 1 never reads an action), the cell also names the stage-1 run it
    starts from: the same settings without the mode's."""
    spec = DATASETS[dataset]
    # what a latent takes from the data (scm: its concepts) the run fills in itself
    common = [f"model.latent={json.dumps(latent)}", f"seed={int(seed)}", *overrides]
    mode_sets = mode_overrides(mode, level, held_out_action or spec.held_out_action)
    sets = [*SIZES[size].overrides, *mode_sets, *common]
    shared = SIZES[size].share_stage1 and mode in SHARED_STAGE1_MODES
    # a user's stage-2 settings stay out of the stage-1 run, so sweeps of stage-2 levers can
    # share one (copy its folder into theirs)
    stage1 = (*SIZES[size].overrides, *stage1_settings(common)) if shared else ()
    return Cell(
        dataset,
        latent,
        mode,
        float(level),
        int(seed),
        spec.config,
        tuple(sets),
        stage1_overrides=tuple(stage1),
    )


def plan(
    size: str = "smoke",
    datasets: Sequence[str] | None = None,
    latents: Sequence[str] | None = None,
    modes: Sequence[str] | None = None,
    rhos: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    ks: Sequence[int] | None = None,
    overrides: Sequence[str] = (),
    held_out_actions: dict[str, str] | None = None,
) -> list[Cell]:
    """The cells of a sweep; any grid axis left as None takes the size's default.

    Cells come seed-major (all of seed 0 first), so a sweep stopped half-way already has a
    complete table for its first seeds. ``values`` at rho = 1 is the ``actions`` rho = 1 cell
    (the same uniform config) and is only planned on its own when ``actions`` is not.
    """
    from vqcausal.models.base import LATENTS

    if size not in SIZES:
        raise SweepError(f"unknown size '{size}'; choose from {', '.join(SIZES)}")
    spec = SIZES[size]
    datasets = unique(spec.datasets if datasets is None else datasets)
    latents = unique(spec.latents if latents is None else latents)
    modes = unique(spec.modes if modes is None else modes)
    rhos = unique(float(r) for r in (spec.rhos if rhos is None else rhos))
    ks = unique(int(k) for k in (spec.ks if ks is None else ks))
    seeds = unique(int(s) for s in (spec.seeds if seeds is None else seeds))
    _check_choice("dataset", datasets, DATASETS)
    _check_choice("latent", latents, LATENTS)
    _check_choice("mode", modes, MODES)
    for name, axis in (("dataset", datasets), ("latent", latents), ("mode", modes)):
        if not axis:
            raise SweepError(f"no {name} to run")
    if not seeds:
        raise SweepError("no seed to run")
    if any(s < 0 for s in seeds):
        raise SweepError("seeds must be >= 0")
    if {"actions", "values"} & set(modes):
        if not rhos:
            raise SweepError("no rho to run")
        bad = [r for r in rhos if not (math.isfinite(r) and r >= 1)]
        if bad:
            raise SweepError(f"rho must be a finite number >= 1 (1 = uniform), got {bad[0]:g}")
    if "held_out" in modes:
        if not ks:
            raise SweepError("no k to run")
        if any(k < 1 for k in ks):
            raise SweepError("k (training pairs of the held-out action) must be >= 1")
    check_user_overrides(overrides)
    held_out_actions = dict(held_out_actions or {})
    _check_choice("dataset", list(held_out_actions), DATASETS)
    for dataset in datasets:
        if "held_out" in modes or dataset in held_out_actions:
            action = held_out_actions.get(dataset, DATASETS[dataset].held_out_action)
            names = list(_source(dataset).space.action_names)
            if action not in names:
                raise SweepError(
                    f"{dataset} has no action '{action}'; choose from {', '.join(names)}"
                )

    cells: list[Cell] = []
    for seed in seeds:
        for dataset in datasets:
            for mode in modes:
                levels: list[float] = list(ks) if mode == "held_out" else list(rhos)
                for level in levels:
                    if mode == "values" and level == 1.0 and "actions" in modes:
                        continue  # the same uniform config as actions at rho = 1
                    for latent in latents:
                        cells.append(
                            make_cell(
                                size,
                                dataset,
                                latent,
                                mode,
                                level,
                                seed,
                                overrides,
                                held_out_actions.get(dataset),
                            )
                        )
    from vqcausal.config import load_config

    for cell in cells:  # an unknown key or wrong type fails here, not in every cell's training
        load_config(cell.config_path, list(cell.overrides))
        if cell.stage1_overrides:
            load_config(cell.config_path, list(cell.stage1_overrides))
    return cells


def default_cells(
    size: str,
    datasets: Sequence[str],
    latents: Sequence[str] = ("vq",),
    seeds: Sequence[int] = (0,),
    overrides: Sequence[str] = (),
) -> list[Cell]:
    """Cells that train each dataset's config as it is (the retrieval benchmark)."""
    from vqcausal.models.base import LATENTS

    if size not in SIZES:
        raise SweepError(f"unknown size '{size}'; choose from {', '.join(SIZES)}")
    _check_choice("dataset", datasets, DATASETS)
    _check_choice("latent", latents, LATENTS)
    check_user_overrides(overrides)
    if not datasets or not latents or not seeds:
        raise SweepError("nothing to run: give at least one dataset, latent and seed")
    return [
        make_cell(size, dataset, latent, DEFAULT_MODE, 1.0, seed, overrides)
        for seed in unique(int(s) for s in seeds)
        for dataset in unique(datasets)
        for latent in unique(latents)
    ]
