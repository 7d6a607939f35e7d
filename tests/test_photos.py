"""Photo-style pairing on data with full ground truth: ``data.unlabelled`` drops factors'
labels, so a pair differs in one labelled factor and in any unlabelled one (as two CelebA
photos differ in identity), while the images, the split and the truth stay the base's."""

from __future__ import annotations

import json
import re

import pytest
import torch

from vqcausal.config import DataConfig
from vqcausal.data.factors import hash_unit
from vqcausal.data.registry import load_source
from vqcausal.data.toy import ToyRenderer
from vqcausal.data.transitions import TransitionConfig, TransitionSampler
from vqcausal.errors import DataError


def test_unlabelled_hue_pairs_differ_in_position_and_any_hue():
    view = load_source(DataConfig(dataset="toy", unlabelled=["hue"]))
    assert view.space.names == ["position"] and view.space.num_actions == 2
    assert len(view.photo_values) == 8 * 12 and not view.unique_images
    config = TransitionConfig(seed=3, test_fraction=0.25)
    sampler = TransitionSampler(view, config)
    other = TransitionSampler(view, TransitionConfig(seed=4, test_fraction=0.5))
    base = ToyRenderer()
    base_split = TransitionSampler(base, config).split_of(view.grid_values)
    # the base's split, image for image, on the sampler's own view of the collection: the
    # collection itself and a second sampler with another seed keep theirs
    assert torch.equal(sampler.source.photo_split, base_split)
    assert view.photo_split.sum() == 0 and sampler.source is not view
    assert other.source.photo_split.float().mean() > base_split.float().mean()
    view = sampler.source
    for split in (0, 1):
        t = sampler.sample(500, ("train", "test")[split], torch.Generator().manual_seed(split))
        x, x_next = view.grid_values[t.rows], view.grid_values[t.rows_next]
        step = torch.where(t.actions == 0, 1, -1)
        assert torch.equal(x_next[:, 0] - x[:, 0], step)  # the labelled factor moved one step
        assert (x_next[:, 1] != x[:, 1]).float().mean() > 0.8  # hue redrawn: 11 in 12 differ
        assert set(view.photo_split[torch.cat([t.rows, t.rows_next])].tolist()) == {split}
        images, images_next = sampler.images(t[:4])
        assert torch.equal(images, base.render(x[:4]))
        assert torch.equal(images_next, base.render(x_next[:4]))
    unit = hash_unit(base.space.ravel(view.grid_values), 3)
    assert sampler.split_sizes()["test"] == int((unit < 0.25).sum())


@pytest.mark.parametrize(
    "hidden, message",
    [
        (["colour"], "toy has no factor 'colour' (position, hue)"),
        (["position", "hue"], "at least one factor must keep its labels"),
    ],
)
def test_bad_unlabelled_factors_are_one_line(hidden, message):
    with pytest.raises(DataError, match=re.escape(message)):
        load_source(DataConfig(dataset="toy", unlabelled=hidden))


@pytest.mark.slow
def test_a_run_with_unlabelled_factors_evaluates_on_the_labelled_ones(tmp_path):
    from vqcausal.cli import main as cli
    from vqcausal.train.run import main as train

    sets = ['data.unlabelled=["hue"]', f'runs="{tmp_path / "runs"}"', "train.stage1_steps=6"]
    sets += ["train.stage2_steps=4", "train.cache_pairs=64", "train.eval_pairs=16"]
    assert train(["--config", "configs/smoke.toml", *(x for s in sets for x in ("--set", s))]) == 0
    (run,) = list((tmp_path / "runs").iterdir())
    out = tmp_path / "eval"
    assert cli(["evaluate", str(run), "--fast", "--pairs", "32", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    synthesis = metrics["retrieval"]["synthesis"]["per_action"]
    assert sorted(synthesis) == ["position+", "position-"]
    assert "a different person" in metrics["counterfactual"]["reference"]
