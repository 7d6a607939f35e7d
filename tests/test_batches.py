"""Stage-1 batches rendered in loader workers, reproducible by step; balanced stage-2 draws."""

import pytest
import torch

from vqcausal.data.transitions import TransitionConfig, TransitionSampler
from vqcausal.train.batches import (
    PairChunks,
    StepBatches,
    data_workers,
    loader,
    step_seed,
)
from vqcausal.train.stage2_pairs import pair_weights, with_reversed_pairs


def _collect(stream: StepBatches, workers: int) -> list[dict[str, torch.Tensor]]:
    return list(loader(stream, workers, pin_memory=False))


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        all(torch.equal(x[k], y[k]) for k in ("x", "values", "actions"))
        for x, y in zip(a, b, strict=True)
    )


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_workers_hand_back_the_same_batches_in_step_order(toy):
    stream = StepBatches(TransitionSampler(toy), pairs=4, start=0, end=7, seed=3)
    in_process = _collect(stream, 0)
    assert len(in_process) == 7
    assert in_process[0]["x"].shape == (8, 3, 16, 16) and in_process[0]["x"].dtype == torch.uint8
    assert in_process[0]["values"].shape[0] == 8 and in_process[0]["actions"].shape == (4,)
    assert _same(_collect(stream, 2), in_process)
    assert _same(_collect(stream, 3), in_process)
    # each batch is the one its step draws, whoever renders it
    assert _same([stream.batch(s) for s in range(7)], in_process)


def test_a_stream_started_late_continues_the_uninterrupted_one(toy):
    sampler = TransitionSampler(toy)
    whole = _collect(StepBatches(sampler, 4, start=0, end=6, seed=1), 0)
    resumed = _collect(StepBatches(sampler, 4, start=4, end=6, seed=1), 2)
    assert _same(resumed, whole[4:])


def test_batches_differ_across_steps_ranks_and_seeds(toy):
    sampler = TransitionSampler(toy)
    base = StepBatches(sampler, 16, start=0, end=2, seed=0, rank=0)
    other_rank = StepBatches(sampler, 16, start=0, end=2, seed=0, rank=1)
    other_seed = StepBatches(sampler, 16, start=0, end=2, seed=1, rank=0)
    assert not torch.equal(base.batch(0)["values"], base.batch(1)["values"])
    assert not torch.equal(base.batch(0)["values"], other_rank.batch(0)["values"])
    assert not torch.equal(base.batch(0)["values"], other_seed.batch(0)["values"])
    seeds = {step_seed(s, r, t) for s in range(4) for r in range(4) for t in range(64)}
    assert len(seeds) == 4 * 4 * 64 and all(0 <= v < 2**63 for v in seeds)


def test_pair_chunks_render_the_given_transitions_in_order(toy):
    sampler = TransitionSampler(toy)
    t = sampler.sample(10, generator=torch.Generator().manual_seed(0))
    x, x_next = sampler.images(t)
    chunks = list(loader(PairChunks(sampler, t, chunk=4), 2, pin_memory=False))
    assert [len(c[0]) for c in chunks] == [4, 4, 2]
    assert torch.equal(torch.cat([c[0] for c in chunks]), x)
    assert torch.equal(torch.cat([c[1] for c in chunks]), x_next)


def test_worker_count():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert data_workers(-1, cpu) == 0
    assert data_workers(3, cpu) == 3 and data_workers(0, cuda) == 0
    assert 0 <= data_workers(-1, cuda) <= 8
    assert data_workers(-1, cuda, processes=1000) == 0


def test_balanced_weights_draw_every_action_equally_often(toy):
    sampler = TransitionSampler(toy, TransitionConfig(imbalance=100.0, seed=2))
    actions = sampler.sample(4000).actions
    counts = torch.bincount(actions, minlength=4)
    assert counts[0] > 20 * counts[-1] > 0  # the cache is skewed
    weights = pair_weights(actions, balance=True)
    per_action = torch.zeros(4, dtype=torch.float64).index_add_(0, actions, weights)
    assert torch.allclose(per_action, torch.ones(4, dtype=torch.float64))
    draws = torch.multinomial(weights, 40_000, replacement=True, generator=torch.Generator())
    share = torch.bincount(actions[draws], minlength=4) / 40_000
    assert torch.allclose(share, torch.full((4,), 0.25, dtype=share.dtype), atol=0.01)
    assert torch.equal(pair_weights(actions, balance=False), torch.ones(len(actions)))


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_is_empty_past_its_end(toy, workers):
    stream = StepBatches(TransitionSampler(toy), 4, start=5, end=5)
    assert _collect(stream, workers) == []


def test_reversed_pairs_swap_the_latents_and_invert_the_action():
    cache = {
        "latents": torch.tensor([[1, 2], [3, 4]]),
        "actions": torch.tensor([0, 3]),
        "latents_next": torch.tensor([[5, 6], [7, 8]]),
    }
    both = with_reversed_pairs(cache, lambda a: a ^ 1)
    assert both["actions"].tolist() == [0, 3, 1, 2]
    assert both["latents"].tolist() == [[1, 2], [3, 4], [5, 6], [7, 8]]
    assert both["latents_next"].tolist() == [[5, 6], [7, 8], [1, 2], [3, 4]]


def test_iterating_a_loader_leaves_the_global_rng_alone(toy):
    stream = StepBatches(TransitionSampler(toy), 4, start=0, end=2)
    before = torch.get_rng_state()
    list(loader(stream, 0, pin_memory=False))
    assert torch.equal(torch.get_rng_state(), before)
