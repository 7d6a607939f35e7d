"""CT-VAE: a VQ-VAE whose codes are causal variables, an intervention head and retrieval.

Variables are the quantizer's indices flattened as ``(h, w, codebook)`` with the codebook
fastest, so variable ``i`` uses codebook ``i % codebooks``. ``ModelArgs`` holds everything
needed to rebuild the network; it is stored beside the weights in every checkpoint, so
inference never needs the training config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import nn

from vqcausal.models.autoencoder import AutoencoderConfig, Decoder, Encoder
from vqcausal.models.quantizer import Quantizer, QuantizerConfig, QuantizerOutput
from vqcausal.models.retrieval import ActionClassifier, retrieval_probabilities
from vqcausal.models.transition import CausalTransition, TransitionModelConfig

RETRIEVAL_METHODS = ("synthesis", "classifier")


@dataclass
class ModelConfig:
    """The model section of a run config."""

    latent: str = "vq"
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    transition: TransitionModelConfig = field(default_factory=TransitionModelConfig)
    classifier_hidden: int = 64
    retrieval: str = "synthesis"  # default retrieval head: synthesis | classifier


@dataclass
class ModelArgs:
    """Shapes fixed by the data plus the model config: enough to rebuild the network."""

    image_shape: list[int]  # C, H, W
    action_names: list[str]
    model: ModelConfig = field(default_factory=ModelConfig)

    @property
    def num_actions(self) -> int:
        return len(self.action_names)

    @property
    def grid(self) -> tuple[int, int]:
        down = 2 ** len(self.model.autoencoder.widths)
        return self.image_shape[1] // down, self.image_shape[2] // down

    @property
    def num_variables(self) -> int:
        h, w = self.grid
        return h * w * self.model.quantizer.codebooks

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class CausalVQVAE(nn.Module):
    """Encoder -> quantizer -> decoder, plus the causal transition and a retrieval head."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        cfg = args.model
        channels = args.image_shape[0]
        self.encoder = Encoder(channels, cfg.autoencoder)
        self.quantizer = Quantizer(cfg.autoencoder.embed_dim, cfg.quantizer)
        self.decoder = Decoder(channels, cfg.autoencoder)
        codebooks = cfg.quantizer.codebooks
        size = cfg.quantizer.codebook_size
        self.transition = CausalTransition(
            args.num_variables, size, codebooks, args.num_actions, cfg.transition
        )
        self.classifier = ActionClassifier(
            args.num_variables, size, codebooks, args.num_actions, cfg.classifier_hidden
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

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> code variables (B, N) long."""
        return self.flatten_indices(self.quantize(x).indices)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Code variables (B, N) -> images (B, C, H, W) in [0, 1]."""
        return self.decoder(self.quantizer.indices_to_features(self.unflatten_codes(codes)))

    # ---- interventions and retrieval ----------------------------------------------
    @torch.no_grad()
    def intervene_codes(self, codes: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Apply a sequence of actions (B, T) to codes; returns every step's codes (B, T, N)."""
        steps = []
        for t in range(actions.shape[1]):
            codes = self.transition.predict(codes, actions[:, t])
            steps.append(codes)
        return torch.stack(steps, dim=1)

    @torch.no_grad()
    def intervene(self, x: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Counterfactuals after each of T actions: actions (B,) or (B, T) -> (B, T, C, H, W)."""
        if actions.ndim == 1:
            actions = actions[:, None]
        codes = self.intervene_codes(self.encode(x), actions)
        images = self.decode_codes(rearrange(codes, "b t n -> (b t) n"))
        return rearrange(images, "(b t) c h w -> b t c h w", t=actions.shape[1])

    @torch.no_grad()
    def retrieve_from_codes(
        self, codes: torch.Tensor, codes_next: torch.Tensor, method: str | None = None
    ) -> torch.Tensor:
        """p(action | x, x') (B, A) from code variables."""
        method = method or self.args.model.retrieval
        if method == "synthesis":
            return retrieval_probabilities(self.transition.score_actions(codes, codes_next))
        if method == "classifier":
            return self.classifier(codes, codes_next).softmax(-1)
        raise ValueError(f"unknown retrieval method '{method}'; choose from {RETRIEVAL_METHODS}")

    @torch.no_grad()
    def retrieve(
        self, x: torch.Tensor, x_next: torch.Tensor, method: str | None = None
    ) -> torch.Tensor:
        """p(action | x, x') (B, A) from images; both images encoded in one pass."""
        codes = self.encode(torch.cat([x, x_next]))
        return self.retrieve_from_codes(codes[: len(x)], codes[len(x) :], method)
