"""Action focus: running per-action training losses become sampling factors (known values),
and every stage-2 objective reports the per-pair loss they are built from."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TOY_TINY, run_folder

from vqcausal.config import load_config
from vqcausal.models.base import PAIR_LOSS, ModelArgs
from vqcausal.models.build import build_model
from vqcausal.train.focus import ActionFocus

ACTIONS = ["position+", "position-", "hue+", "hue-"]


def test_no_focus_before_any_loss_or_at_strength_zero():
    assert torch.equal(ActionFocus(4, 1.0).factors(), torch.ones(4, dtype=torch.float64))
    off = ActionFocus(4, 0.0)
    off.update(torch.tensor([0, 1]), torch.tensor([1.0, 9.0]))
    assert torch.equal(off.factors(), torch.ones(4, dtype=torch.float64))


def test_factors_are_the_loss_relative_to_the_mean_to_the_power_strength():
    focus = ActionFocus(4, 1.0)
    # batch means: action 0 -> 1, action 1 -> 3, action 2 -> 2; action 3 absent
    focus.update(torch.tensor([0, 0, 1, 2]), torch.tensor([0.5, 1.5, 3.0, 2.0]))
    assert focus.factors().tolist() == pytest.approx([0.5, 1.5, 1.0, 1.0])
    focus.strength = 2.0
    assert focus.factors().tolist() == pytest.approx([0.25, 2.25, 1.0, 1.0])


def test_the_running_mean_moves_by_one_minus_momentum_and_the_cap_holds():
    focus = ActionFocus(3, 1.0, momentum=0.5, cap=2.0)
    focus.update(torch.tensor([0, 1, 2]), torch.tensor([1.0, 1.0, 1.0]))
    focus.update(torch.tensor([0]), torch.tensor([3.0]))  # actions 1, 2 absent: unchanged
    assert focus.loss.tolist() == pytest.approx([2.0, 1.0, 1.0])
    focus.update(torch.tensor([0]), torch.tensor([1000.0]))  # 501 against a mean of 167.7
    assert focus.factors().tolist() == pytest.approx([2.0, 0.5, 0.5])  # capped at 2 and 1/2


def test_a_floor_of_one_only_adds_draws():
    """An easy (or memorised) action keeps its balanced share; the hard one gets more."""
    losses = torch.tensor([0.1, 0.1, 0.1, 3.7])  # mean 1
    focus = ActionFocus(4, 1.0, floor=1.0)
    focus.update(torch.arange(4), losses)
    assert focus.factors().tolist() == pytest.approx([1.0, 1.0, 1.0, 3.7])
    default = ActionFocus(4, 1.0)
    default.update(torch.arange(4), losses)
    assert default.factors().tolist() == pytest.approx([0.125, 0.125, 0.125, 3.7])  # 1 / cap
    for floor in (0.0, 1.5):
        with pytest.raises(ValueError, match="floor"):
            ActionFocus(4, 1.0, floor=floor)


def test_by_factor_both_directions_share_the_mean_of_their_losses():
    """A memorised rare direction (low loss) is drawn as often as its hard common opposite."""
    focus = ActionFocus(4, 1.0, partners=torch.tensor([1, 0, 3, 2]))
    # action 0 (rare, memorised) -> 0.5, action 1 -> 3.5, action 2 -> 1; action 3 not seen yet
    focus.update(torch.tensor([0, 1, 2]), torch.tensor([0.5, 3.5, 1.0]))
    # factor losses: (0.5 + 3.5) / 2 = 2 for actions 0 and 1, 1 for action 2 (its partner
    # unseen); mean over the seen actions 0, 1, 2: 5 / 3
    assert focus.factors().tolist() == pytest.approx([1.2, 1.2, 0.6, 1.0])
    alone = ActionFocus(4, 1.0)
    alone.update(torch.tensor([0, 1, 2]), torch.tensor([0.5, 3.5, 1.0]))
    assert alone.factors()[0] < 1 < alone.factors()[1]  # by action the rare one is starved
    with pytest.raises(ValueError, match="partners"):
        ActionFocus(4, 1.0, partners=torch.tensor([1, 0]))


@pytest.mark.parametrize("latent", ["vq", "gaussian", "scm"])
def test_every_stage2_objective_reports_its_loss_per_pair(latent):
    options = [f'model.latent="{latent}"', "model.transition.w_changed=0.0"]
    options += ["model.scm.concepts=2", "model.scm.concept_dim=2"]
    config = load_config("configs/smoke.toml", options)
    torch.manual_seed(0)
    model = build_model(ModelArgs([3, 16, 16], ACTIONS, config.model)).train()
    b = 16
    if latent == "vq":
        n, k = model.args.num_variables, config.model.quantizer.codebook_size
        z = torch.randint(0, k, (b, n))
        z_next = torch.where(torch.rand(b, n) < 0.3, torch.randint(0, k, (b, n)), z)
    else:
        with torch.no_grad():
            z, z_next = model.encode(torch.rand(2 * b, 3, 16, 16)).chunk(2)
    batch = {"latents": z, "actions": torch.arange(b) % 4, "latents_next": z_next}
    terms, _ = model.stage2_objective()(batch)
    pair = terms[PAIR_LOSS]
    assert pair.shape == (b,) and not pair.requires_grad and bool((pair >= 0).all())
    # its mean is the objective's own term: the code CE (unweighted here) or the whole loss
    expected = terms["code"] if latent == "vq" else terms["total"]
    assert pair.mean().item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("floor", [0.125, 1.0])
def test_a_focused_stage2_draws_the_hard_actions_more(tmp_path, floor):
    from vqcausal.train.run import main as train

    sets = [*TOY_TINY, f'runs="{tmp_path}"', "train.action_focus=1.0", "train.log_every=5"]
    sets.append(f"train.focus_floor={floor}")
    assert train(["--config", "configs/smoke.toml", *(x for s in sets for x in ("--set", s))]) == 0
    lines = (run_folder(tmp_path) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    stage2 = [r for r in records if r["stage"] == 2 and "focus_max" in r]
    assert stage2, "stage 2 logged no focus factors"
    assert all(floor <= r["focus_min"] <= 1.0 <= r["focus_max"] <= 8.0 for r in stage2)
    assert max(r["focus_max"] for r in stage2) > 1.0  # the actions' losses differ


def test_a_negative_focus_or_an_unknown_unit_is_refused():
    from vqcausal.config import TrainConfig
    from vqcausal.errors import VQCausalError

    with pytest.raises(VQCausalError, match="action_focus"):
        TrainConfig(action_focus=-0.5)
    with pytest.raises(VQCausalError, match="focus_by"):
        TrainConfig(focus_by="direction")
    with pytest.raises(VQCausalError, match="focus_floor"):
        TrainConfig(focus_floor=0.0)
