"""The interface of continuous latent modules (``scm``, ``gaussian``, ``ladder``).

The ``vq`` latent (CT-VAE) keeps discrete codes on the feature grid; the continuous ones
read the encoder's feature grid flattened to a vector and give the decoder a vector of the
same size back, so encoder, decoder and training loop are shared by every latent.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class LatentOutput:
    """What a continuous latent gives the model for one batch."""

    z: Tensor  # (B, d) latent fed to the decoder: a sample in training, the mean in eval
    mean: Tensor  # (B, d) deterministic representation (metrics, retrieval, interventions)
    losses: dict[str, Tensor] = field(default_factory=dict)  # named terms and "total"


class ContinuousLatent(nn.Module, ABC):
    """Maps flattened encoder features (B, F) to a latent (B, d) and back to (B, F)."""

    latent_dim: int

    @abstractmethod
    def forward(
        self, features: Tensor, labels: Tensor | None = None, step: int = 0
    ) -> LatentOutput:
        """Posterior sample, its deterministic mean and the regulariser terms.

        ``labels`` (B, L) are concept labels where the module uses supervision (``scm``);
        ``step`` is the global training step for schedules (capacity, KL warm-up).
        """

    @abstractmethod
    def to_decoder(self, z: Tensor) -> Tensor:
        """Latent (B, d) -> decoder features (B, F)."""

    def pair_losses(self, labels: Tensor | None, actions: Tensor | None) -> dict[str, Tensor]:
        """Extra terms on transition pairs: ``labels`` rows ``[x; x']``, ``actions`` (B/2,)."""
        return {}

    def separately_clipped(self) -> list[list[nn.Parameter]]:
        """Parameter sets whose gradients are clipped by their own norm, apart from the rest."""
        return []


class ActionShift(nn.Module):
    """Intervention for latents without a causal layer: a learned shift per action."""

    def __init__(self, latent_dim: int, num_actions: int) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(num_actions, latent_dim))

    def forward(self, z: Tensor, actions: Tensor) -> Tensor:
        return z + self.shift[actions]


class PairClassifier(nn.Module):
    """Learned retrieval head on (z, z'): an MLP on [z, z', z' - z]."""

    def __init__(self, latent_dim: int, num_actions: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(3 * latent_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, num_actions),
        )

    def forward(self, z: Tensor, z_next: Tensor) -> Tensor:
        return self.net(torch.cat([z, z_next, z_next - z], dim=-1))
