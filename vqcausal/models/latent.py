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

    # ---- actions: a latent with its own causal layer acts on itself; the others leave
    # actions to the model's learned shift (``own_actions`` False)
    own_actions: bool = False

    def intervene(self, z: Tensor, actions: Tensor) -> Tensor:
        """Latents after one action per row (only when ``own_actions``)."""
        raise NotImplementedError(f"{type(self).__name__} has no actions of its own")

    def synthesis_scores(self, z: Tensor, z_next: Tensor) -> Tensor:
        """(B, A) analysis-by-synthesis scores of every action (only when ``own_actions``)."""
        raise NotImplementedError(f"{type(self).__name__} has no actions of its own")

    def calibrate(self, z: Tensor, actions: Tensor, z_next: Tensor) -> None:
        """Once before stage 2, on the encoded training pairs: calibrations that need them."""

    def after_step(self, step: int) -> None:
        """After every stage-1 optimizer step: schedules that live in the latent."""

    def graph(self) -> Tensor | None:
        """The learned graph (weights in [0, 1], [child, parent]), if the latent has one."""
        return None


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
