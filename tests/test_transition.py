"""Causal transition and retrieval heads: shapes, determinism, action conditioning, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from vqcausal.models.dag import notears
from vqcausal.models.retrieval import ActionClassifier, retrieval_probabilities
from vqcausal.models.transition import CausalTransition, TransitionModelConfig

N, K, C, A, B = 12, 5, 2, 3, 4


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest (and without oversubscription stalls) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model() -> CausalTransition:
    torch.manual_seed(0)
    return CausalTransition(N, K, C, A, TransitionModelConfig(hidden=16, heads=2))


def random_codes(b: int = B, n: int = N, k: int = K) -> torch.Tensor:
    return torch.randint(0, k, (b, n))


def test_shapes(model: CausalTransition) -> None:
    codes = random_codes()
    out = model(codes, torch.randint(0, A, (B,)))
    assert out.logits.shape == (B, 1, N, K)
    assert out.mask.shape == (B, 1, N)
    assert out.adjacency.shape == (B, N, N)
    out = model(codes, torch.randint(0, A + 1, (B, 5)))  # the no-op index A is allowed
    assert out.logits.shape == (B, 5, N, K) and out.mask.shape == (B, 5, N)
    out = model(codes)
    assert out.logits.shape == (B, A, N, K)
    assert model.predict(codes, torch.zeros(B, dtype=torch.long)).shape == (B, N)
    assert model.score_actions(codes, random_codes()).shape == (B, A)
    with pytest.raises(ValueError):
        model(random_codes(n=N + 1))


def test_adjacency_is_a_weighted_graph_without_self_loops(model: CausalTransition) -> None:
    adjacency = model(random_codes()).adjacency
    assert torch.all(adjacency.diagonal(dim1=-2, dim2=-1) == 0)
    assert adjacency.min() >= 0 and adjacency.max() <= 1


def test_eval_is_deterministic_training_is_stochastic(model: CausalTransition) -> None:
    codes, actions = random_codes(), torch.randint(0, A, (B, 2))
    model.eval()
    first, second = model(codes, actions), model(codes, actions)
    assert torch.equal(first.logits, second.logits)
    assert torch.equal(model.score_actions(codes, codes), model.score_actions(codes, codes))
    model.train()
    assert not torch.equal(model(codes, actions).logits, model(codes, actions).logits)


def test_action_reaches_the_intervened_nodes(model: CausalTransition) -> None:
    """Mask forced on for every node: the outputs still differ between actions."""
    with torch.no_grad():
        model.mask_q.weight.zero_()
        model.mask_bias.fill_(10.0)
    model.eval()
    codes = random_codes()
    out = model(codes, torch.tensor([[0, 1]] * B))
    assert torch.all(out.mask > 0.99)
    assert not torch.allclose(out.logits[:, 0], out.logits[:, 1], atol=1e-4)


def test_action_reaches_the_messages(model: CausalTransition, monkeypatch) -> None:
    """Same mask and same intervention update for two actions: the children still differ."""
    with torch.no_grad():
        model.update_action.weight.zero_()  # delta0 no longer depends on the action
        model.graph_bias.fill_(3.0)  # a dense graph, so every node hears node 0
    fixed = torch.zeros(B, N, 2)
    fixed[:, 0] = 1.0  # only node 0 is intervened on, for both actions
    monkeypatch.setattr(model, "_mask", lambda logits, hard: fixed)
    model.eval()
    logits = model(random_codes(), torch.tensor([[0, 1]] * B)).logits
    assert torch.allclose(logits[:, 0, 0], logits[:, 1, 0])  # the intervened node agrees
    assert not torch.allclose(logits[:, 0, 1:], logits[:, 1, 1:], atol=1e-4)


def test_no_change_means_copy_structure(model: CausalTransition, monkeypatch) -> None:
    """With an empty mask nothing moves: every action gives the same prediction."""
    monkeypatch.setattr(model, "_mask", lambda logits, hard: torch.zeros_like(logits))
    logits = model(random_codes()).logits
    assert torch.allclose(logits[:, 0], logits[:, 1]) and torch.allclose(logits[:, 0], logits[:, 2])


def test_batched_scores_equal_sequential(model: CausalTransition) -> None:
    model.eval()
    codes, codes_next = random_codes(), random_codes()
    batched = model.score_actions(codes, codes_next)
    sequential = []
    for a in range(A):
        logits = model(codes, torch.full((B,), a)).logits[:, 0]  # (B, N, K)
        log_p = logits.log_softmax(-1).gather(-1, codes_next[..., None]).squeeze(-1)
        sequential.append(log_p.sum(-1))
    assert torch.allclose(batched, torch.stack(sequential, dim=1), atol=1e-4, rtol=1e-5)
    probs = retrieval_probabilities(batched)
    assert torch.allclose(probs.sum(-1), torch.ones(B))


def test_chunked_cpu_scores_equal_one_pass(model: CausalTransition, monkeypatch) -> None:
    """Without gradients the CPU scores pairs in cache-sized chunks (the action-independent
    part still once): the same scores as one pass; with gradients (training) one pass."""
    import vqcausal.models.transition as transition

    model.eval()
    codes, codes_next = random_codes(b=7), random_codes(b=7)
    with torch.no_grad():
        one_pass = model.score_actions(codes, codes_next)
        per_pair = N * A * model.config.update_expansion * model.config.hidden
        monkeypatch.setattr(transition, "CPU_CHUNK_FLOATS", 3 * per_pair)
        assert model.cpu_chunk() == 3
        calls = []
        original = model.apply_actions
        counted = lambda s, a: calls.append(len(a)) or original(s, a)  # noqa: E731
        monkeypatch.setattr(model, "apply_actions", counted)
        chunked = model.score_actions(codes, codes_next)
    assert calls == [3, 3, 1]
    assert torch.allclose(chunked, one_pass, atol=1e-5)
    calls.clear()
    model.score_actions(codes, codes_next).sum().backward()
    assert calls == [7]


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_pairwise_feature_tensor() -> None:
    """N = 256: nothing of size B*N*N*hidden is ever built, in retrieval or in training.

    (The update's hidden layer is kept at ``hidden`` wide: its B*N*A*width slots grow with N,
    not N^2, but at width 4 * hidden they would pass this bound by themselves.)"""
    n, b, hidden, actions = 256, 8, 64, 12
    config = TransitionModelConfig(hidden=hidden, update_expansion=1)
    model = CausalTransition(n, 16, 1, actions, config)
    codes = random_codes(b, n, 16)
    with LargestTensor() as probe:
        with torch.no_grad():
            model.eval()
            model.score_actions(codes, codes)
        model.train()
        model.losses(codes, torch.randint(0, actions, (b,)), codes)["total"].backward()
    assert probe.largest < b * n * n * hidden // 8, probe.largest


def test_losses_are_finite_and_reach_every_parameter() -> None:
    torch.manual_seed(0)
    config = TransitionModelConfig(hidden=16, heads=2, w_acyclic=0.1)
    model = CausalTransition(N, K, C, A, config)
    losses = model.losses(random_codes(), torch.randint(0, A, (B,)), random_codes())
    expected = {"code", "identity", "retrieval", "mask", "graph", "acyclic", "total"}
    assert expected <= losses.keys()
    assert all(torch.isfinite(v).all() for v in losses.values())
    assert losses["pair_code"].shape == (B,)
    assert losses["acyclic"] > 0
    losses["total"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_training_slots_put_the_true_action_first_and_its_inverse_second() -> None:
    actions = torch.tensor([0, 3, 4, 5, 1])
    for slots, width in ((3, 3), (0, 6), (6, 6), (9, 6)):
        model = CausalTransition(N, K, C, 6, TransitionModelConfig(hidden=16, train_slots=slots))
        chosen = model.training_slots(actions)
        assert chosen.shape == (5, width)
        assert torch.equal(chosen[:, 0], actions) and torch.equal(chosen[:, 1], actions ^ 1)
        assert all(len(set(row)) == width for row in chosen.tolist())  # distinct actions


def test_changed_variables_weigh_more_in_the_code_loss(monkeypatch) -> None:
    torch.manual_seed(0)
    codes, actions = random_codes(), torch.randint(0, A, (B,))
    codes_next = codes.clone()
    codes_next[:, :3] = (codes[:, :3] + 1) % K  # 3 of N variables change
    losses = {}
    for weight in (0.0, 3.0):
        torch.manual_seed(1)
        model = CausalTransition(N, K, C, A, TransitionModelConfig(hidden=16, w_changed=weight))
        model.eval()  # deterministic mask: the same logits for both weights
        losses[weight] = model.losses(codes, actions, codes_next)["code"].item()
        logits = model(codes, actions).logits[:, 0]
        per = F.cross_entropy(logits.transpose(1, 2), codes_next, reduction="none").detach()
    changed, unchanged = per[:, :3].mean(), per[:, 3:].mean()
    assert losses[0.0] == pytest.approx((3 * changed + (N - 3) * unchanged).item() / N, rel=1e-5)
    expected = (4 * 3 * changed + (N - 3) * unchanged) / (4 * 3 + N - 3)
    assert losses[3.0] == pytest.approx(expected.item(), rel=1e-5)


def test_notears_is_zero_on_a_dag() -> None:
    dag = torch.triu(torch.rand(5, 5), diagonal=1)
    assert notears(dag).abs() < 1e-5
    assert notears(dag + dag.T) > 0.1


@pytest.mark.parametrize("layers", [0, 2])
def test_classifier_shapes(layers: int) -> None:
    head = ActionClassifier(N, K, C, A, hidden=8, layers=layers, heads=2)
    assert head(random_codes(), random_codes()).shape == (B, A)


# ---- learning on a discrete toy --------------------------------------------------------

TN, TK, TA = 8, 6, 4


def toy_pairs(b: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Variable 1 copies variable 0 (its parent); actions 0/1 move v0 by +-1, 2/3 move v5."""
    codes = torch.randint(0, TK, (b, TN), generator=gen)
    codes[:, 1] = codes[:, 0]
    actions = torch.randint(0, TA, (b,), generator=gen)
    step = 1 - 2 * (actions % 2)
    target = torch.where(actions < 2, 0, 5)
    rows = torch.arange(b)
    codes_next = codes.clone()
    codes_next[rows, target] = (codes[rows, target] + step) % TK
    codes_next[:, 1] = codes_next[:, 0]
    return codes, actions, codes_next


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [{}, {"train_slots": 2, "w_changed": 2.0}, {"update_film": True, "update_layers": 2}],
    ids=["all-slots", "two-slots-weighted", "film-two-layers"],
)
def test_transition_learns_the_toy(options: dict) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = CausalTransition(TN, TK, 1, TA, TransitionModelConfig(hidden=32, **options))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = model.losses(*toy_pairs(64, gen))["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    codes, actions, codes_next = toy_pairs(1000, torch.Generator().manual_seed(1))
    with torch.no_grad():
        retrieved = model.score_actions(codes, codes_next).argmax(-1)
    assert (retrieved == actions).float().mean() >= 0.95
    exact = (model.predict(codes, actions) == codes_next).all(-1).float().mean()
    assert exact >= 0.9
    noop = torch.full_like(actions, TA)
    assert (model.predict(codes, noop) == codes).all(-1).float().mean() >= 0.9


def test_film_update_starts_as_the_shift_only_update(model: CausalTransition) -> None:
    """The action's gain is zero at init, so a FiLM update given the same weights predicts
    exactly what the shift-only update does, and a nonzero gain changes the prediction."""
    film = CausalTransition(N, K, C, A, TransitionModelConfig(hidden=16, heads=2, update_film=True))
    missing = film.load_state_dict(model.state_dict(), strict=False).missing_keys
    assert missing == ["update_gain.weight"]
    model.eval(), film.eval()
    codes = random_codes()
    with torch.no_grad():
        assert torch.equal(model(codes).logits, film(codes).logits)
        film.update_gain.weight.normal_()
        changed = film(codes, hard=False).logits
    assert not torch.allclose(model(codes, hard=False).logits, changed)


@pytest.mark.parametrize("layers", [0, 1])
def test_classifier_learns_the_toy(layers: int) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    head = ActionClassifier(TN, TK, 1, TA, hidden=32, layers=layers)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(300):
        codes, actions, codes_next = toy_pairs(64, gen)
        loss = F.cross_entropy(head(codes, codes_next), actions)
        opt.zero_grad()
        loss.backward()
        opt.step()
    codes, actions, codes_next = toy_pairs(1000, torch.Generator().manual_seed(1))
    with torch.no_grad():
        accuracy = (head(codes, codes_next).argmax(-1) == actions).float().mean()
    assert accuracy >= 0.9


def _train_without_action_1(model: CausalTransition, steps: int) -> None:
    """Trains on toy pairs of actions 0, 2, 3 only (action 1, "v0 - 1", never paired), with
    the ``w_cycle`` back-translated pairs added as the stage-2 objective adds them."""
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        codes, actions, codes_next = toy_pairs(96, gen)
        seen = actions != 1
        codes, actions, codes_next = codes[seen], actions[seen], codes_next[seen]
        loss = model.losses(codes, actions, codes_next)["total"]
        if model.config.w_cycle > 0:
            cf, inverse, targets, _ = model.back_translated(codes)
            if len(cf):
                loss = (
                    loss + model.config.w_cycle * model.losses(cf, inverse, targets, False)["total"]
                )
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.slow
@pytest.mark.parametrize("w_cycle", [0.0, 1.0])
def test_back_translation_teaches_an_action_never_paired(w_cycle: float) -> None:
    """Action 1 has no training pair; back-translation learns it from action 0's
    counterfactuals (as the inverse that restores the real codes), plain training cannot."""
    torch.manual_seed(0)
    model = CausalTransition(TN, TK, 1, TA, TransitionModelConfig(hidden=32, w_cycle=w_cycle))
    _train_without_action_1(model, 300)
    model.eval()
    codes, actions, codes_next = toy_pairs(2000, torch.Generator().manual_seed(1))
    unseen = actions == 1
    exact = (model.predict(codes[unseen], actions[unseen]) == codes_next[unseen]).all(-1)
    if w_cycle > 0:
        assert exact.float().mean() >= 0.9
    else:
        assert exact.float().mean() <= 0.3


def test_back_translated_pairs_invert_the_drawn_action() -> None:
    torch.manual_seed(0)
    model = CausalTransition(N, K, C, 4, TransitionModelConfig(hidden=16, heads=2))
    codes = random_codes(64)
    cf, inverse, targets, drawn = model.back_translated(codes)
    assert torch.equal(inverse, drawn ^ 1)
    assert ((cf != targets).any(1)).all()  # unchanged counterfactuals are dropped
    assert len(cf) <= 64
    model.eval()
    assert torch.equal(cf, model.predict(targets, drawn))


def test_a_model_that_cannot_tell_actions_apart_has_training_accuracy_zero() -> None:
    """Equal scores for every action are a tie, not a hit for the true (first) column."""
    torch.manual_seed(0)
    model = CausalTransition(N, K, C, A, TransitionModelConfig(hidden=16)).eval()
    for p in model.parameters():
        p.data.zero_()  # every action predicts the same codes: all scores equal
    codes, actions = random_codes(), torch.randint(0, A, (B,))
    assert model.losses(codes, actions, random_codes())["retrieval_accuracy"].item() == 0.0
