"""The counterfactual section's diagnosis on known cases: where atomicity is lost, and by whom.

A stand-in model on the toy scene whose latents are the factor values themselves, and an oracle
that reads factors exactly (nearest grid image), give answers known in advance: a transition
that returns x''s true latents reaches the autoencoder ceiling, one that returns x's latents
moves nothing, and a perfect transition stays atomic over chained steps.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vqcausal.config import DataConfig
from vqcausal.data.registry import load_source
from vqcausal.data.source import to_float
from vqcausal.data.transitions import TransitionConfig, TransitionSampler
from vqcausal.eval.counterfactual import (
    counterfactual_section,
    diagnosis_rows,
    per_action_table,
    training_fit,
)
from vqcausal.eval.metrics import code_change_report, code_change_summary
from vqcausal.eval.pairs import PairLatents
from vqcausal.models.base import CausalImageModel, ModelArgs


class NearestGridImage(nn.Module):
    """An exact factor oracle for a small grid: the factors of the nearest rendered image."""

    def __init__(self, source) -> None:
        super().__init__()
        self.space = source.space
        grid = self.space.unravel(torch.arange(self.space.num_values))
        self.register_buffer("values", grid)
        self.register_buffer("images", to_float(source.render(grid)).flatten(1))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.values[torch.cdist(x.flatten(1).float(), self.images).argmin(1)]


class FactorLatents(CausalImageModel):
    """Latents = the factor values, one variable per factor; decode renders them.

    ``lossy``: the encoder rounds position down to an even value, so an odd position is lost
    (the autoencoder ceiling drops below 1). ``step_latent`` is a perfect transition in factor
    space."""

    def __init__(self, source, lossy: bool = False) -> None:
        super().__init__(ModelArgs(list(source.image_shape), source.space.action_names))
        self.source, self.lossy = source, lossy
        self.oracle = NearestGridImage(source)

    def encode(self, x):
        values = self.oracle.predict(x)
        if self.lossy:
            values[:, 0] -= values[:, 0] % 2
        return values

    def decode_latent(self, latents):
        return to_float(self.source.render(latents.cpu())).to(self.oracle.images.device)

    def step_latent(self, latents, actions):
        return self.source.space.apply(latents, actions)[0]

    def synthesis_scores(self, latents, latents_next):
        raise NotImplementedError

    def stage1_objective(self):
        raise NotImplementedError

    def stage2_objective(self):
        raise NotImplementedError

    def stage1_modules(self):
        return []


@pytest.fixture(scope="module")
def toy():
    source = load_source(DataConfig(dataset="toy"))
    sampler = TransitionSampler(source, TransitionConfig(test_fraction=0.2, seed=0))
    t = sampler.sample(400, "test", torch.Generator().manual_seed(0))
    x, x_next = sampler.images(t)
    return source, t, x, x_next


def _section(toy, lossy: bool = False, predicted: str | None = None) -> tuple[dict, PairLatents]:
    source, t, x, x_next = toy
    model = FactorLatents(source, lossy)
    latents = model.encode(to_float(x))
    latents_next = model.encode(to_float(x_next))
    pairs = PairLatents(x, x_next, latents, latents_next)
    chosen = {"x'": latents_next, "x": latents, None: None}[predicted]
    info = {"accuracy": 1.0}
    section = counterfactual_section(
        model, pairs, t, model.oracle, info, source.space, predicted=chosen
    )
    return section, pairs


def test_a_perfect_transition_is_atomic_at_every_chained_step(toy):
    section, _ = _section(toy)
    assert section["atomicity"] == 1.0 and section["autoencoder_ceiling"] == 1.0
    assert section["psnr"] == 100.0 and section["atomicity_reliable"] is True
    chained = section["chained"]
    assert [chained[k]["atomicity"] for k in ("1", "2", "3")] == [1.0, 1.0, 1.0]
    # position (8 values) is bounded: chains that would step off its grid drop out
    source, t, _, _ = toy
    values, valid = t.values, torch.ones(len(t), dtype=torch.bool)
    for k in ("1", "2", "3"):
        values, ok = source.space.apply(values, t.actions)
        valid &= ok
        assert chained[k]["pairs"] == int(valid.sum())
    assert chained["1"]["pairs"] == len(t) > chained["3"]["pairs"]
    codes = section["codes"]
    assert codes["changed_fraction"] == 0.5  # one of the two variables moves per pair
    assert codes["accuracy_changed"] == codes["change_precision"] == codes["change_recall"] == 1.0


def test_returning_x_latents_moves_nothing(toy):
    section, _ = _section(toy, predicted="x")
    assert section["atomicity"] == 0.0 and section["intended_moved"] == 0.0
    assert section["others_kept"] == 1.0
    codes = section["codes"]
    assert codes["accuracy_changed"] == 0.0 and codes["accuracy_unchanged"] == 1.0
    assert codes["change_recall"] == 0.0 and codes["change_precision"] is None
    assert all(row["atomicity"] in (0.0, None) for row in section["per_action"].values())


def test_returning_the_true_next_latents_reaches_the_autoencoder_ceiling(toy):
    section, pairs = _section(toy, lossy=True, predicted="x'")
    source, t, _, _ = toy
    # the lossy encoder keeps x' exactly where its position is even
    expected = (t.values_next[:, 0] % 2 == 0).double().mean().item()
    assert section["autoencoder_ceiling"] == pytest.approx(expected)
    assert 0.2 < expected < 0.8
    assert section["atomicity"] == section["autoencoder_ceiling"]
    for name, row in section["per_action"].items():
        assert row["atomicity"] == row["autoencoder_ceiling"], name
    factors = section["per_factor"]
    assert factors["hue"] == {"counterfactual": 1.0, "autoencoder": 1.0, "true": 1.0}
    assert factors["position"]["autoencoder"] == pytest.approx(expected)
    assert section["codes"]["exact"] == 1.0


def test_per_action_table_and_figure_rows(toy):
    section, pairs = _section(toy)
    header, rows = per_action_table(section)
    source, t, _, _ = toy
    assert header[:3] == ["action", "pairs", "atomic"] and header[-1] == "3 steps"
    assert [row[0] for row in rows] == source.space.action_names
    assert sum(row[1] for row in rows) == len(t)
    model = FactorLatents(source)
    images, labels = diagnosis_rows(model, pairs, t.actions, source.space.action_names, 2)
    assert len(images) == len(labels) == len(t.actions.unique())
    for row in images:
        assert row.shape == (10, 3, 16, 16)  # 2 pairs x (x, x', AE(x'), cf, difference)
        assert row[4::5].abs().max() == 0  # a perfect transition: nothing differs


def test_code_change_summary_by_hand():
    codes = torch.tensor([[0, 1, 2, 3], [5, 5, 5, 5]])
    codes_next = torch.tensor([[0, 9, 2, 8], [5, 5, 5, 5]])  # variables 1 and 3 change
    predicted = torch.tensor([[7, 9, 2, 3], [5, 5, 5, 5]])  # 1 right, 3 missed, 0 moved wrongly
    summary = code_change_summary(codes, codes_next, predicted)
    assert summary == {
        "changed_fraction": 2 / 8,
        "accuracy_changed": 1 / 2,
        "accuracy_unchanged": 5 / 6,
        "change_precision": 1 / 2,
        "change_recall": 1 / 2,
        "exact": 1 / 2,
    }
    report = code_change_report(codes, codes_next, predicted, torch.tensor([0, 1]), ["a", "b", "c"])
    assert report["per_action"]["b"]["accuracy_changed"] is None  # nothing changes in that pair
    assert report["per_action"]["c"] is None
    with pytest.raises(ValueError, match="shapes differ"):
        code_change_summary(codes, codes_next[:, :2], predicted)


def test_training_fit_scores_the_cached_training_pairs(toy):
    """The stand-in's perfect transition fits cached pairs exactly; a cache whose x' codes
    were corrupted shows as missed changes, only on the pairs asked for."""
    source, t, x, x_next = toy
    model = FactorLatents(source)
    latents = model.encode(to_float(x))
    cache = {
        "latents": latents,
        "actions": t.actions,
        "latents_next": model.encode(to_float(x_next)),
    }
    fit = training_fit(model, cache, pairs=100)
    assert fit["accuracy_changed"] == fit["accuracy_unchanged"] == fit["exact"] == 1.0
    cache["latents_next"] = latents  # as if no variable changed: every predicted change is wrong
    fit = training_fit(model, cache, pairs=100)
    assert fit["changed_fraction"] == 0.0 and fit["change_precision"] == 0.0
    assert fit["accuracy_unchanged"] == pytest.approx(1 - 100 / latents[:100].numel())
