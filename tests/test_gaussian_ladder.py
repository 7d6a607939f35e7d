"""β-VAE and Ladder VAE latents: known answers for the maths, shapes, and a tiny fit."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vqcausal.models.gaussian import (
    GaussianConfig,
    GaussianLatent,
    capacity,
    kl_standard_normal,
)
from vqcausal.models.ladder import (
    LadderConfig,
    LadderLatent,
    kl_gaussians,
    kl_warmup,
    precision_weighted_merge,
)

F_DIM = 16


def make(kind: str, **kw) -> GaussianLatent | LadderLatent:
    if kind == "gaussian":
        return GaussianLatent(F_DIM, GaussianConfig(**{"latent_dim": 5, **kw}))
    return LadderLatent(F_DIM, LadderConfig(**{"latent_dims": [6, 3], "hidden": 32, **kw}))


# --- shapes, losses, modes -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gaussian", "ladder"])
def test_shapes_and_finite_losses(kind: str) -> None:
    torch.manual_seed(0)
    latent = make(kind)
    out = latent(torch.randn(8, F_DIM), step=10)
    rep_dim = getattr(latent, "representation_dim", latent.latent_dim)
    assert out.z.shape == (8, latent.latent_dim)
    assert out.mean.shape == (8, rep_dim)
    assert latent.to_decoder(out.z).shape == (8, F_DIM)
    assert "total" in out.losses and "kl" in out.losses
    for name, value in out.losses.items():
        assert value.ndim == 0 and torch.isfinite(value), name
    assert out.losses["kl"] >= 0


def test_gaussian_eval_returns_mean_train_samples() -> None:
    torch.manual_seed(0)
    latent = make("gaussian")
    x = torch.randn(4, F_DIM)
    latent.eval()
    a, b = latent(x), latent(x)
    assert torch.equal(a.z, a.mean) and torch.equal(a.z, b.z)
    latent.train()
    c, d = latent(x), latent(x)
    assert torch.allclose(c.mean, a.mean)
    assert not torch.allclose(c.z, c.mean) and not torch.allclose(c.z, d.z)


def test_ladder_eval_deterministic_and_batch_independent() -> None:
    torch.manual_seed(0)
    latent = make("ladder")
    for _ in range(3):  # give BN running statistics something other than the init
        latent(torch.randn(16, F_DIM) * 2 + 1)
    latent.eval()
    x = torch.randn(8, F_DIM)
    a, b = latent(x), latent(x)
    assert torch.equal(a.z, b.z) and torch.equal(a.mean, b.mean)
    assert torch.equal(a.z, a.mean[:, : latent.latent_dim])  # z is the bottom layer's mean
    single = torch.cat([latent(x[i : i + 1]).mean for i in range(8)])
    assert torch.allclose(single, a.mean, atol=1e-5)
    assert torch.allclose(latent(x[:3]).z, a.z[:3], atol=1e-5)


def test_ladder_train_samples() -> None:
    torch.manual_seed(0)
    latent = make("ladder")
    x = torch.randn(8, F_DIM)
    a, b = latent(x), latent(x)
    assert not torch.allclose(a.z, b.z)
    # The top posterior is the bottom-up term alone; lower means are conditioned on the
    # sampled layer above, so in train mode they vary from call to call.
    top = latent.latent_dims[0]
    assert torch.allclose(a.mean[:, top:], b.mean[:, top:])
    assert not torch.allclose(a.mean[:, :top], b.mean[:, :top])


@pytest.mark.parametrize("kind", ["gaussian", "ladder"])
def test_gradients_reach_all_parameters(kind: str) -> None:
    torch.manual_seed(0)
    latent = make(kind, **({"warmup_steps": 10} if kind == "ladder" else {}))
    out = latent(torch.randn(8, F_DIM), step=5)
    (out.losses["total"] + latent.to_decoder(out.z).square().mean()).backward()
    for name, p in latent.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# --- KL and schedules --------------------------------------------------------------------


def test_kl_standard_normal_known_answers() -> None:
    zero = kl_standard_normal(torch.zeros(3, 4), torch.zeros(3, 4))
    assert torch.allclose(zero, torch.zeros(3))
    mean = torch.tensor([[1.0, -2.0]])
    var = torch.tensor([[0.5, 4.0]])
    expected = sum(0.5 * (m**2 + v - math.log(v) - 1) for m, v in [(1.0, 0.5), (-2.0, 4.0)])
    assert kl_standard_normal(mean, var.log()).item() == pytest.approx(expected, rel=1e-6)


def test_gaussian_module_kl_and_total() -> None:
    latent = GaussianLatent(2, GaussianConfig(latent_dim=2, beta=4.0)).eval()
    with torch.no_grad():
        latent.heads.weight.zero_()
        latent.heads.bias.copy_(torch.tensor([1.0, -2.0, math.log(0.5), math.log(4.0)]))
    out = latent(torch.randn(5, 2))
    expected = 0.5 * (1 + 0.5 - math.log(0.5) - 1) + 0.5 * (4 + 4 - math.log(4.0) - 1)
    assert out.losses["kl"].item() == pytest.approx(expected, rel=1e-6)
    assert out.losses["total"].item() == pytest.approx(4 * expected, rel=1e-6)
    assert torch.allclose(out.z, torch.tensor([1.0, -2.0]).expand(5, 2))
    with torch.no_grad():
        latent.heads.bias.zero_()
    assert latent(torch.randn(5, 2)).losses["kl"].item() == pytest.approx(0.0, abs=1e-7)


def test_capacity_schedule() -> None:
    assert capacity(0, 25.0, 1000) == 0.0
    assert capacity(500, 25.0, 1000) == pytest.approx(12.5)
    assert capacity(1000, 25.0, 1000) == pytest.approx(25.0)
    assert capacity(5000, 25.0, 1000) == pytest.approx(25.0)
    assert capacity(3, 25.0, 0) == 25.0


def test_gaussian_capacity_objective() -> None:
    cfg = GaussianConfig(latent_dim=2, capacity_max=10.0, capacity_steps=100, capacity_gamma=3.0)
    latent = GaussianLatent(2, cfg).eval()
    with torch.no_grad():
        latent.heads.weight.zero_()
        latent.heads.bias.zero_()
        latent.heads.bias[0] = 2.0  # KL = 0.5 * 4 = 2 nats
    out = latent(torch.randn(3, 2), step=50)  # C = 5
    assert out.losses["kl"].item() == pytest.approx(2.0)
    assert out.losses["total"].item() == pytest.approx(3.0 * abs(2.0 - 5.0))


def test_precision_weighted_merge() -> None:
    mu, var = precision_weighted_merge(
        torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([3.0])
    )
    assert var.item() == pytest.approx(0.75)
    assert mu.item() == pytest.approx(1.5)
    v = torch.tensor([0.3, 2.0])
    mu, var = precision_weighted_merge(torch.tensor([1.0, -4.0]), v, torch.tensor([3.0, 2.0]), v)
    assert torch.allclose(mu, torch.tensor([2.0, -1.0]))
    assert torch.allclose(var, v / 2)


def test_kl_gaussians_known_answers() -> None:
    x = torch.randn(4, 3)
    v = torch.rand(4, 3) + 0.1
    assert torch.allclose(kl_gaussians(x, v, x, v), torch.zeros(4), atol=1e-6)
    # Reduces to the standard-normal form when the prior is N(0, I).
    assert torch.allclose(
        kl_gaussians(x, v, torch.zeros_like(x), torch.ones_like(v)), kl_standard_normal(x, v.log())
    )
    got = kl_gaussians(
        torch.tensor([[1.0]]), torch.tensor([[2.0]]), torch.tensor([[0.0]]), torch.tensor([[4.0]])
    )
    expected = 0.5 * (math.log(4.0 / 2.0) + (2.0 + 1.0) / 4.0 - 1.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_kl_warmup() -> None:
    assert kl_warmup(0, 100) == 0.0
    assert kl_warmup(50, 100) == pytest.approx(0.5)
    assert kl_warmup(100, 100) == 1.0
    assert kl_warmup(1000, 100) == 1.0
    assert kl_warmup(7, 0) == 1.0


def test_ladder_total_uses_warmup() -> None:
    torch.manual_seed(0)
    latent = make("ladder", warmup_steps=100, latent_dims=[4, 3, 2]).eval()
    x = torch.randn(6, F_DIM)
    out0, out_half = latent(x, step=0), latent(x, step=50)
    assert out0.losses["total"].item() == 0.0
    kl = out_half.losses["kl"]
    layers = sum(out_half.losses[f"kl_{i}"] for i in (1, 2, 3))
    assert torch.allclose(kl, layers)
    assert out_half.losses["total"].item() == pytest.approx(0.5 * kl.item())
    assert out_half.mean.shape == (6, 9) and out_half.z.shape == (6, 4)


# --- a tiny fit --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gaussian", "ladder"])
def test_tiny_fit_reduces_reconstruction_error(kind: str) -> None:
    """x = a fixed linear map of a 3-d Gaussian into 16 dims: the latent must carry it."""
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    mixing = torch.randn(3, F_DIM, generator=gen)
    data = torch.randn(512, 3, generator=gen) @ mixing
    torch.manual_seed(0)
    latent = make(kind, **({"warmup_steps": 100} if kind == "ladder" else {"beta": 1.0}))
    opt = torch.optim.Adam(latent.parameters(), lr=1e-2)
    for step in range(300):
        x = data[torch.randint(0, len(data), (64,), generator=gen)]
        out = latent(x, step=step)
        recon = (latent.to_decoder(out.z) - x).square().sum(dim=-1).mean()
        loss = recon + out.losses["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    latent.eval()
    with torch.no_grad():
        mse = nn.functional.mse_loss(latent.to_decoder(latent(data).z), data)
    assert mse / data.var() < 0.1
