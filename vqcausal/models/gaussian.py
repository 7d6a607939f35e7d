"""β-VAE latent (Higgins et al. 2017) with Burgess et al.'s optional capacity schedule.

A diagonal Gaussian posterior q(z | x) = N(μ, diag σ²) read by two linear heads from the
flattened encoder features, regularised towards N(0, I). Two objectives:

- ``capacity_max == 0`` ("H"): ``total = β · KL``;
- ``capacity_max > 0`` ("B", "Understanding disentangling in β-VAE"):
  ``total = γ · |KL − C(step)|`` with C raised linearly from 0 to ``capacity_max`` nats.

The KL is summed over latent dims and averaged over the batch, so it sits on the same
per-image scale as a reconstruction loss summed per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from vqcausal.models.latent import ContinuousLatent, LatentOutput


@dataclass
class GaussianConfig:
    """β-VAE settings; the defaults follow 1Konny/Beta-VAE's "H" objective."""

    latent_dim: int = 10
    beta: float = 4.0  # KL weight (beta-VAE, Higgins et al.)
    capacity_max: float = 0.0  # nats; > 0 enables Burgess et al.: gamma * |KL - C(step)|
    capacity_steps: int = 10000  # C grows linearly from 0 to capacity_max over these steps
    capacity_gamma: float = 100.0


def capacity(step: int, capacity_max: float, steps: int) -> float:
    """Burgess et al.'s target KL C(step): linear from 0 to ``capacity_max``, then flat."""
    if steps <= 0:
        return float(capacity_max)
    return float(capacity_max) * min(max(step, 0) / steps, 1.0)


def kl_standard_normal(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) ‖ N(0, I)) per sample, summed over the last dim: (B, d) -> (B,).

    Computed in float32 so mixed precision does not round the sum of many small terms.
    """
    mean, logvar = mean.float(), logvar.float()
    return 0.5 * (mean.square() + logvar.exp() - logvar - 1.0).sum(dim=-1)


class GaussianLatent(ContinuousLatent):
    """Features (B, F) -> diagonal Gaussian latent (B, d) -> decoder features (B, F).

    Training mode returns a reparameterised sample as ``z``; eval mode returns the mean, so
    evaluation is deterministic (``mean`` is the mean in both modes).
    """

    def __init__(self, feature_dim: int, config: GaussianConfig | None = None) -> None:
        super().__init__()
        self.config = config or GaussianConfig()
        self.latent_dim = self.config.latent_dim
        self.feature_dim = feature_dim
        # One Linear for both heads: (B, F) -> (B, 2d), split into mean and log-variance.
        self.heads = nn.Linear(feature_dim, 2 * self.latent_dim)
        self.out = nn.Linear(self.latent_dim, feature_dim)

    def encode(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior parameters (mean, logvar), each (B, d)."""
        mean, logvar = rearrange(self.heads(features), "b (two d) -> two b d", two=2)
        return mean, logvar

    def forward(
        self, features: Tensor, labels: Tensor | None = None, step: int = 0
    ) -> LatentOutput:
        """``labels`` are ignored: the β-VAE is unsupervised."""
        mean, logvar = self.encode(features)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if self.training else mean
        kl = kl_standard_normal(mean, logvar).mean()
        cfg = self.config
        if cfg.capacity_max > 0:
            target = capacity(step, cfg.capacity_max, cfg.capacity_steps)
            total = cfg.capacity_gamma * (kl - target).abs()
        else:
            total = cfg.beta * kl
        return LatentOutput(z=z, mean=mean, losses={"kl": kl, "total": total})

    def to_decoder(self, z: Tensor) -> Tensor:
        return self.out(z)
