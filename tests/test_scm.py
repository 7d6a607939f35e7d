"""SCM latent (CausalVAE): known answers for the SCM, the DAG penalty, do(), the KL, training."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from vqcausal.models.dag import acyclicity, reachability, topological_order
from vqcausal.models.scm import SCMConfig, SCMLatent


def chain_model(a: float = 0.7, b: float = -1.3, k: int = 1, nonlinear: bool = False) -> SCMLatent:
    """3 concepts with A = 0 -> 1 (weight a), 1 -> 2 (weight b)."""
    torch.manual_seed(0)
    model = SCMLatent(8, SCMConfig(concepts=3, concept_dim=k))
    with torch.no_grad():
        model.weights.zero_()
        model.weights[0, 1] = a
        model.weights[1, 2] = b
        if nonlinear:  # make g_j really nonlinear so do() is tested beyond the linear case
            model.mask_layer.w2.normal_()
            model.mask_layer.b1.normal_()
    return model


def test_linear_scm_matches_hand_computed_chain():
    a, b = 0.7, -1.3
    model = chain_model(a, b)
    eps = torch.randn(5, 3)
    z = model.linear_scm(eps)
    e0, e1, e2 = eps.unbind(-1)
    z1 = a * e0 + e1
    expected = torch.stack([e0, z1, b * z1 + e2], dim=-1)
    torch.testing.assert_close(z, expected)
    torch.testing.assert_close(model.linear_abduct(z), eps)


def test_linear_scm_acts_per_block_channel():
    a, b = 0.7, -1.3
    model = chain_model(a, b, k=2)
    eps = torch.randn(4, 6)  # blocks (e0a, e0b), (e1a, e1b), (e2a, e2b)
    z = model.linear_scm(eps)
    for c in range(2):
        e0, e1, e2 = eps[:, c], eps[:, 2 + c], eps[:, 4 + c]
        torch.testing.assert_close(z[:, c], e0)
        torch.testing.assert_close(z[:, 2 + c], a * e0 + e1)
        torch.testing.assert_close(z[:, 4 + c], b * (a * e0 + e1) + e2)


def test_acyclicity_zero_for_dag_positive_for_cycle():
    dag = torch.tensor([[0.0, 0.7, 0.2], [0.0, 0.0, -1.3], [0.0, 0.0, 0.0]])
    assert acyclicity(dag).abs().item() < 1e-6
    cycle = dag.clone()
    cycle[2, 0] = 0.5
    assert acyclicity(cycle).item() > 1e-3
    # n = 2, A = [[0, a], [b, 0]]: (I + X)^2 with X = A o A / 2 has trace 2 + a^2 b^2 / 2.
    a, b = 1.0, 2.0
    two_cycle = torch.tensor([[0.0, a], [b, 0.0]])
    assert acyclicity(two_cycle).item() == pytest.approx(a**2 * b**2 / 2)
    model = SCMLatent(4, SCMConfig(concepts=2, concept_dim=1))
    with torch.no_grad():
        model.weights.copy_(torch.tensor([[5.0, a], [b, 5.0]]))  # diagonal is masked out
    assert model.acyclicity().item() == pytest.approx(2.0)
    torch.testing.assert_close(model.adjacency(), two_cycle)


def test_graph_helpers():
    chain = torch.tensor([[0, 1, 0], [0, 0, 1], [0, 0, 0]])
    assert topological_order(chain) == [0, 1, 2]
    assert topological_order(chain.T) == [2, 1, 0]
    assert topological_order(torch.tensor([[0, 1], [1, 0]])) is None
    expected = torch.tensor([[0, 1, 1], [0, 0, 1], [0, 0, 0]]).bool()
    assert torch.equal(reachability(chain), expected)
    model = chain_model(0.7, -0.2)  # |-0.2| < edge_threshold
    assert model.learned_graph().tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 0]]
    assert model.learned_graph().dtype == torch.long


@pytest.mark.parametrize("nonlinear", [False, True])
def test_do_on_middle_changes_descendants_only(nonlinear: bool):
    a, b = 0.7, -1.3
    model = chain_model(a, b, k=2, nonlinear=nonlinear)
    z = model.sample_prior(num=6)
    value = torch.full((6,), 2.5)
    out = model.do(z, 1, value)
    torch.testing.assert_close(out[:, 0:2], z[:, 0:2])  # ancestor unchanged
    torch.testing.assert_close(out[:, 2:4], torch.full((6, 2), 2.5))
    assert (out[:, 4:6] - z[:, 4:6]).abs().min() > 1e-4  # child changed
    if not nonlinear:  # z2' = b * v + (z2 - b * z1): the abducted noise is kept
        torch.testing.assert_close(out[:, 4:6], b * 2.5 + (z[:, 4:6] - b * z[:, 2:4]))
    # do(z_i = its own value) is the identity
    torch.testing.assert_close(model.do(z, 1, z[:, 2:4]), z)


def test_do_on_root_reaches_grandchild():
    a, b = 0.7, -1.3
    model = chain_model(a, b, k=1)
    z = model.sample_prior(num=5)
    out = model.do(z, 0, torch.full((5,), -3.0))
    noise1, noise2 = z[:, 1] - a * z[:, 0], z[:, 2] - b * z[:, 1]
    z1 = a * -3.0 + noise1
    torch.testing.assert_close(out[:, 0], torch.full((5,), -3.0))
    torch.testing.assert_close(out[:, 1], z1)
    torch.testing.assert_close(out[:, 2], b * z1 + noise2)  # grandchild, not one-step


def test_do_per_sample_concepts_and_sink():
    model = chain_model(k=1, nonlinear=True)
    z = model.sample_prior(labels=torch.randn(3, 3))
    out = model.do(z, torch.tensor([2, 0, 1]), torch.tensor([1.0, 1.0, 1.0]))
    torch.testing.assert_close(out[0, :2], z[0, :2])  # sink: nothing else moves
    assert out[0, 2] == 1.0
    assert torch.all((out[1] - z[1]).abs() > 1e-5)  # root: everything moves
    assert out[2, 0] == z[2, 0] and (out[2, 2] - z[2, 2]).abs() > 1e-5
    # negative values are fine (the official code gives NaN on sinks)
    assert torch.isfinite(model.do(z, 2, torch.full((3,), -4.0))).all()


def test_do_on_cyclic_graph_falls_back_to_fixed_point():
    model = SCMLatent(8, SCMConfig(concepts=3, concept_dim=1))
    with torch.no_grad():
        model.weights.copy_(torch.tensor([[0.0, 0.5, 0.0], [0.4, 0.0, 0.6], [0.0, 0.0, 0.0]]))
    z = torch.randn(4, 3)
    out = model.do(z, 2, torch.zeros(4))
    torch.testing.assert_close(out[:, :2], z[:, :2])  # 2 has no descendants
    out = model.do(z, 0, torch.ones(4))
    assert torch.isfinite(out).all() and torch.all(out[:, 0] == 1.0)
    assert torch.all((out[:, 1:] - z[:, 1:]).abs() > 1e-6)


def test_kl_zero_when_posterior_equals_prior():
    model = SCMLatent(8, SCMConfig(concepts=3, concept_dim=2, init_edge_weight=0.0))
    labels = torch.randn(4, 3)
    mu = labels.repeat_interleave(2, dim=1)  # A = 0: z = eps
    assert model.kl(mu, torch.zeros(4, 6), labels).abs().max() < 1e-6
    assert model.kl(torch.zeros(4, 6), torch.zeros(4, 6), None).abs().max() < 1e-6
    # with edges q(z) = N(M mu, M diag(s^2) M^T) can only equal N(u, I) if A = 0; the general
    # case is checked against torch's full-covariance KL below.


def test_kl_matches_full_covariance_gaussian_kl():
    torch.manual_seed(1)
    model = SCMLatent(8, SCMConfig(concepts=3, concept_dim=2))
    with torch.no_grad():
        model.weights.copy_(torch.randn(3, 3) * 0.4)  # not necessarily a DAG: still exact
    mu, logvar, labels = torch.randn(2, 6), torch.randn(2, 6) * 0.5, torch.randn(2, 3)
    got = model.kl(mu, logvar, labels)
    mixing = torch.linalg.inv(torch.eye(3) - model.adjacency().T).detach()
    for row in range(2):
        total = 0.0
        for c in range(2):
            m, v = mu[row, c::2], logvar[row, c::2].exp()
            q = MultivariateNormal(mixing @ m, mixing @ torch.diag(v) @ mixing.T)
            p = MultivariateNormal(labels[row], torch.eye(3))
            total += kl_divergence(q, p).item()
        assert got[row].item() == pytest.approx(total, rel=1e-4, abs=1e-4)


def test_unlabelled_rows_use_exogenous_standard_normal():
    cfg = SCMConfig(concepts=2, concept_dim=1, label_fraction=0.5, init_edge_weight=0.0)
    model = SCMLatent(8, cfg)
    labels = torch.tensor([[1.0, 2.0], [1.0, 2.0], [float("nan"), 0.0], [1.0, 2.0]])
    rows = model.labelled_rows(labels, 4, torch.device("cpu"))
    assert rows.tolist() == [True, True, False, False]
    mu, logvar = torch.zeros(4, 2), torch.zeros(4, 2)
    kl = model.kl(mu, logvar, labels)
    assert kl[0].item() == pytest.approx(2.5) and kl[1].item() == pytest.approx(2.5)
    assert kl[2:].abs().max() < 1e-6


def test_update_lagrangian_dual_ascent():
    cfg = SCMConfig(concepts=2, concept_dim=1, lagrangian_rho=1.0, lagrangian_rho_max=50.0)
    model = SCMLatent(4, cfg)
    model.update_lagrangian(0.5)  # first call: no previous h, rho stays
    assert model.lagrangian_lambda.item() == pytest.approx(0.5)
    assert model.lagrangian_rho.item() == 1.0
    model.update_lagrangian(0.4)  # 0.4 > 0.25 * 0.5: not enough progress, rho *= 10
    assert model.lagrangian_lambda.item() == pytest.approx(0.9)
    assert model.lagrangian_rho.item() == 10.0
    model.update_lagrangian(0.05)  # 0.05 < 0.25 * 0.4: rho stays
    assert model.lagrangian_lambda.item() == pytest.approx(1.4)
    assert model.lagrangian_rho.item() == 10.0
    model.update_lagrangian(0.05)  # stalled: rho *= 10, capped at rho_max
    assert model.lagrangian_rho.item() == 50.0
    state = model.state_dict()
    assert {"lagrangian_lambda", "lagrangian_rho", "lagrangian_h_prev"} <= state.keys()
    fresh = SCMLatent(4, cfg)
    fresh.load_state_dict(state)
    assert fresh.lagrangian_rho.item() == 50.0
    assert fresh.lagrangian_h_prev.item() == pytest.approx(0.05)


def test_forward_shapes_losses_and_gradient_to_adjacency():
    torch.manual_seed(0)
    model = SCMLatent(20, SCMConfig(concepts=4, concept_dim=3))
    model.update_lagrangian(1.0)
    with torch.no_grad():
        model.weights.copy_(torch.randn(4, 4) * 0.3)
    features, labels = torch.randn(5, 20), torch.randn(5, 4)
    out = model(features, labels, step=3)
    assert out.z.shape == out.mean.shape == (5, 12)
    assert model.to_decoder(out.z).shape == (5, 20)
    assert set(out.losses) >= {"kl", "label", "mask", "sparsity", "acyclic", "total"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in out.losses.values())
    (out.losses["total"] + model.to_decoder(out.z).square().mean()).backward()
    assert model.weights.grad is not None and model.weights.grad.abs().sum() > 0
    assert model.heads.weight.grad.abs().sum() > 0
    assert model.out.weight.grad.abs().sum() > 0
    unlabelled = model(features, None)
    assert unlabelled.losses["label"].item() == 0.0
    model.eval()
    out = model(features, labels)
    torch.testing.assert_close(out.z, out.mean)
    torch.testing.assert_close(model(features).z, out.z)  # deterministic in eval
    assert model.exogenous(features).shape == (5, 12)


def test_structure_learns_from_the_structural_terms_only():
    """Reconstruction, KL and the label head see A and the mask layer as constants: with the
    decoder's path also training the mask layer's MLP, reconstruction pulled the pendulum's
    shadow-length function away from the structural fit and its edges faded."""
    torch.manual_seed(0)
    model = SCMLatent(20, SCMConfig(concepts=4, concept_dim=3))
    with torch.no_grad():
        model.mask_layer.w2.normal_()  # a non-trivial structural function
    features, labels = torch.randn(5, 20), torch.randn(5, 4)
    out = model(features, labels)
    elbo = model.to_decoder(out.z).square().mean() + out.losses["kl"] + out.losses["label"]
    elbo.backward()
    assert model.heads.weight.grad.abs().sum() > 0  # the representation learns
    for p in [model.weights, *model.mask_layer.parameters()]:
        assert p.grad is None or p.grad.abs().sum() == 0
    model.zero_grad()
    model(features, labels).losses["mask"].backward()
    assert all(p.grad.abs().sum() > 0 for p in model.mask_layer.parameters())
    # an observed image's concepts are the SCM's z: the mask layer's functions do not move
    # them (z' = z), they act under do()
    model.eval()
    blocks = model(features, labels).mean
    torch.testing.assert_close(blocks, model.linear_scm(model.exogenous(features)))
    torch.testing.assert_close(model.do(blocks, 1, blocks[:, 3:6]), blocks)


def test_actions_intervene_and_retrieval():
    model = chain_model(0.7, -1.3, k=2, nonlinear=True)
    z = model.sample_prior(num=4)
    out = model.intervene(z, torch.tensor([2, 3, 0, 5]))  # +1 on 1, -1 on 1, +1 on 0, -1 on 2
    torch.testing.assert_close(out[0, 2:4], z[0, 2:4] + 1.0)
    torch.testing.assert_close(out[1, 2:4], z[1, 2:4] - 1.0)
    torch.testing.assert_close(out[0, 0:2], z[0, 0:2])
    torch.testing.assert_close(out[2, 0:2], z[2, 0:2] + 1.0)
    torch.testing.assert_close(out[3, 0:4], z[3, 0:4])
    # retrieval: the abducted exogenous noise moves only in the intervened block
    eps, eps_next = model.abduct(z), model.abduct(out)
    changed = (eps_next - eps).abs().reshape(4, 3, 2).amax(-1) > 1e-5
    expected = [[False, True, False]] * 2 + [[True, False, False], [False, False, True]]
    assert changed.tolist() == expected
    scores = model.retrieval_scores(eps, eps_next)
    assert scores.shape == (4, 6)
    assert scores.argmax(-1).tolist() == [2, 3, 0, 5]


@pytest.mark.slow
def test_recovers_chain_graph_on_synthetic_linear_data():
    """0 -> 1 (1.5), 1 -> 2 (-1.2) from labels and a fixed linear mixing into 16 features.

    Labels are z over one common scale: per-concept standardisation of linear-Gaussian data
    would make 0 -> 1 -> 2 and its Markov-equivalent graphs equally good (see scm.py).
    """
    torch.manual_seed(0)
    n = 256
    e = torch.randn(n, 3)
    z0 = e[:, 0]
    z1 = 1.5 * z0 + e[:, 1]
    z2 = -1.2 * z1 + e[:, 2]
    z = torch.stack([z0, z1, z2], dim=-1)
    x = z @ torch.randn(3, 16) + 0.01 * torch.randn(n, 16)
    labels = (z - z.mean(0)) / z.std()
    model = SCMLatent(16, SCMConfig(concepts=3, concept_dim=2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(1000):
        out = model(x, labels, step)
        recon = (model.to_decoder(out.z) - x).square().sum(-1).mean()
        loss = recon + out.losses["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            model.update_lagrangian(model.acyclicity().item())
    assert model.learned_graph().tolist() == [[0, 1, 0], [0, 0, 1], [0, 0, 0]]
    # signs of the true edges, as effects (the gate A and the mask layer's MLP share them)
    unit = torch.eye(3)[:, None, :].expand(3, 2, 3).transpose(1, 2)  # concept i moved by 1
    with torch.no_grad():
        effect = model.structural(unit, model.adjacency()).mean(-1)  # [i, j]: on f_j
    assert effect[0, 1] > 0 > effect[1, 2]
    assert model.acyclicity().item() < 1e-2
    assert math.isfinite(loss.item())


def test_edge_strength_is_abs_weight_for_linear_scm():
    model = chain_model(0.7, -1.3, k=2)  # mask layer's nonlinear part starts at zero
    expected = torch.tensor([[0.0, 0.7, 0.0], [0.0, 0.0, 1.3], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(model.edge_strength(), expected, atol=1e-5, rtol=1e-5)


def test_interventional_edge_prior_and_data_steps():
    """Actions move concepts 0 and 1 only: no edge may leave 2 or 3; steps come from data."""
    cfg = SCMConfig(concepts=4, concept_dim=2)
    model = SCMLatent(8, cfg, action_targets=[0, 0, 1, 1], action_steps=[0.1, -0.1, 0.2, -0.2])
    with torch.no_grad():
        model.weights.fill_(1.0)
    allowed = (model.adjacency() != 0).long().tolist()
    assert allowed == [[0, 1, 1, 1], [1, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    with torch.no_grad():
        model.weights.zero_()
    z = torch.randn(4, 8)
    out = model.intervene(z, torch.tensor([0, 1, 2, 3]))
    torch.testing.assert_close(
        out[:, 0:2] - z[:, 0:2], torch.tensor([[0.1] * 2, [-0.1] * 2, [0.0] * 2, [0.0] * 2])
    )
    torch.testing.assert_close(
        out[:, 2:4] - z[:, 2:4], torch.tensor([[0.0] * 2, [0.0] * 2, [0.2] * 2, [-0.2] * 2])
    )
    eps, eps_next = model.abduct(z), model.abduct(out)
    assert model.retrieval_scores(eps, eps_next).argmax(-1).tolist() == [0, 1, 2, 3]


def test_invariance_loss_known_answers():
    """u1 = 2 u0, actions move u0 by +-1: the true edge 0 -> 1 keeps e1 fixed (loss 0); the
    reversed edge leaves u1 as a root whose noise moves by its whole change (loss 1)."""
    cfg = SCMConfig(concepts=2, concept_dim=1, edge_prior="none")
    model = SCMLatent(4, cfg, action_targets=[0, 0], action_steps=[1.0, -1.0])
    u0 = torch.randn(8)
    actions = torch.tensor([0, 1] * 4)
    u0_next = u0 + model.action_shift[actions, 0]
    labels = torch.cat([torch.stack([u0, 2 * u0], -1), torch.stack([u0_next, 2 * u0_next], -1)])
    with torch.no_grad():
        model.weights.copy_(torch.tensor([[0.0, 2.0], [0.0, 0.0]]))
    assert model.pair_losses(labels, actions)["invariance"].item() == pytest.approx(0, abs=1e-6)
    with torch.no_grad():
        model.weights.copy_(torch.tensor([[0.0, 0.0], [0.5, 0.0]]))
    assert model.pair_losses(labels, actions)["invariance"].item() == pytest.approx(1.0)
    assert model.pair_losses(labels, None) == {}


@pytest.mark.slow
@pytest.mark.parametrize("stride", [1, 3])
def test_pendulum_graph_from_interventional_label_pairs(stride: int):
    """Structure learning on the pendulum's labels alone (no images; after the fix of the
    mask layer's coupling to the decoder, the model's structure learns from nothing else):
    the observational fit plus interventional invariance recovers {pendulum, light} ->
    {shadow length, position}, on the real folder's grid (stride 1: one step = 0.9 degrees,
    0.04 label std) as on the coarse default, with the true edges clearly above the rest."""
    from vqcausal.config import DataConfig
    from vqcausal.data.registry import load_source
    from vqcausal.data.source import ConceptScaler
    from vqcausal.data.transitions import TransitionConfig, TransitionSampler, action_concept_steps

    torch.manual_seed(0)
    source = load_source(DataConfig(dataset="pendulum", image_size=32, stride=stride))
    sampler = TransitionSampler(source, TransitionConfig())
    scaler = ConceptScaler(source)
    targets, steps = action_concept_steps(sampler, scaler)
    model = SCMLatent(4, SCMConfig(concepts=4, concept_dim=1), targets, steps)
    generator = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam([model.weights, *model.mask_layer.parameters()], lr=1e-2)
    for step in range(1500):
        t = sampler.sample(128, "train", generator)
        labels = scaler.normalise(torch.cat([t.values, t.values_next]))
        blocks = labels[:, :, None]
        mask = (blocks - model.structural(blocks, model.adjacency())).square().sum((1, 2)).mean()
        h = model.acyclicity()
        loss = mask + model.pair_losses(labels, t.actions)["invariance"]
        loss = loss + 1e-2 * model.adjacency().abs().sum()
        loss = loss + model.lagrangian_lambda * h + 0.5 * model.lagrangian_rho * h.square()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 99:
            model.update_lagrangian(model.acyclicity().item())
    assert model.learned_graph().tolist() == source.true_dag.long().tolist()
    strength, true = model.edge_strength(), source.true_dag.bool()
    assert strength[true].min() > 3 * strength[~true].max()


def test_calibrate_reads_the_latent_scale():
    cfg = SCMConfig(concepts=2, concept_dim=2)
    model = SCMLatent(4, cfg, action_targets=[0, 0, 1, -1], action_steps=[1.0, -1.0, 1.0, 0.0])
    z = torch.randn(6, 4)
    actions = torch.tensor([0, 0, 0, 1, 2, 3])
    z_next = z.clone()
    z_next[:3, 0:2] += torch.tensor([[0.3], [0.3], [0.5]])  # median block change 0.3
    z_next[3, 0:2] -= 0.2
    z_next[4, 2:4] += torch.tensor([0.1, 0.3])  # block mean 0.2
    model.calibrate(z, actions, z_next)
    expected = torch.tensor([[0.3, 0.0], [-0.2, 0.0], [0.0, 0.2], [0.0, 0.0]])
    torch.testing.assert_close(model.action_shift, expected)
    assert "action_shift" in model.state_dict()  # travels with checkpoints
