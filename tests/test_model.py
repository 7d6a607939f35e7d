"""The CT-VAE wrapper: shapes through every path, index round trips, checkpoint round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vqcausal.config import load_config
from vqcausal.models.base import ModelArgs
from vqcausal.models.ctvae import CausalVQVAE
from vqcausal.runs import load_model_from_run
from vqcausal.train.checkpoint import save_checkpoint

ACTIONS = ["position+", "position-", "hue+", "hue-"]


def tiny_model(codebooks: int = 1) -> CausalVQVAE:
    config = load_config("configs/smoke.toml", [f"model.quantizer.codebooks={codebooks}"])
    torch.manual_seed(0)
    return CausalVQVAE(ModelArgs([3, 16, 16], ACTIONS, config.model)).eval()


@pytest.mark.parametrize("codebooks", [1, 2])
def test_shapes_through_every_path(codebooks):
    model = tiny_model(codebooks)
    x = torch.rand(5, 3, 16, 16)
    n = 4 * 4 * codebooks
    assert model.args.num_variables == n
    codes = model.encode(x)
    assert codes.shape == (5, n) and codes.dtype == torch.long
    assert model.decode_latent(codes).shape == (5, 3, 16, 16)
    assert model.intervene(x, torch.tensor([0, 1, 2, 3, 0])).shape == (5, 1, 3, 16, 16)
    rollout = model.intervene(x, torch.randint(4, (5, 3)))
    assert rollout.shape == (5, 3, 3, 16, 16)
    for method in ("synthesis", "classifier"):
        probs = model.retrieve(x, x.flip(0), method)
        assert probs.shape == (5, 4)
        assert torch.allclose(probs.sum(-1), torch.ones(5))
    with pytest.raises(ValueError, match="unknown retrieval method"):
        model.retrieve(x, x, "oracle")


def test_indices_codes_output_round_trip():
    """Codes -> features -> image equals decoding the quantized features directly."""
    model = tiny_model(2)
    x = torch.rand(3, 3, 16, 16)
    out = model.quantize(x)
    codes = model.flatten_indices(out.indices)
    assert torch.equal(model.unflatten_codes(codes), out.indices)
    assert torch.allclose(model.decode_latent(codes), model.decoder(out.quantized), atol=1e-6)


def test_rollout_is_repeated_single_steps():
    model = tiny_model()
    codes = model.encode(torch.rand(2, 3, 16, 16))
    actions = torch.tensor([[2, 0], [1, 3]])
    steps = model.intervene_latent(codes, actions)
    one = model.transition.predict(codes, actions[:, 0])
    two = model.transition.predict(one, actions[:, 1])
    assert torch.equal(steps[:, 0], one) and torch.equal(steps[:, 1], two)


def test_checkpoint_save_load_gives_identical_outputs(tmp_path):
    model = tiny_model(2)
    meta = {"step": 7, "model_args": model.args.to_dict(), "finished": True}
    save_checkpoint(tmp_path, model, meta)
    loaded, ckpt = load_model_from_run(tmp_path)
    assert ckpt.step == 7 and ckpt.finished
    x, y = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
    assert torch.equal(loaded.encode(x), model.encode(x))
    assert torch.equal(loaded.retrieve(x, y), model.retrieve(x, y))
    actions = torch.tensor([0, 1, 2, 3])
    assert torch.equal(loaded.intervene(x, actions), model.intervene(x, actions))


def test_checkpoints_written_before_new_shape_keys_rebuild_their_model():
    from vqcausal.models.base import ModelArgs, ModelConfig
    from vqcausal.models.build import build_model
    from vqcausal.runs import model_args_from_meta

    old = ModelArgs([3, 16, 16], ["a+", "a-"], ModelConfig()).to_dict()
    del old["model"]["classifier_layers"], old["model"]["transition"]["update_expansion"]
    args = model_args_from_meta({"model_args": old})
    assert args.model.classifier_layers == 0 and args.model.transition.update_expansion == 1
    model = build_model(args)
    assert model.classifier.mix is None and model.transition.update_out.in_features == 64
    new = model_args_from_meta({"model_args": ModelArgs([3, 16, 16], ["a+", "a-"]).to_dict()})
    assert new.model.classifier_layers == 2 and new.model.transition.update_expansion == 4


def test_runs_from_before_per_source_strides_still_load():
    """Older runs recorded ``data.stride = 3`` for every dataset (one default for all)."""
    from vqcausal.config import Config, DataConfig, to_dict
    from vqcausal.runs import config_from_meta

    old = to_dict(Config())
    old["data"]["stride"] = 3
    assert config_from_meta({"config": old}).data.stride is None
    pendulum = to_dict(Config(data=DataConfig(dataset="pendulum", stride=3)))
    assert config_from_meta({"config": pendulum}).data.stride == 3


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.toml")), ids=str
)
def test_every_shipped_config_builds_its_model(path):
    from vqcausal.data.registry import load_source
    from vqcausal.models.build import build_model
    from vqcausal.train.run import fit_to_data

    config = load_config(path)
    source = load_source(config.data)
    config = fit_to_data(config, source)  # what a run takes from the data (scm: its concepts)
    args = ModelArgs(list(source.image_shape), source.space.action_names, config.model)
    model = build_model(args)
    x = torch.rand(2, *source.image_shape)
    assert model.decode_latent(model.encode(x)).shape == x.shape


@pytest.mark.parametrize(
    "options, present, absent",
    [
        ([], set(), {"cycle_pairs", "cycle", "classifier_counterfactual"}),
        (["model.transition.w_cycle=1.0"], {"cycle_pairs", "cycle"}, {"classifier_counterfactual"}),
        (
            ["model.classifier_counterfactuals=1.0"],
            {"cycle_pairs", "classifier_counterfactual"},
            {"cycle"},
        ),
    ],
    ids=["plain", "back-translation", "classifier-on-counterfactuals"],
)
def test_stage2_objective_adds_the_counterfactual_terms_it_is_asked_for(options, present, absent):
    config = load_config("configs/smoke.toml", options)
    torch.manual_seed(0)
    model = CausalVQVAE(ModelArgs([3, 16, 16], ACTIONS, config.model)).train()
    objective = model.stage2_objective()
    n = model.args.num_variables
    codes = torch.randint(0, config.model.quantizer.codebook_size, (64, n))
    batch = {"latents": codes, "actions": torch.randint(0, 4, (64,)), "latents_next": codes.flip(0)}
    terms, _ = objective(batch)
    assert present <= set(terms) and not absent & set(terms)
    base = terms["total"] - sum(terms[k] for k in ("code", "identity", "retrieval", "classifier"))
    extra = sum(terms.get(k, 0.0) for k in ("cycle", "classifier_counterfactual"))
    sparsity = 0.01 * (terms["mask"] + terms["graph"])  # the default w_mask and w_graph
    assert torch.allclose(base, extra + sparsity, atol=1e-5)
    terms["total"].backward()
    assert all(p.grad is not None for p in model.classifier.parameters())


def test_classifier_codebook_reads_frozen_code_vectors_and_their_change():
    """With a codebook the classifier sees what each code decodes from: two codes whose
    vectors are equal look alike to it even before any training, and the vectors are a
    buffer (saved, never trained)."""
    from vqcausal.models.retrieval import ActionClassifier

    torch.manual_seed(0)
    plain = ActionClassifier(4, 8, 1, 3, hidden=16)
    with pytest.raises(ValueError, match="reads no codebook"):
        plain.set_codebook(torch.zeros(8, 5))
    head = ActionClassifier(4, 8, 1, 3, hidden=16, feature_dim=5)
    vectors = torch.randn(8, 5)
    head.set_codebook(vectors)
    assert "codebook" in head.state_dict() and "codebook" not in dict(head.named_parameters())
    codes = torch.tensor([[0, 1, 2, 3]])
    moved = torch.tensor([[0, 1, 2, 4]])
    logits = head(codes, moved)
    assert logits.shape == (1, 3)
    logits.sum().backward()
    assert head.feature_proj[1].weight.grad.abs().sum() > 0
    # the learned code embeddings zeroed, only the vectors tell codes apart
    with torch.no_grad():
        head.code_embed.weight.zero_()
        head.next_embed.weight.zero_()
    same = torch.tensor([[0, 1, 2, 5]])
    head.set_codebook(torch.cat([vectors[:5], vectors[4:5], vectors[6:]]))  # code 5 == code 4
    assert torch.allclose(head(codes, moved), head(codes, same))
    head.set_codebook(vectors)
    assert not torch.allclose(head(codes, moved), head(codes, same))


@pytest.mark.parametrize("codebooks", [1, 2])
def test_code_vectors_are_what_each_code_decodes_from(codebooks):
    """Row offset(variable) + code of ``code_vectors`` is that variable's slice of the
    quantized feature map, with one codebook or several (each owns a group of channels)."""
    from einops import rearrange

    from vqcausal.models.variables import codebook_offsets

    model = tiny_model(codebooks).eval()
    x = torch.rand(2, *model.args.image_shape)
    codes = model.encode(x)
    features = model.quantizer.indices_to_features(model.unflatten_codes(codes))
    per_variable = rearrange(features, "b (c d) h w -> b (h w c) d", c=codebooks)
    offsets = codebook_offsets(
        model.args.num_variables, codebooks, model.args.model.quantizer.codebook_size
    )
    assert torch.allclose(model.code_vectors()[codes + offsets], per_variable, atol=1e-6)


def test_a_checkpoint_from_before_the_codebook_classifier_rebuilds_its_own_classifier(tmp_path):
    """Checkpoints written before ``classifier_codebook`` existed (it is on by default now)
    lack the key: they rebuild with the classifier they were trained with."""
    config = load_config("configs/smoke.toml", ["model.classifier_codebook=false"])
    torch.manual_seed(0)
    old = CausalVQVAE(ModelArgs([3, 16, 16], ACTIONS, config.model)).eval()
    meta = {"step": 3, "model_args": old.args.to_dict(), "finished": True}
    del meta["model_args"]["model"]["classifier_codebook"]
    save_checkpoint(tmp_path, old, meta)
    loaded, _ = load_model_from_run(tmp_path)
    assert loaded.classifier.feature_proj is None
    x, y = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
    assert torch.equal(
        loaded.retrieve(x, y, method="classifier"), old.retrieve(x, y, method="classifier")
    )
    assert tiny_model().classifier.feature_proj is not None  # the default now
