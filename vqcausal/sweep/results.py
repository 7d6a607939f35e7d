"""Collecting a sweep: one row of headline numbers per evaluated cell, read from its folder."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqcausal.sweep.cells import CELL_FILE, evaluated_run, metrics_file
from vqcausal.sweep.plan import Cell
from vqcausal.sweep.spec import DEFAULT_MODE, MODES, SweepError


@dataclass
class Row:
    """One evaluated cell's headline numbers (synthesis retrieval unless named classifier).

    The rarest action is the one with the lowest training frequency; ties (uniform
    frequencies) go to the action ``action_order`` puts last, the one that becomes rarest
    under action imbalance, so rho = 1 gives the baseline of the same action. In the
    ``held_out`` mode it is the held-out action.
    """

    cell: str
    dataset: str
    latent: str
    mode: str
    rho_or_k: float
    seed: int
    balanced_accuracy: float | None
    accuracy: float | None
    worst_action_accuracy: float | None
    rarest_action: str
    rarest_frequency: float | None
    rarest_accuracy: float | None
    rarest_test_pairs: int | None
    classifier_balanced_accuracy: float | None
    classifier_rarest_accuracy: float | None
    counterfactual_psnr: float | None
    atomicity: float | None
    # atomicity of the rarest action's counterfactuals, and the mean over the other actions:
    # a rare action is kept when the two are close
    rarest_atomicity: float | None
    common_atomicity: float | None
    oracle_accuracy: float | None  # how far atomicity can be trusted
    recon_psnr: float | None
    run: str
    per_action: dict[str, float | None] = field(default_factory=dict, repr=False)
    classifier_per_action: dict[str, float | None] = field(default_factory=dict, repr=False)
    test_pairs: dict[str, int] = field(default_factory=dict, repr=False)
    frequencies: dict[str, float] = field(default_factory=dict, repr=False)

    CSV_EXCLUDE = ("per_action", "classifier_per_action", "test_pairs", "frequencies")

    def csv_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in Row.CSV_EXCLUDE}


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


_FREQUENCIES: dict[str, dict[str, float]] = {}


def action_frequencies(config: Any) -> dict[str, float]:
    """Training frequency of each action by name, from the run's own transition sampler."""
    from vqcausal.data.registry import load_source
    from vqcausal.data.transitions import TransitionSampler

    key = json.dumps(
        [dataclasses.asdict(config.data), dataclasses.asdict(config.transitions)], sort_keys=True
    )
    if key not in _FREQUENCIES:
        source = load_source(config.data)
        sampler = TransitionSampler(source, config.transitions)
        _FREQUENCIES[key] = {
            name: float(p)
            for name, p in zip(source.space.action_names, sampler.action_probs, strict=True)
        }
    return dict(_FREQUENCIES[key])


def rarest_action(transitions: Any, frequencies: dict[str, float]) -> str:
    """The held-out action, else the least frequent one (ties: the last in ``action_order``)."""
    names = list(frequencies)
    if transitions.rare_action:
        return str(transitions.rare_action)
    order = transitions.action_order or list(range(len(names)))
    lowest = min(frequencies.values())
    tied = {i for i, n in enumerate(names) if frequencies[n] <= lowest * (1 + 1e-9)}
    return names[max(tied, key=order.index)]


def run_config(run_dir: Path):
    """The run's resolved config: its ``config.toml``, else its newest checkpoint's."""
    from vqcausal.config import ConfigError, load_config
    from vqcausal.runs import CheckpointError, config_from_meta, latest_checkpoint

    try:
        return load_config(run_dir / "config.toml")
    except ConfigError:
        try:
            return config_from_meta(latest_checkpoint(run_dir).meta)
        except CheckpointError as err:
            raise SweepError(f"{run_dir}: no readable config ({err})") from None


def _test_pairs(report: Any, names: list[str]) -> dict[str, int]:
    confusion = _get(report, "confusion")
    if not isinstance(confusion, list) or len(confusion) != len(names):
        return {}
    return {name: int(sum(row)) for name, row in zip(names, confusion, strict=True)}


