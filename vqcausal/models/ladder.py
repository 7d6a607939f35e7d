"""Ladder VAE latent (Sønderby et al. 2016): a hierarchy of Gaussian layers z_1 .. z_L.

Inference runs in two passes over the flattened encoder features:

1. bottom-up, deterministic: d_l = MLP(d_{l-1}) with d_0 = features; each d_l gives a
   likelihood-like estimate (μ̂_l, σ̂²_l);
2. top-down: the top posterior is (μ̂_L, σ̂²_L) with prior N(0, I); for each lower layer the
   generative prior p(z_l | z_{l+1}) = N(μ_p, σ²_p) comes from an MLP on z_{l+1}, and the
   posterior is the precision-weighted merge of (μ̂_l, σ̂²_l) with (μ_p, σ²_p).

Loss ``total = kl_warmup(step) · Σ_l KL_l`` with analytic KLs between each posterior and its
prior. The MLPs use batch norm and leaky ReLU, which the paper calls crucial (with the warm-up).

What the rest of the system sees:
- ``z`` (and the input of ``to_decoder``) is the BOTTOM latent z_1, the one closest to the
  data; ``latent_dim = latent_dims[0]``;
- ``mean`` concatenates every layer's posterior mean, bottom to top, shape
  (B, ``representation_dim``) with ``representation_dim = sum(latent_dims)``: the whole
  hierarchy is the representation for metrics and retrieval. In training mode the lower
  layers' means are conditioned on the SAMPLED layer above, so they are stochastic; take
  representations in eval mode.

Batch norm makes the train-mode output of one sample depend on the rest of its batch (and
a train-mode batch of 1 fails); eval mode uses running statistics, and the top-down pass
follows posterior means instead of samples, so eval is deterministic and batch-size
independent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqcausal.models.latent import ContinuousLatent, LatentOutput

VAR_EPS = 1e-4  # floor on every variance so precisions stay finite


@dataclass
class LadderConfig:
    """Ladder VAE settings; the warm-up length is a guess (the paper's N_t is unverified)."""

    latent_dims: list[int] = field(default_factory=lambda: [16, 8])  # bottom -> top
    hidden: int = 128  # deterministic bottom-up / top-down MLP width
    warmup_steps: int = 5000  # KL weight goes linearly 0 -> 1 over these steps, then stays 1
    batch_norm: bool = True  # BN in the deterministic paths as in the paper


def precision_weighted_merge(
    mu_q: Tensor, var_q: Tensor, mu_p: Tensor, var_p: Tensor
) -> tuple[Tensor, Tensor]:
    """Product of two Gaussians: precisions add, means are weighted by their precision."""
    prec_q, prec_p = var_q.reciprocal(), var_p.reciprocal()
    var = (prec_q + prec_p).reciprocal()
    mu = (mu_q * prec_q + mu_p * prec_p) * var
    return mu, var


def kl_warmup(step: int, warmup_steps: int) -> float:
    """Deterministic KL warm-up β_t: linear from 0 to 1 over ``warmup_steps``, then 1."""
    if warmup_steps <= 0:
        return 1.0
    return min(max(step, 0) / warmup_steps, 1.0)


def kl_gaussians(mu_q: Tensor, var_q: Tensor, mu_p: Tensor, var_p: Tensor) -> Tensor:
    """KL(N(mu_q, var_q) ‖ N(mu_p, var_p)) per sample, summed over the last dim: (B, d) -> (B,)."""
    mu_q, var_q, mu_p, var_p = (t.float() for t in (mu_q, var_q, mu_p, var_p))
    return 0.5 * (var_p.log() - var_q.log() + (var_q + (mu_q - mu_p).square()) / var_p - 1.0).sum(
        dim=-1
    )


class _Block(nn.Sequential):
    """Linear -> (BatchNorm) -> LeakyReLU: one deterministic step of either path."""

    def __init__(self, in_dim: int, out_dim: int, batch_norm: bool) -> None:
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        if batch_norm:
            layers.append(nn.BatchNorm1d(out_dim))
        layers.append(nn.LeakyReLU(0.1))
        super().__init__(*layers)


class _GaussianHead(nn.Module):
    """Hidden (B, H) -> (mean, variance) each (B, d); variance = softplus + floor."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mu = nn.Linear(in_dim, out_dim)
        self.var = nn.Linear(in_dim, out_dim)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return self.mu(h), F.softplus(self.var(h)) + VAR_EPS


class LadderLatent(ContinuousLatent):
    """Hierarchical Gaussian latent with precision-weighted top-down inference.

    See the module docstring: ``z`` is the bottom layer, ``mean`` all layers concatenated.
    """

    def __init__(self, feature_dim: int, config: LadderConfig | None = None) -> None:
        super().__init__()
        self.config = config or LadderConfig()
        dims = list(self.config.latent_dims)
        if not dims:
            raise ValueError("LadderConfig.latent_dims needs at least one layer")
        hidden, bn = self.config.hidden, self.config.batch_norm
        self.feature_dim = feature_dim
        self.latent_dims = dims
        self.latent_dim = dims[0]
        self.representation_dim = sum(dims)
        self.up = nn.ModuleList(
            _Block(feature_dim if i == 0 else hidden, hidden, bn) for i in range(len(dims))
        )
        self.up_heads = nn.ModuleList(_GaussianHead(hidden, d) for d in dims)
        # down[i] maps z_{i+1} to the prior of z_i, for i = 0 .. L-2.
        self.down = nn.ModuleList(_Block(dims[i + 1], hidden, bn) for i in range(len(dims) - 1))
        self.down_heads = nn.ModuleList(
            _GaussianHead(hidden, dims[i]) for i in range(len(dims) - 1)
        )
        self.out = nn.Linear(dims[0], feature_dim)

    def forward(
        self, features: Tensor, labels: Tensor | None = None, step: int = 0
    ) -> LatentOutput:
        """``labels`` are ignored: the Ladder VAE is unsupervised."""
        # Bottom-up deterministic pass: likelihood-like terms per layer.
        likelihood: list[tuple[Tensor, Tensor]] = []
        h = features
        for block, head in zip(self.up, self.up_heads, strict=True):
            h = block(h)
            likelihood.append(head(h))

        num_layers = len(self.latent_dims)
        means: list[Tensor] = [features.new_empty(0)] * num_layers
        kls: list[Tensor] = [features.new_empty(0)] * num_layers
        z_above: Tensor | None = None
        for i in reversed(range(num_layers)):
            mu_hat, var_hat = likelihood[i]
            if z_above is None:  # top layer: posterior is the bottom-up term, prior N(0, I)
                mu_q, var_q = mu_hat, var_hat
                mu_p, var_p = torch.zeros_like(mu_hat), torch.ones_like(var_hat)
            else:
                mu_p, var_p = self.down_heads[i](self.down[i](z_above))
                mu_q, var_q = precision_weighted_merge(mu_hat, var_hat, mu_p, var_p)
            kls[i] = kl_gaussians(mu_q, var_q, mu_p, var_p).mean()
            means[i] = mu_q
            z_above = mu_q + torch.randn_like(mu_q) * var_q.sqrt() if self.training else mu_q

        assert z_above is not None
        kl = torch.stack(kls).sum()
        losses = {f"kl_{i + 1}": k for i, k in enumerate(kls)}
        losses["kl"] = kl
        losses["total"] = kl_warmup(step, self.config.warmup_steps) * kl
        return LatentOutput(z=z_above, mean=torch.cat(means, dim=-1), losses=losses)

    def to_decoder(self, z: Tensor) -> Tensor:
        """Bottom latent z_1 (B, latent_dims[0]) -> decoder features (B, F)."""
        return self.out(z)
