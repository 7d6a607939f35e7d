import pytest
import torch

from vqcausal.data.factors import Factor, FactorSpace
from vqcausal.errors import DataError


def test_action_names_and_order(mixed_space):
    assert mixed_space.num_actions == 6
    assert mixed_space.action_names == ["hue+", "hue-", "scale+", "scale-", "pos+", "pos-"]
    assert mixed_space.action_index("scale-") == 3
    with pytest.raises(DataError, match="unknown action 'size\\+'"):
        mixed_space.action_index("size+")
    with pytest.raises(DataError, match="unknown factor"):
        mixed_space.factor_index("colour")


def test_cyclic_factor_wraps_both_ways(mixed_space):
    values = torch.tensor([[3, 1, 2], [0, 1, 2]])
    new, valid = mixed_space.apply(values, torch.tensor([0, 1]))  # hue+ at top, hue- at 0
    assert valid.all()
    assert new.tolist() == [[0, 1, 2], [3, 1, 2]]


def test_bounded_factor_never_steps_off_the_grid(mixed_space):
    values = torch.tensor([[1, 2, 0], [1, 0, 4], [1, 1, 0], [1, 2, 3]])
    actions = torch.tensor([2, 3, 5, 4])  # scale+ at top, scale- at 0, pos- at 0, pos+ inside
    new, valid = mixed_space.apply(values, actions)
    assert valid.tolist() == [False, False, False, True]
    assert new[:3].tolist() == values[:3].tolist()  # invalid moves leave the row unchanged
    assert new[3].tolist() == [1, 2, 4]


def test_valid_actions_matches_apply(mixed_space):
    values = mixed_space.unravel(torch.arange(mixed_space.num_values))
    mask = mixed_space.valid_actions(values)
    for a in range(mixed_space.num_actions):
        _, valid = mixed_space.apply(values, torch.full((len(values),), a))
        assert torch.equal(mask[:, a], valid)
    # interior points of bounded factors can move both ways; every hue action is valid
    assert mask[:, 0].all() and mask[:, 1].all()
    assert mask[:, 2].sum() == 4 * 2 * 5


def test_exactly_one_factor_moves_by_one_step(mixed_space):
    values = mixed_space.sample_values(200, torch.Generator().manual_seed(0))
    actions = torch.randint(6, (200,), generator=torch.Generator().manual_seed(1))
    new, valid = mixed_space.apply(values, actions)
    diff = (new - values)[valid]
    changed = (diff != 0).sum(1)
    assert (changed == 1).all()
    k = FactorSpace.action_factor(actions[valid])
    step = diff[torch.arange(len(k)), k]
    direction = FactorSpace.action_direction(actions[valid])
    size = torch.tensor(mixed_space.sizes)[k]
    assert ((step == direction) | (step == -direction * (size - 1))).all()  # wrap = -(size-1)


def test_ravel_unravel_round_trip(mixed_space):
    index = torch.arange(mixed_space.num_values)
    values = mixed_space.unravel(index)
    assert torch.equal(mixed_space.ravel(values), index)
    assert values[1].tolist() == [0, 0, 1]  # last factor fastest


def test_check_values_and_bad_spaces(mixed_space):
    with pytest.raises(DataError, match="out of range"):
        mixed_space.check_values(torch.tensor([[4, 0, 0]]))
    with pytest.raises(DataError, match="shape"):
        mixed_space.check_values(torch.tensor([1, 2, 3]))
    with pytest.raises(DataError, match="unique"):
        FactorSpace([Factor("a", 2), Factor("a", 3)])
    with pytest.raises(DataError, match="at least 2"):
        Factor("a", 1)


def test_serialisation_round_trip(mixed_space):
    assert FactorSpace.from_dict(mixed_space.to_dict()) == mixed_space
    with pytest.raises(DataError, match="malformed"):
        FactorSpace.from_dict({"factors": [{"name": "a"}]})


def test_inverse_action_undoes_every_valid_move():
    space = FactorSpace([Factor("bounded", 4), Factor("wheel", 5, cyclic=True)])
    values = space.unravel(torch.arange(space.num_values))
    for a in range(space.num_actions):
        actions = torch.full((len(values),), a)
        moved, valid = space.apply(values, actions)
        back, valid_back = space.apply(moved[valid], space.inverse_action(actions[valid]))
        assert valid_back.all() and torch.equal(back, values[valid])
    names = space.action_names
    inverse = space.inverse_action(torch.arange(space.num_actions)).tolist()
    assert [names[i] for i in inverse] == ["bounded-", "bounded+", "wheel-", "wheel+"]