def row_of(cell: Cell, run_dir: Path) -> Row:
    """Read one evaluated cell's metrics.json into a row."""
    try:
        metrics = json.loads(metrics_file(run_dir).read_text())
    except (OSError, ValueError) as err:
        raise SweepError(f"{metrics_file(run_dir)}: unreadable ({err})") from None
    config = run_config(run_dir)
    frequencies = action_frequencies(config)
    names = list(frequencies)
    rarest = rarest_action(config.transitions, frequencies)
    synthesis = _get(metrics, "retrieval", "synthesis") or {}
    classifier = _get(metrics, "retrieval", "classifier") or {}
    per_action = {n: _num(_get(synthesis, "per_action", n)) for n in names}
    classifier_per_action = {n: _num(_get(classifier, "per_action", n)) for n in names}
    test_pairs = _test_pairs(synthesis, names)
    atomic = {n: _num(_get(metrics, "counterfactual", "per_action", n, "atomicity")) for n in names}
    others = [v for n, v in atomic.items() if n != rarest and v is not None]
    return Row(
        cell=cell.name,
        dataset=cell.dataset,
        latent=cell.latent,
        mode=cell.mode,
        rho_or_k=cell.level,
        seed=cell.seed,
        balanced_accuracy=_num(synthesis.get("balanced_accuracy")),
        accuracy=_num(synthesis.get("accuracy")),
        worst_action_accuracy=_num(synthesis.get("worst_action_accuracy")),
        rarest_action=rarest,
        rarest_frequency=frequencies.get(rarest),
        rarest_accuracy=per_action.get(rarest),
        rarest_test_pairs=test_pairs.get(rarest),
        classifier_balanced_accuracy=_num(classifier.get("balanced_accuracy")),
        classifier_rarest_accuracy=classifier_per_action.get(rarest),
        counterfactual_psnr=_num(_get(metrics, "counterfactual", "psnr")),
        atomicity=_num(_get(metrics, "counterfactual", "atomicity")),
        rarest_atomicity=atomic.get(rarest),
        common_atomicity=statistics.fmean(others) if others else None,
        oracle_accuracy=_num(_get(metrics, "counterfactual", "oracle_accuracy")),
        recon_psnr=_num(_get(metrics, "reconstruction", "psnr")),
        run=run_dir.name,
        per_action=per_action,
        classifier_per_action=classifier_per_action,
        test_pairs=test_pairs,
        frequencies=frequencies,
    )


def collect(sweep_dir: str | Path) -> list[Row]:
    """One row per evaluated cell of a sweep folder (cells still running are left out)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise SweepError(f"sweep folder not found: {sweep_dir}")
    rows = []
    for cell_file in sorted(sweep_dir.glob(f"*/{CELL_FILE}")):
        try:
            cell = Cell.from_dict(json.loads(cell_file.read_text()))
        except (OSError, ValueError) as err:
            raise SweepError(f"{cell_file}: unreadable ({err})") from None
        run_dir = evaluated_run(cell_file.parent)
        if run_dir is not None:
            rows.append(row_of(cell, run_dir))
    return sorted(rows, key=lambda r: (*order_key(r.dataset, r.latent, r.mode, r.rho_or_k), r.seed))


def latent_rank(latent: str) -> tuple[int, str]:
    """Latents in their usual order (vq first), so every figure colours them alike."""
    from vqcausal.models.base import LATENTS

    return (LATENTS.index(latent) if latent in LATENTS else len(LATENTS), latent)


def order_key(dataset: str, latent: str, mode: str, level: float) -> tuple:
    modes = [*MODES, DEFAULT_MODE]
    mode_rank = modes.index(mode) if mode in modes else len(modes)
    return (dataset, mode_rank, mode, level, latent_rank(latent))


def evaluated_metrics(
    sweep_dir: str | Path, cells: Sequence[Cell]
) -> list[tuple[Cell, Path, dict]]:
    """(cell, run folder, its ``eval/metrics.json``) of each of ``cells`` evaluated so far."""
    found = []
    for cell in cells:
        run_dir = evaluated_run(Path(sweep_dir) / cell.name)
        if run_dir is None:
            continue
        try:
            found.append((cell, run_dir, json.loads(metrics_file(run_dir).read_text())))
        except (OSError, ValueError) as err:
            raise SweepError(f"{metrics_file(run_dir)}: unreadable ({err})") from None
    return found
