"""Every latent module behind the one model interface: shapes, round trips, a real run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqcausal.config import load_config
from vqcausal.data.pendulum import PendulumRenderer
from vqcausal.data.pendulum_folder import write_causalvae_folder
from vqcausal.data.registry import load_source
from vqcausal.models.base import LATENTS, ModelArgs
from vqcausal.models.build import build_model
from vqcausal.runs import latest_checkpoint, load_model_from_run
from vqcausal.train.checkpoint import save_checkpoint
from vqcausal.train.loop import clip_groups
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


def _pendulum_folder(root: Path) -> list[str]:
    """A CausalVAE-layout folder of the renderer's coarse grid, read at 16 px."""
    renderer = PendulumRenderer(stride=12)  # 7 x 8 grid points
    values = renderer.space.unravel(torch.arange(renderer.space.num_values))
    write_causalvae_folder(renderer, root, values, (torch.arange(len(values)) % 5 == 0).long())
    return ['data.dataset="pendulum"', f'data.path="{root}"', "data.image_size=16"]


def _image_folder(root: Path) -> list[str]:
    """An image folder with factors.csv: a 4 x 4 grid of flat colours."""
    root.mkdir()
    lines = ["filename,red,blue"]
    for red in range(4):
        for blue in range(4):
            pixels = np.zeros((16, 16, 3), np.uint8)
            pixels[..., 0], pixels[..., 2] = 60 * red, 60 * blue
            Image.fromarray(pixels).save(root / f"{red}{blue}.png")
            lines.append(f"{red}{blue}.png,{red},{blue}")
    (root / "factors.csv").write_text("\n".join(lines) + "\n")
    return ['data.dataset="folder"', f'data.path="{root}"']


DATASETS = {
    "toy": lambda root: [],
    "shapes3d": lambda root: ['data.dataset="shapes3d"'],
    "sprites": lambda root: ['data.dataset="sprites"'],
    "pendulum": lambda root: ['data.dataset="pendulum"', "data.image_size=16", "data.stride=12"],
    "pendulum_folder": _pendulum_folder,
    "image_folder": _image_folder,
}


@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("latent", LATENTS)
def test_every_latent_trains_on_every_dataset(latent, dataset, tmp_path):
    """The same smoke run for every latent on every source; ``scm`` takes its concepts (and
    its graph, where the source knows one) from the data, whatever their number."""
    data = DATASETS[dataset](tmp_path / "data")
    steps = ["train.stage1_steps=3", "train.stage2_steps=3", "train.cache_pairs=32"]
    small = ["train.batch_size=8", "train.stage2_batch_size=8", "train.eval_pairs=16"]
    args = ["--config", "configs/smoke.toml", "--set", f'runs="{tmp_path / "runs"}"']
    for s in [f'model.latent="{latent}"', *data, *steps, *small]:
        args += ["--set", s]
    assert train(args) == 0
    (run,) = list((tmp_path / "runs").iterdir())
    assert latest_checkpoint(run).finished
    assert (run / "figures" / "interventions-0000006.png").exists()
    model, _ = load_model_from_run(run)
    source = load_source(load_config(run / "config.toml").data)
    if latent == "scm":  # one concept per label of the source, recorded in the run's config
        assert load_config(run / "config.toml").model.scm.concepts == len(source.concept_names)
        assert model.latent.concepts == len(source.concept_names)
    x = torch.rand(2, *source.image_shape)
    assert model.retrieve(x, x).shape == (2, source.space.num_actions)
    assert model.intervene(x, torch.tensor([0, 1])).shape == (2, 1, *source.image_shape)


def test_scm_concepts_that_do_not_fit_the_data_are_one_line(tmp_path, capsys):
    args = ["--config", "configs/smoke.toml", "--set", f'runs="{tmp_path}"']
    args += ["--set", 'model.latent="scm"', "--set", "model.scm.concepts=4"]
    assert train(args) != 0
    err = capsys.readouterr().err.strip()
    assert "model.scm.concepts = 4 does not fit the toy data" in err and len(err.splitlines()) == 1
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # nothing written


def test_the_causal_structure_is_clipped_apart_from_the_representation():
    """A large reconstruction gradient must not scale the graph's small one down with it."""
    model = tiny("scm").train()
    objective = model.stage1_objective()
    rest, structure = clip_groups(objective, model.separately_clipped())
    assert {id(p) for p in structure} == {
        id(p) for p in [model.latent.weights, *model.latent.mask_layer.parameters()]
    }
    assert len(rest) + len(structure) == len([p for p in objective.parameters()])
    assert not {id(p) for p in rest} & {id(p) for p in structure}
    for p in rest:
        p.grad = torch.full_like(p, 100.0)
    for p in structure:
        p.grad = torch.full_like(p, 1e-3)
    before = [p.grad.clone() for p in structure]
    for group in clip_groups(objective, model.separately_clipped()):
        torch.nn.utils.clip_grad_norm_(group, 1.0)
    assert all(torch.equal(p.grad, g) for p, g in zip(structure, before, strict=True))
    assert torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in rest])) == pytest.approx(
        1.0, rel=1e-4
    )
    # frozen sets (stage 2 freezes the latent) and latents without a graph: one group
    model.latent.requires_grad_(False)
    assert len(clip_groups(objective, model.separately_clipped())) == 1
    assert tiny("gaussian").separately_clipped() == []
