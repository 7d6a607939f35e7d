"""Continuous-latent models (``gaussian`` beta-VAE, ``ladder`` Ladder VAE, ``scm`` CausalVAE).

The same encoder and decoder as CT-VAE; the feature grid is flattened into the latent
module and its output unflattened for the decoder. A model's *latent* for the shared API is
the module's deterministic representation (``LatentOutput.mean``): for ``ladder`` all layers'
means, bottom first, of which the bottom layer is decoded.

Actions: ``gaussian`` and ``ladder`` learn a shift per action in latent space; ``scm`` moves
one concept one step with do() and lets its descendants follow. Retrieval ``synthesis``
scores every action by how close its prediction lands to the second latent (for ``scm``:
which concept's exogenous noise moved); ``classifier`` is a learned head on (z, z').
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vqcausal.models.autoencoder import Decoder, Encoder
from vqcausal.models.base import PAIR_LOSS, CausalImageModel, ModelArgs
from vqcausal.models.latent import ActionShift, ContinuousLatent, PairClassifier


def make_latent(args: ModelArgs, feature_dim: int) -> ContinuousLatent:
    cfg = args.model
    if cfg.latent == "gaussian":
        from vqcausal.models.gaussian import GaussianLatent

        return GaussianLatent(feature_dim, cfg.gaussian)
    if cfg.latent == "ladder":
        from vqcausal.models.ladder import LadderLatent

        return LadderLatent(feature_dim, cfg.ladder)
    from vqcausal.models.scm import SCMLatent

    return SCMLatent(feature_dim, cfg.scm, args.action_targets, args.action_steps)


class VAEObjective(nn.Module):
    """Stage 1: Gaussian reconstruction log-likelihood (summed over pixels) + the latent's terms."""

    def __init__(self, model: ContinuousVAE) -> None:
        super().__init__()
        self.encoder, self.latent, self.decoder = model.encoder, model.latent, model.decoder
        self.grid = model.args.grid

    def forward(self, batch: dict) -> tuple[dict, dict[str, float]]:
        x, step = batch["x"], int(batch.get("step", 0))
        labels = batch.get("labels")
        out = self.latent(self.encoder(x).flatten(1), labels, step)
        recon = decode_features(self.decoder, self.latent.to_decoder(out.z), self.grid)
        mse = F.mse_loss(recon, x, reduction="none").flatten(1).sum(1).mean()
        terms = {k: v for k, v in out.losses.items() if k != "total"}
        terms.update(self.latent.pair_losses(labels, batch.get("actions")))
        total = mse + out.losses["total"] + sum(v for k, v in terms.items() if k not in out.losses)
        return {"total": total, "recon": mse, **terms}, {}


class ActionObjective(nn.Module):
    """Stage 2: the action shift (regression + retrieval CE) and the pair classifier."""

    def __init__(self, model: ContinuousVAE) -> None:
        super().__init__()
        self.shift, self.classifier = model.shift, model.classifier
        self.uses_shift = not model.latent.own_actions

    def forward(self, batch: dict) -> tuple[dict, dict[str, float]]:
        z, actions, z_next = batch["latents"], batch["actions"], batch["latents_next"]
        per_pair = F.cross_entropy(self.classifier(z, z_next), actions, reduction="none")
        terms = {"classifier": per_pair.mean()}
        total = terms["classifier"]
        if self.uses_shift:
            shift = (self.shift(z, actions) - z_next).pow(2).sum(-1)
            retrieval = F.cross_entropy(
                shift_scores(self.shift, z, z_next), actions, reduction="none"
            )
            terms["shift"], terms["retrieval"] = shift.mean(), retrieval.mean()
            total = total + terms["shift"] + terms["retrieval"]
            per_pair = per_pair + shift + retrieval
        terms["total"] = total
        terms[PAIR_LOSS] = per_pair.detach()
        return terms, {}


def decode_features(decoder: Decoder, flat: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Flattened feature grid (B, C*h*w) -> images."""
    return decoder(rearrange(flat, "b (c h w) -> b c h w", h=grid[0], w=grid[1]))


def shift_scores(shift: ActionShift, z: torch.Tensor, z_next: torch.Tensor) -> torch.Tensor:
    """(B, A): minus the squared distance from each action's predicted latent to z'."""
    predicted = z[:, None] + shift.shift[None]  # (B, A, d)
    return -(predicted - z_next[:, None]).pow(2).sum(-1)


class ContinuousVAE(CausalImageModel):
    """Encoder -> continuous latent -> decoder, plus an action model and a retrieval head."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__(args)
        cfg = args.model
        channels = args.image_shape[0]
        h, w = args.grid
        self.encoder = Encoder(channels, cfg.autoencoder)
        self.decoder = Decoder(channels, cfg.autoencoder)
        self.latent = make_latent(args, cfg.autoencoder.embed_dim * h * w)
        self.decoded_dim = self.latent.latent_dim
        width = getattr(self.latent, "representation_dim", self.latent.latent_dim)
        self.shift = ActionShift(width, args.num_actions)
        self.classifier = PairClassifier(width, args.num_actions, 2 * cfg.classifier_hidden)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.latent(self.encoder(x).flatten(1)).mean

    def decode_latent(self, latents: torch.Tensor) -> torch.Tensor:
        flat = self.latent.to_decoder(latents[:, : self.decoded_dim])
        return decode_features(self.decoder, flat, self.args.grid)

    def step_latent(self, latents: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        if self.latent.own_actions:
            return self.latent.intervene(latents, actions)
        return self.shift(latents, actions)

    def synthesis_scores(self, latents: torch.Tensor, latents_next: torch.Tensor) -> torch.Tensor:
        """Nearest shifted latent, or the latent's own scores (``scm``: the concept whose
        exogenous noise moved most)."""
        if self.latent.own_actions:
            return self.latent.synthesis_scores(latents, latents_next)
        return shift_scores(self.shift, latents, latents_next)

    def before_stage2(self, cache: dict[str, torch.Tensor]) -> None:
        """The latent's calibration on the encoded training pairs (``scm``: action steps)."""
        self.latent.calibrate(cache["latents"], cache["actions"], cache["latents_next"])

    def after_step(self, step: int) -> None:
        """The latent's schedules (``scm``: CausalVAE's augmented Lagrangian)."""
        self.latent.after_step(step)

    def separately_clipped(self) -> list[list[nn.Parameter]]:
        return self.latent.separately_clipped()

    @torch.no_grad()
    def graph(self, latents: torch.Tensor) -> torch.Tensor | None:
        return self.latent.graph()

    def stage1_objective(self) -> nn.Module:
        return VAEObjective(self)

    def stage2_objective(self) -> nn.Module:
        return ActionObjective(self)

    def stage1_modules(self) -> list[nn.Module]:
        return [self.encoder, self.latent, self.decoder]
