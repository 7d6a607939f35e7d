"""What every model shares: its config, the args stored in checkpoints, the public API.

A model turns images into *latents* (code variables for ``vq``, vectors for the continuous
latents), applies actions to latents, decodes them, and scores which action explains a pair.
Training, evaluation and the CLI only use this interface, so every latent module runs in the
same loop, the same ablations and the same commands.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import nn

from vqcausal.models.autoencoder import AutoencoderConfig
from vqcausal.models.gaussian import GaussianConfig
from vqcausal.models.ladder import LadderConfig
from vqcausal.models.quantizer import QuantizerConfig
from vqcausal.models.retrieval import retrieval_probabilities
from vqcausal.models.scm import SCMConfig
from vqcausal.models.transition import TransitionModelConfig

RETRIEVAL_METHODS = ("synthesis", "classifier")
LATENTS = ("vq", "gaussian", "ladder", "scm")
#: key of the stage-2 objective's per-pair training loss, shape (B,), detached: how wrong the
#: model still is on each pair of the batch (``train.action_focus`` reads it; not a loss term)
PAIR_LOSS = "pair_loss"


@dataclass
class ModelConfig:
    """The model section of a run config."""

    latent: str = "vq"  # vq (CT-VAE) | gaussian (beta-VAE) | ladder (Ladder VAE) | scm (CausalVAE)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)  # vq
    transition: TransitionModelConfig = field(default_factory=TransitionModelConfig)  # vq
    gaussian: GaussianConfig = field(default_factory=GaussianConfig)
    ladder: LadderConfig = field(default_factory=LadderConfig)
    scm: SCMConfig = field(default_factory=SCMConfig)
    classifier_hidden: int = 64
    classifier_layers: int = 2  # transformer layers across variables in the classifier head
    # weight of the classifier's CE on the transition's own counterfactuals (z, T(z, a)) -> a
    # for actions drawn uniformly on the batch's images: a rare action gets as many
    # (synthetic) examples as a common one (the pairs ``transition.back_translated`` keeps,
    # both ways round); 0 trains the classifier on the real pairs alone
    classifier_counterfactuals: float = 0.0
    # vq: the classifier also reads each variable's codebook vector (stage 1's, frozen) and
    # its change: a code's meaning then comes from the autoencoder, not from the classifier's
    # own embedding learned on the pairs, and which way a turn or a growth goes is in the
    # vectors' difference (shapes3d cpu cells at rho = 100, 2 seeds: classifier balanced
    # 0.936 / 0.882 -> 0.984 / 0.987, its rarest action 0.892 / 0.733 -> 0.967 / 0.987)
    classifier_codebook: bool = True
    retrieval: str = "synthesis"  # default retrieval head: synthesis | classifier


@dataclass
class ModelArgs:
    """Shapes fixed by the data plus the model config: enough to rebuild the network."""

    image_shape: list[int]  # C, H, W
    action_names: list[str]
    model: ModelConfig = field(default_factory=ModelConfig)
    # measured on the data: the concept each action moves (-1: none) and its mean signed step
    # in normalised label units (vqcausal.data.transitions.action_concept_steps)
    action_targets: list[int] | None = None
    action_steps: list[float] | None = None

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


class CausalImageModel(nn.Module, ABC):
    """Encode, act, decode, retrieve: the API shared by every latent module."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args

    # ---- per-latent pieces -----------------------------------------------------------
    @abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images float (B, C, H, W) in [0, 1] -> deterministic latents (B, ...)."""

    @abstractmethod
    def decode_latent(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, ...) -> images (B, C, H, W) in [0, 1]."""

    @abstractmethod
    def step_latent(self, latents: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Apply one action per row (B,) to latents, deterministically."""

    @abstractmethod
    def synthesis_scores(self, latents: torch.Tensor, latents_next: torch.Tensor) -> torch.Tensor:
        """(B, A) analysis-by-synthesis scores: how well each action explains latents_next."""

    @abstractmethod
    def stage1_objective(self) -> nn.Module:
        """Module whose forward(batch) -> (loss terms with "total", stats) trains stage 1.

        ``batch["stats"]`` is true on steps whose stats are logged; skip the work otherwise.
        """

    @abstractmethod
    def stage2_objective(self) -> nn.Module:
        """The same for stage 2 (on cached latents of pairs); its terms also hold
        ``PAIR_LOSS``, the per-pair loss of the batch (detached)."""

    @abstractmethod
    def stage1_modules(self) -> list[nn.Module]:
        """Modules trained in stage 1 and frozen (eval mode, no grad) in stage 2."""

    def unused_checkpoint_tensors(self) -> set[str]:
        """Checkpoint tensors this model does not hold and need not (training state that an
        inference-only build leaves out); loading skips exactly these."""
        return set()

    def separately_clipped(self) -> list[list[nn.Parameter]]:
        """Parameter sets whose gradients ``train.grad_clip`` clips each by its own norm.

        A small part trained by a few terms (a causal graph) next to a large representation
        would otherwise have its gradient scaled down by the representation's norm.
        """
        return []

    def after_step(self, step: int) -> None:
        """Called after every stage-1 optimizer step (schedules that live in the model)."""

    def before_stage2(self, cache: dict[str, torch.Tensor]) -> None:
        """Called once stage 2's latent cache (``latents``, ``actions``, ``latents_next``)
        is ready, before its first step: calibrations that read encoded training pairs."""

    def latent_stats(self, latents: torch.Tensor) -> dict[str, float]:
        """Statistics of a batch of latents worth logging (e.g. code usage)."""
        return {}

    def graph(self, latents: torch.Tensor) -> torch.Tensor | None:
        """The learned graph (weights in [0, 1], [i, j] = edge j -> i), if the latent has one."""
        return None

    # ---- shared on top ---------------------------------------------------------------------
    @torch.no_grad()
    def retrieve_from_latents(
        self, latents: torch.Tensor, latents_next: torch.Tensor, method: str | None = None
    ) -> torch.Tensor:
        """p(action | x, x') (B, A) from latents, by ``method`` or the config's default.

        Every model has a learned ``classifier(latents, latents_next) -> (B, A) logits``.
        """
        method = method or self.args.model.retrieval
        if method == "synthesis":
            return retrieval_probabilities(self.synthesis_scores(latents, latents_next))
        if method == "classifier":
            return self.classifier(latents, latents_next).softmax(-1)
        raise ValueError(f"unknown retrieval method '{method}'; choose from {RETRIEVAL_METHODS}")

    @torch.no_grad()
    def intervene_latent(self, latents: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Apply a sequence of actions (B, T); returns every step's latents (B, T, ...)."""
        steps = []
        for t in range(actions.shape[1]):
            latents = self.step_latent(latents, actions[:, t])
            steps.append(latents)
        return torch.stack(steps, dim=1)

    @torch.no_grad()
    def intervene(self, x: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Counterfactuals after each of T actions: actions (B,) or (B, T) -> (B, T, C, H, W)."""
        if actions.ndim == 1:
            actions = actions[:, None]
        latents = self.intervene_latent(self.encode(x), actions)
        images = self.decode_latent(latents.flatten(0, 1))
        return rearrange(images, "(b t) c h w -> b t c h w", t=actions.shape[1])

    @torch.no_grad()
    def retrieve(
        self,
        x: torch.Tensor,
        x_next: torch.Tensor,
        method: str | None = None,
        precision: str = "fp32",
    ) -> torch.Tensor:
        """p(action | x, x') (B, A) float32 from images; both images encoded in one pass.

        ``precision="bf16"`` scores the actions under bf16 autocast (on the CPU too), but the
        images are encoded in fp32 all the same: a bf16 encoder moves some latents across a
        quantizer boundary, and a flipped code can flip a confident answer (4% of toy pairs
        did)."""
        with torch.autocast(x.device.type, enabled=False):
            latents = self.encode(torch.cat([x, x_next]))
        bf16 = precision == "bf16"
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            probs = self.retrieve_from_latents(latents[: len(x)], latents[len(x) :], method)
        return probs.float()
