"""CT-VAE: a VQ-VAE whose codes are causal variables, an intervention head and retrieval.

Variables are the quantizer's indices flattened as ``(h, w, codebook)`` with the codebook
fastest, so variable ``i`` uses codebook ``i % codebooks``. ``ModelArgs`` holds everything
needed to rebuild the network; it is stored beside the weights in every checkpoint, so
inference never needs the training config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vqcausal.models.autoencoder import Decoder, Encoder
from vqcausal.models.base import PAIR_LOSS, CausalImageModel, ModelArgs
from vqcausal.models.quantizer import CodebookLookup, Quantizer, QuantizerOutput, code_usage
from vqcausal.models.retrieval import ActionClassifier
from vqcausal.models.transition import CausalTransition


class VQAutoencoderObjective(nn.Module):
    """Stage 1: reconstruction + VQ loss; holds only the autoencoder's modules."""

    def __init__(self, model: CausalVQVAE) -> None:
        super().__init__()
        self.encoder, self.quantizer, self.decoder = model.encoder, model.quantizer, model.decoder
        self.codebook_size = model.args.model.quantizer.codebook_size

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[dict, dict[str, float]]:
        x = batch["x"]
        out = self.quantizer(self.encoder(x))
        mse = F.mse_loss(self.decoder(out.quantized), x)
        stats = {}
        if batch.get("stats"):
            stats = code_usage(out.indices.detach().cpu(), self.codebook_size)
        return {"total": mse + out.loss, "mse": mse, "vq": out.loss}, stats


