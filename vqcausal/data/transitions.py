"""Atomic transition pairs (x, action, x'): x' is x with one factor moved one step.

Sampling is factor-level first (values, action, values'), images are rendered or looked up
afterwards, so the same code serves procedural renderers and on-disk files.

* Split by source image: every grid point (or stored image) belongs to train or test by a
  seeded hash, or by the split its files came with. A pair belongs to its source's split,
  and train pairs never *land* on a test image either, so no test source image is ever
  seen in training.
* Imbalance: with ratio ``rho`` the action frequencies fall geometrically from 1 (action 0)
  to 1/rho (action A-1), in ``action_order`` (default: the space's action order); rho = 1
  is uniform. ``value_imbalance`` does the same to every factor's values (value 0 most
  frequent). The action is drawn first and the source image is drawn among those the
  action can move, so the requested action frequencies hold exactly even at grid edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vqcausal.data.source import ConceptScaler, GroundTruthSource
from vqcausal.errors import DataError

SPLITS = ("train", "test")


@dataclass
class TransitionConfig:
    """How pairs are drawn; every field is reproducible from ``seed``."""

    imbalance: float = 1.0
    value_imbalance: float = 1.0
    test_fraction: float = 0.1
    seed: int = 0
    action_order: list[int] | None = None

    def __post_init__(self) -> None:
        if self.imbalance < 1 or self.value_imbalance < 1:
            raise DataError("imbalance ratios must be >= 1 (1 means uniform)")
        if not 0 < self.test_fraction < 1:
            raise DataError(f"test_fraction must be in (0, 1), got {self.test_fraction}")


@dataclass
class Transitions:
    """A batch of factor-level transitions; ``images`` adds the pixels."""

    values: torch.Tensor  # (B, K) long
    actions: torch.Tensor  # (B,) long
    values_next: torch.Tensor  # (B, K) long

    def __len__(self) -> int:
        return int(self.actions.shape[0])


def geometric_weights(n: int, ratio: float) -> torch.Tensor:
    """n probabilities falling geometrically from 1 to 1/ratio, normalised."""
    if n == 1:
        return torch.ones(1, dtype=torch.float64)
    weights = torch.tensor(ratio, dtype=torch.float64) ** (
        -torch.arange(n, dtype=torch.float64) / (n - 1)
    )
    return weights / weights.sum()


def _hash_unit(index: torch.Tensor, seed: int) -> torch.Tensor:
    """A deterministic pseudo-random number in [0, 1) per integer (splitmix64-style mix)."""
    x = index.long() * 0x9E3779B1 + seed * 0x85EBCA77 + 0x27D4EB2F
    x = (x ^ (x >> 15)) * 0x2C1B3C6D
    x = (x ^ (x >> 12)) * 0x297A2D39
    x = x ^ (x >> 15)
    return (x & 0xFFFFFF).double() / float(1 << 24)


class TransitionSampler:
    """Draws reproducible transition batches from a source."""

    def __init__(self, source: GroundTruthSource, config: TransitionConfig | None = None) -> None:
        self.source = source
        self.space = source.space
        self.config = config or TransitionConfig()
        num_actions = self.space.num_actions
        order = self.config.action_order or list(range(num_actions))
        if sorted(order) != list(range(num_actions)):
            raise DataError(f"action_order must be a permutation of 0..{num_actions - 1}")
        weights = geometric_weights(num_actions, self.config.imbalance)
        self.action_probs = torch.empty_like(weights)
        self.action_probs[torch.tensor(order)] = weights
        self.value_weights = [
            geometric_weights(size, self.config.value_imbalance) for size in self.space.sizes
        ]
        self._stored = source.stored_values()
        if self._stored is not None:
            self._prepare_stored()

    # ---- split ---------------------------------------------------------------------
    def split_of(self, values: torch.Tensor) -> torch.Tensor:
        """0 (train) or 1 (test) for each factor vector."""
        if self._stored is not None and self._stored_split is not None:
            rows = self.source.rows_of(values)  # type: ignore[attr-defined]
            split = self._stored_split[rows.clamp(min=0)]
            return torch.where(rows >= 0, split, torch.ones_like(split))
        unit = _hash_unit(self.space.ravel(values), self.config.seed)
        return (unit < self.config.test_fraction).long()

    # ---- stored (sparse) sources ------------------------------------------------------
    def _prepare_stored(self) -> None:
        """Per action, the stored rows it can move onto another stored row."""
        stored = self._stored
        given = self.source.stored_split()
        self._stored_split = None if given is None else given.long()
        row_split = self.split_of(stored)
        row_weight = torch.ones(stored.shape[0], dtype=torch.float64)
        for k in range(self.space.num_factors):
            row_weight *= self.value_weights[k][stored[:, k]]
        self._candidates: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        for a in range(self.space.num_actions):
            actions = torch.full((stored.shape[0],), a, dtype=torch.long)
            nxt, valid = self.space.apply(stored, actions)
            target_rows = self.source.rows_of(nxt)  # type: ignore[attr-defined]
            ok = valid & (target_rows >= 0)
            for s in range(2):
                keep = ok & (row_split == s)
                if s == 0:  # train pairs never land on a test image
                    keep &= row_split[target_rows.clamp(min=0)] == 0
                rows = keep.nonzero().squeeze(1)
                self._candidates[(a, s)] = (rows, row_weight[rows])

    def _sample_stored(
        self, actions: torch.Tensor, split: int, generator: torch.Generator
    ) -> torch.Tensor:
        values = torch.empty(actions.shape[0], self.space.num_factors, dtype=torch.long)
        for a in actions.unique().tolist():
            where = (actions == a).nonzero().squeeze(1)
            rows, weight = self._candidates[(a, split)]
            if rows.numel() == 0:
                name = self.space.action_names[a]
                raise DataError(
                    f"{self.source.name}: no {SPLITS[split]} image can take action '{name}'"
                )
            pick = torch.multinomial(weight, where.numel(), replacement=True, generator=generator)
            values[where] = self._stored[rows[pick]]
        return values

    # ---- full-grid sources ----------------------------------------------------------------
    def _sample_grid(
        self, actions: torch.Tensor, split: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Rejection-sample grid points of the split from which each action stays valid."""
        n = actions.shape[0]
        values = torch.empty(n, self.space.num_factors, dtype=torch.long)
        todo = torch.arange(n)
        for _ in range(1000):
            cand = self.space.sample_values(todo.numel(), generator, self.value_weights)
            nxt, valid = self.space.apply(cand, actions[todo])
            ok = valid & (self.split_of(cand) == split)
            if split == 0:
                ok &= self.split_of(nxt) == 0
            values[todo[ok]] = cand[ok]
            todo = todo[~ok]
            if todo.numel() == 0:
                return values
        raise DataError(
            f"{self.source.name}: could not draw {SPLITS[split]} pairs; check the split"
        )

    # ---- public -----------------------------------------------------------------------
    def sample(
        self,
        n: int,
        split: str = "train",
        generator: torch.Generator | None = None,
        actions: torch.Tensor | None = None,
    ) -> Transitions:
        """n transitions of a split; actions follow ``action_probs`` unless given."""
        if split not in SPLITS:
            raise DataError(f"unknown split '{split}'; choose from {', '.join(SPLITS)}")
        s = SPLITS.index(split)
        if generator is None:
            generator = torch.Generator().manual_seed(self.config.seed)
        if actions is None:
            actions = torch.multinomial(self.action_probs, n, replacement=True, generator=generator)
        actions = actions.long()
        if self._stored is not None:
            values = self._sample_stored(actions, s, generator)
        else:
            values = self._sample_grid(actions, s, generator)
        values_next, valid = self.space.apply(values, actions)
        assert bool(valid.all()), "sampler produced an invalid move"
        return Transitions(values, actions, values_next)

    def images(self, transitions: Transitions) -> tuple[torch.Tensor, torch.Tensor]:
        """Render (x, x') for a batch of transitions as uint8 (B, C, H, W)."""
        both = torch.cat([transitions.values, transitions.values_next])
        imgs = self.source.render(both)
        return imgs[: len(transitions)], imgs[len(transitions) :]

    def batch(
        self, n: int, split: str = "train", generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """A training batch: x, x_next (uint8), action, values, values_next."""
        t = self.sample(n, split, generator)
        x, x_next = self.images(t)
        return {
            "x": x,
            "x_next": x_next,
            "action": t.actions,
            "values": t.values,
            "values_next": t.values_next,
        }


def action_concept_steps(
    sampler: TransitionSampler, scaler: ConceptScaler, pairs: int = 4096, seed: int = 0
) -> tuple[list[int], list[float]]:
    """Which concept each action moves (-1: none; matched by factor name) and its typical
    signed change in normalised label units (the median: a cyclic factor's wrap-around jump
    would skew a mean), measured on training pairs: what an ``scm`` intervention should move,
    and by how much (one pendulum step is ~0.12 std, not 1)."""
    concept_names = scaler.source.concept_names
    factor_names = sampler.space.names
    num_actions = len(sampler.space.action_names)
    targets = [
        concept_names.index(factor_names[a // 2]) if factor_names[a // 2] in concept_names else -1
        for a in range(num_actions)
    ]
    t = sampler.sample(pairs, "train", torch.Generator().manual_seed(seed))
    change = scaler.normalise(t.values_next) - scaler.normalise(t.values)
    steps = []
    for a, target in enumerate(targets):
        rows = t.actions == a
        steps.append(float(change[rows, target].median()) if target >= 0 and rows.any() else 0.0)
    return targets, steps


class TransitionStream(torch.utils.data.IterableDataset):
    """Endless batches for a DataLoader; each worker gets its own reproducible stream."""

    def __init__(
        self, sampler: TransitionSampler, batch_size: int, split: str = "train", seed: int = 0
    ) -> None:
        super().__init__()
        self.sampler = sampler
        self.batch_size = batch_size
        self.split = split
        self.seed = seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + worker)
        while True:
            yield self.sampler.batch(self.batch_size, self.split, generator)
