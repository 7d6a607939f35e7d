"""The model a config names: the one place that knows every model class.

Above the models it builds (``base`` defines their interface and must not import them). The
imports are lazy so that ``vqcausal retrieve`` loads only the model it needs.
"""

from __future__ import annotations

from vqcausal.models.base import LATENTS, CausalImageModel, ModelArgs


def build_model(args: ModelArgs, inference: bool = False) -> CausalImageModel:
    """The model a config's ``model.latent`` names; ``inference``: built to load a checkpoint
    and run in eval mode only (no training libraries imported, quicker to start)."""
    if args.model.latent == "vq":
        from vqcausal.models.ctvae import CausalVQVAE

        return CausalVQVAE(args, inference=inference)
    if args.model.latent in LATENTS:
        from vqcausal.models.vae import ContinuousVAE

        return ContinuousVAE(args)
    raise ValueError(f"unknown latent '{args.model.latent}'; choose from {', '.join(LATENTS)}")