class TransitionObjective(nn.Module):
    """Stage 2: transition losses + retrieval classifier CE; holds only those modules."""

    def __init__(self, model: CausalVQVAE) -> None:
        super().__init__()
        self.transition, self.classifier = model.transition, model.classifier
        self.w_cycle = model.args.model.transition.w_cycle
        self.w_counterfactuals = model.args.model.classifier_counterfactuals

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[dict, dict[str, float]]:
        codes, actions, codes_next = batch["latents"], batch["actions"], batch["latents_next"]
        terms = dict(self.transition.losses(codes, actions, codes_next))
        terms[PAIR_LOSS] = terms.pop("pair_code")
        terms["classifier"] = F.cross_entropy(self.classifier(codes, codes_next), actions)
        terms["total"] = terms["total"] + terms["classifier"]
        if self.w_cycle > 0 or self.w_counterfactuals > 0:
            self._counterfactual_pairs(codes, terms)
        return terms, {}

    def _counterfactual_pairs(self, codes: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        """Adds the terms on the transition's own counterfactuals to ``terms``: the
        back-translated pairs (``transition.w_cycle``) and the classifier's CE on them in both
        directions (``classifier_counterfactuals``)."""
        cf, inverse, targets, drawn = self.transition.back_translated(codes)
        terms["cycle_pairs"] = codes.new_tensor(len(cf) / len(codes), dtype=torch.float32)
        if len(cf) == 0:
            return
        if self.w_cycle > 0:
            cycle = self.transition.losses(cf, inverse, targets, weigh_changed=False)
            terms["cycle"] = cycle["total"]
            terms["total"] = terms["total"] + self.w_cycle * cycle["total"]
        if self.w_counterfactuals > 0:
            both = self.classifier(torch.cat([targets, cf]), torch.cat([cf, targets]))
            ce = F.cross_entropy(both, torch.cat([drawn, inverse]))
            terms["classifier_counterfactual"] = ce
            terms["total"] = terms["total"] + self.w_counterfactuals * ce


class CausalVQVAE(CausalImageModel):
    """Encoder -> quantizer -> decoder, plus the causal transition and a retrieval head."""

    def __init__(self, args: ModelArgs, inference: bool = False) -> None:
        super().__init__(args)
        cfg = args.model
        channels = args.image_shape[0]
        self.encoder = Encoder(channels, cfg.autoencoder)
        self.quantizer = Quantizer(cfg.autoencoder.embed_dim, cfg.quantizer, lookup_only=inference)
        self.decoder = Decoder(channels, cfg.autoencoder)
        codebooks = cfg.quantizer.codebooks
        size = cfg.quantizer.codebook_size
        self.transition = CausalTransition(
            args.num_variables, size, codebooks, args.num_actions, cfg.transition
        )
        self.classifier = ActionClassifier(
            args.num_variables,
            size,
            codebooks,
            args.num_actions,
            cfg.classifier_hidden,
            cfg.classifier_layers,
            feature_dim=cfg.autoencoder.embed_dim // codebooks if cfg.classifier_codebook else 0,
        )

    # ---- autoencoder ---------------------------------------------------------------
    def quantize(self, x: torch.Tensor) -> QuantizerOutput:
        """Images float (B, C, H, W) in [0, 1] -> quantizer output."""
        return self.quantizer(self.encoder(x))

    def flatten_indices(self, indices: torch.Tensor) -> torch.Tensor:
        return rearrange(indices, "b h w c -> b (h w c)")

    def unflatten_codes(self, codes: torch.Tensor) -> torch.Tensor:
        h, w = self.args.grid
        return rearrange(codes, "b (h w c) -> b h w c", h=h, w=w)

    def unused_checkpoint_tensors(self) -> set[str]:
        if not self.quantizer.lookup_only:
            return set()
        return {f"quantizer.vq.{name}" for name in CodebookLookup.TRAINING_STATE}

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> code variables (B, N) long."""
        return self.flatten_indices(self.quantize(x).indices)

    def decode_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """Code variables (B, N) -> images (B, C, H, W) in [0, 1]."""
        return self.decoder(self.quantizer.indices_to_features(self.unflatten_codes(codes)))

    # ---- interventions and retrieval ----------------------------------------------
    def step_latent(self, codes: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """One action per row on code variables (deterministic argmax prediction)."""
        return self.transition.predict(codes, actions)

    def synthesis_scores(self, codes: torch.Tensor, codes_next: torch.Tensor) -> torch.Tensor:
        """log p(codes of x' | codes of x, a) for all actions, one batched pass."""
        return self.transition.score_actions(codes, codes_next)

    def latent_stats(self, codes: torch.Tensor) -> dict[str, float]:
        size = self.args.model.quantizer.codebook_size
        usage = code_usage(self.unflatten_codes(codes).cpu(), size)
        return {f"code_{k}": v for k, v in usage.items()}

    @torch.no_grad()
    def graph(self, codes: torch.Tensor) -> torch.Tensor:
        """Mean adjacency over the batch, [i, j] = weight of edge j -> i."""
        return self.transition.node_states(codes).adjacency.mean(0)

    # ---- training ----------------------------------------------------------------------
    def stage1_objective(self) -> nn.Module:
        return VQAutoencoderObjective(self)

    def stage2_objective(self) -> nn.Module:
        return TransitionObjective(self)

    def stage1_modules(self) -> list[nn.Module]:
        return [self.encoder, self.quantizer, self.decoder]

    def before_stage2(self, cache: dict[str, torch.Tensor]) -> None:
        if self.args.model.classifier_codebook:  # stage 1's codebook, final from here on
            self.classifier.set_codebook(self.code_vectors())

    @torch.no_grad()
    def code_vectors(self) -> torch.Tensor:
        """(codebooks * codebook_size, D / codebooks): the vector each code of each codebook
        decodes from (codebook k owns the k-th group of channels), rows in the order of
        ``codebook_offsets``."""
        quantizer = self.args.model.quantizer
        size, books = quantizer.codebook_size, quantizer.codebooks
        device = next(self.parameters()).device
        every = torch.arange(size, device=device).view(1, size, 1, 1).expand(1, size, 1, books)
        features = self.quantizer.indices_to_features(every)  # (1, D, size, 1)
        return rearrange(features, "1 (c d) k 1 -> (c k) d", c=books)
