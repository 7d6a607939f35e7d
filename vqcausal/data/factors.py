"""Named discrete factors of variation and the actions that move them.

An *action* moves one factor one step: action ``2 * k`` is ``<factor k>+`` (value + 1) and
action ``2 * k + 1`` is ``<factor k>-`` (value - 1), so a space with K factors has A = 2K
actions in factor order. Cyclic factors (hues, orientations) wrap around; bounded factors
(scale, position, angles) never step off their grid, so an action can be invalid at an edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vqcausal.errors import DataError


@dataclass(frozen=True)
class Factor:
    """One factor of variation: ``size`` discrete values 0..size-1."""

    name: str
    size: int
    cyclic: bool = False

    def __post_init__(self) -> None:
        if self.size < 2:
            raise DataError(f"factor '{self.name}' needs at least 2 values, got {self.size}")


class FactorSpace:
    """An ordered set of factors: value vectors, flat grid indices and actions."""

    def __init__(self, factors: list[Factor] | tuple[Factor, ...]) -> None:
        self.factors = tuple(factors)
        if not self.factors:
            raise DataError("a factor space needs at least one factor")
        names = [f.name for f in self.factors]
        if len(set(names)) != len(names):
            raise DataError(f"factor names must be unique, got {names}")

    # ---- factors -------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [f.name for f in self.factors]

    @property
    def sizes(self) -> list[int]:
        return [f.size for f in self.factors]

    @property
    def num_factors(self) -> int:
        return len(self.factors)

    @property
    def num_values(self) -> int:
        """Number of points on the full factor grid."""
        return math.prod(self.sizes)

    def factor_index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise DataError(
                f"unknown factor '{name}'; factors are {', '.join(self.names)}"
            ) from None

    def _sizes_tensor(self, device: torch.device | None = None) -> torch.Tensor:
        return torch.tensor(self.sizes, dtype=torch.long, device=device)

    def check_values(self, values: torch.Tensor) -> torch.Tensor:
        """Validate a (B, K) integer tensor of factor values; return it as long."""
        if values.ndim != 2 or values.shape[1] != self.num_factors:
            raise DataError(
                f"factor values must have shape (batch, {self.num_factors}), "
                f"got {tuple(values.shape)}"
            )
        values = values.long()
        sizes = self._sizes_tensor(values.device)
        if ((values < 0) | (values >= sizes)).any():
            raise DataError(f"factor values out of range for sizes {self.sizes}")
        return values

    def sample_values(
        self,
        n: int,
        generator: torch.Generator | None = None,
        value_weights: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Draw n factor vectors, uniform per factor unless ``value_weights`` are given."""
        columns = []
        for k, factor in enumerate(self.factors):
            if value_weights is None:
                col = torch.randint(factor.size, (n,), generator=generator)
            else:
                col = torch.multinomial(value_weights[k], n, replacement=True, generator=generator)
            columns.append(col)
        return torch.stack(columns, dim=1)

    def ravel(self, values: torch.Tensor) -> torch.Tensor:
        """Flat grid index of each factor vector (row-major, last factor fastest)."""
        values = values.long()
        index = torch.zeros(values.shape[0], dtype=torch.long, device=values.device)
        for k, size in enumerate(self.sizes):
            index = index * size + values[:, k]
        return index

    def unravel(self, index: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`ravel`."""
        index = index.long().clone()
        columns = []
        for size in reversed(self.sizes):
            columns.append(index % size)
            index = index // size
        return torch.stack(columns[::-1], dim=1)

    # ---- actions -------------------------------------------------------------------
    @property
    def num_actions(self) -> int:
        return 2 * self.num_factors

    @property
    def action_names(self) -> list[str]:
        return [f"{f.name}{sign}" for f in self.factors for sign in "+-"]

    def action_index(self, name: str) -> int:
        names = self.action_names
        if name not in names:
            raise DataError(f"unknown action '{name}'; actions are {', '.join(names)}")
        return names.index(name)

    @staticmethod
    def action_factor(actions: torch.Tensor) -> torch.Tensor:
        """Factor index moved by each action."""
        return actions // 2

    @staticmethod
    def action_direction(actions: torch.Tensor) -> torch.Tensor:
        """+1 for ``+`` actions, -1 for ``-`` actions."""
        return 1 - 2 * (actions % 2)

    @staticmethod
    def inverse_action(actions: torch.Tensor) -> torch.Tensor:
        """The action that undoes each action (``f+`` <-> ``f-``): if a takes x to x', the
        inverse takes x' back to x, at a bounded factor's edge too."""
        return actions ^ 1

    def valid_actions(self, values: torch.Tensor) -> torch.Tensor:
        """(B, A) mask: which actions stay on the grid from each factor vector."""
        values = values.long()
        sizes = self._sizes_tensor(values.device)
        cyclic = torch.tensor([f.cyclic for f in self.factors], device=values.device)
        can_up = cyclic | (values < sizes - 1)
        can_down = cyclic | (values > 0)
        return torch.stack([can_up, can_down], dim=2).flatten(1)

    def apply(
        self, values: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply one action per row; returns (new values, valid mask).

        Invalid moves (a bounded factor at its edge) leave the row unchanged and are
        flagged False in the mask, so callers can reject or ignore them.
        """
        values = values.long()
        actions = actions.long()
        if ((actions < 0) | (actions >= self.num_actions)).any():
            raise DataError(f"actions must be in 0..{self.num_actions - 1}")
        rows = torch.arange(values.shape[0], device=values.device)
        k = self.action_factor(actions)
        sizes = self._sizes_tensor(values.device)[k]
        cyclic = torch.tensor([f.cyclic for f in self.factors], device=values.device)[k]
        moved = values[rows, k] + self.action_direction(actions)
        valid = cyclic | ((moved >= 0) & (moved < sizes))
        new = values.clone()
        new[rows, k] = torch.where(valid, moved % sizes, values[rows, k])
        return new, valid

    # ---- serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "factors": [{"name": f.name, "size": f.size, "cyclic": f.cyclic} for f in self.factors]
        }

    @classmethod
    def from_dict(cls, data: dict) -> FactorSpace:
        try:
            return cls(
                [Factor(str(f["name"]), int(f["size"]), bool(f["cyclic"])) for f in data["factors"]]
            )
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"malformed factor space description: {err}") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FactorSpace) and self.factors == other.factors

    def __hash__(self) -> int:
        return hash(self.factors)

    def __repr__(self) -> str:
        inner = ", ".join(f"{f.name}={f.size}{'~' if f.cyclic else ''}" for f in self.factors)
        return f"FactorSpace({inner})"


def hash_unit(index: torch.Tensor, seed: int) -> torch.Tensor:
    """A deterministic pseudo-random number in [0, 1) per integer (splitmix64-style mix):
    what splits grid points into train and test by a seeded hash."""
    x = index.long() * 0x9E3779B1 + seed * 0x85EBCA77 + 0x27D4EB2F
    x = (x ^ (x >> 15)) * 0x2C1B3C6D
    x = (x ^ (x >> 12)) * 0x297A2D39
    x = x ^ (x >> 15)
    return (x & 0xFFFFFF).double() / float(1 << 24)
