"""Every latent module behind the one model interface: shapes, round trips, a real run."""

from __future__ import annotations

import pytest
import torch

from vqcausal.config import load_config
from vqcausal.models.base import LATENTS, ModelArgs, build_model
from vqcausal.train.checkpoint import latest_checkpoint, load_model_from_run, save_checkpoint
from vqcausal.train.run import main as train

ACTIONS = ["position+", "position-", "hue+", "hue-"]
TINY_SCM = ["model.scm.concepts=2", "model.scm.concept_dim=2"]


def tiny(latent: str):
    config = load_config("configs/smoke.toml", [f'model.latent="{latent}"', *TINY_SCM])
    torch.manual_seed(0)
    return build_model(ModelArgs([3, 16, 16], ACTIONS, config.model)).eval()


@pytest.mark.parametrize("latent", LATENTS)
def test_shared_api_shapes_and_probabilities(latent):
    model = tiny(latent)
    x, y = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
    z = model.encode(x)
    assert z.shape[0] == 4 and torch.equal(model.encode(x), z)  # deterministic in eval mode
    assert model.decode_latent(z).shape == (4, 3, 16, 16)
    assert model.intervene(x, torch.tensor([0, 1, 2, 3])).shape == (4, 1, 3, 16, 16)
    assert model.intervene(x, torch.randint(4, (4, 3))).shape == (4, 3, 3, 16, 16)
    for method in ("synthesis", "classifier"):
        probs = model.retrieve(x, y, method)
        assert probs.shape == (4, 4)
        assert torch.allclose(probs.sum(-1), torch.ones(4), atol=1e-5)


@pytest.mark.parametrize("latent", LATENTS)
def test_checkpoint_round_trip(latent, tmp_path):
    model = tiny(latent)
    save_checkpoint(tmp_path, model, {"step": 1, "model_args": model.args.to_dict()})
    loaded, _ = load_model_from_run(tmp_path)
    x, y = torch.rand(3, 3, 16, 16), torch.rand(3, 3, 16, 16)
    assert type(loaded) is type(model)
    assert torch.equal(loaded.encode(x), model.encode(x))
    assert torch.equal(loaded.retrieve(x, y), model.retrieve(x, y))


@pytest.mark.parametrize("latent", ["gaussian", "ladder", "scm"])
def test_continuous_latents_train_end_to_end(latent, tmp_path):
    steps = ["train.stage1_steps=15", "train.stage2_steps=15", "train.cache_pairs=64"]
    args = ["--config", "configs/smoke.toml", "--set", f'runs="{tmp_path}"']
    for s in [f'model.latent="{latent}"', *TINY_SCM, *steps, "train.eval_pairs=16"]:
        args += ["--set", s]
    assert train(args) == 0
    (run,) = list(tmp_path.iterdir())
    assert latest_checkpoint(run).finished
    assert (run / "figures" / "interventions-0000030.png").exists()
