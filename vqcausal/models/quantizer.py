"""Vector quantizer over the feature grid: each (cell, codebook) index is one causal variable.

A thin wrapper around ``vector_quantize_pytorch.VectorQuantize`` (pinned 1.32.0) with
``heads = codebooks`` and ``separate_codebook_per_head=True``. Facts read from the
installed source and checked in tests:
- heads split the D channels into disjoint contiguous groups, head g owning channels
  ``[g * D/K, (g + 1) * D/K)`` (``'b n (h d) -> h b n d'``); the official CT-VAE slices
  ``[g : g + D/K]`` overlap, which is the bug this fixes;
- ``codebook_dim = D / K`` makes ``heads * codebook_dim == dim``, so no ``project_in`` /
  ``project_out`` Linear is added: codes live directly in feature space;
- with ``accept_image_fmap`` the library returns indices ``(B, h, w, K)`` for K > 1 but
  ``(B, h, w)`` for K == 1; we always return ``(B, h, w, K)``, which is also the shape
  ``get_output_from_indices`` wants (with separate codebooks the codebook is always 3-D);
- eval-mode lookup is an exact gather from the codebook, so decoding the indices equals
  ``quantized`` bit for bit; in train mode the EMA update and the rotation trick run.

Library defaults we keep: the rotation trick (on because dim > 1) for gradients through
the quantizer, EMA codebook updates, argmax (non-stochastic) code choice.

Inference (``lookup_only``) does not import the library: importing it pulls in ``einx``, which
registers its ops with ``torch.compiler`` and so imports ``torch._dynamo`` (over a second of a
command's start-up). What a trained codebook does in eval mode is a nearest-code lookup over
its ``embed`` tensor, which :class:`CodebookLookup` does with the checkpoint's own tensor under
the library's state-dict name; a test checks that codes and features equal the library's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


@dataclass
class QuantizerConfig:
    """Codebook settings, passed to ``VectorQuantize`` (its documentation says what each does)."""

    codebook_size: int = 128
    codebooks: int = 1  # each quantizes a DISJOINT group of D / codebooks channels
    decay: float = 0.8  # EMA decay
    commitment_weight: float = 0.25
    use_cosine_sim: bool = True
    threshold_ema_dead_code: float = 2.0  # dead-code replacement (0 = off)
    kmeans_init: bool = False  # True + several codebooks fails under distributed runs


@dataclass
class QuantizerOutput:
    quantized: Tensor  # (B, D, h, w)
    indices: Tensor  # (B, h, w, codebooks) long
    loss: Tensor  # scalar commitment loss (0 in eval mode)


def _no_autocast(device: torch.device) -> torch.autocast:
    """Autocast off for the tensor's device: low precision breaks nearest-code search."""
    device_type = device.type if torch.amp.is_autocast_available(device.type) else "cpu"
    return torch.autocast(device_type=device_type, enabled=False)


class _Codebook(nn.Module):
    def __init__(self, codebooks: int, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("embed", torch.zeros(codebooks, size, dim))


class CodebookLookup(nn.Module):
    """Eval-mode ``VectorQuantize`` (separate codebook per head, image feature maps) without
    the library: nearest code by cosine similarity of the l2-normalised input (or by
    Euclidean distance), and the code itself. Holds ``_codebook.embed`` as the library names
    it; the library's training state (EMA sums, usage counts) is not needed."""

    #: the library's buffers that only its training updates use
    TRAINING_STATE = ("_codebook.cluster_size", "_codebook.embed_avg", "_codebook.initted")

    def __init__(self, codebooks: int, size: int, dim: int, cosine: bool) -> None:
        super().__init__()
        self.codebooks, self.cosine = codebooks, cosine
        self._codebook = _Codebook(codebooks, size, dim // codebooks)

    def nearest(self, x: Tensor) -> Tensor:
        """Code indices (heads, N) of features (heads, N, d)."""
        embed = self._codebook.embed
        if self.cosine:
            return torch.einsum("hnd,hcd->hnc", F.normalize(x, dim=-1), embed).argmax(-1)
        return torch.cdist(x, embed).argmin(-1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, _, h, w = z.shape
        x = rearrange(z, "b (k d) y x -> k (b y x) d", k=self.codebooks)
        indices = self.nearest(x)
        codes = rearrange(indices, "k (b y x) -> b y x k", b=b, y=h, x=w)
        return self.get_output_from_indices(codes), codes, z.new_zeros(())

    def get_output_from_indices(self, indices: Tensor) -> Tensor:
        """(B, h, w, heads) indices -> (B, D, h, w) codes."""
        embed = self._codebook.embed
        picked = [embed[k][indices[..., k]] for k in range(self.codebooks)]
        return rearrange(torch.stack(picked), "k b y x d -> b (k d) y x")


class Quantizer(nn.Module):
    """Features (B, D, h, w) -> nearest codes, one codebook per disjoint channel group.

    ``lookup_only``: eval-mode lookup without vector-quantize-pytorch (see the module doc),
    for inference; such a quantizer cannot train."""

    def __init__(self, dim: int, config: QuantizerConfig, lookup_only: bool = False) -> None:
        super().__init__()
        if config.codebooks < 1:
            raise ValueError(f"codebooks must be >= 1, got {config.codebooks}")
        if config.codebook_size < 1:
            raise ValueError(f"codebook_size must be >= 1, got {config.codebook_size}")
        if dim % config.codebooks:
            raise ValueError(
                f"embed_dim {dim} is not divisible by codebooks {config.codebooks}: each "
                "codebook needs an equal, disjoint group of channels"
            )
        if (
            config.kmeans_init
            and config.codebooks > 1
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
        ):
            raise ValueError(
                "kmeans_init=True with several codebooks is not supported by "
                "vector-quantize-pytorch in distributed runs; set quantizer.kmeans_init=false"
            )
        self.dim = dim
        self.config = config
        self.codebooks = config.codebooks
        self.codebook_size = config.codebook_size
        self.lookup_only = lookup_only
        if lookup_only:
            self.vq = CodebookLookup(
                config.codebooks, config.codebook_size, dim, config.use_cosine_sim
            )
            return
        from vector_quantize_pytorch import VectorQuantize

        self.vq = VectorQuantize(
            dim=dim,
            codebook_size=config.codebook_size,
            codebook_dim=dim // config.codebooks,
            heads=config.codebooks,
            separate_codebook_per_head=True,
            accept_image_fmap=True,
            decay=config.decay,
            commitment_weight=config.commitment_weight,
            use_cosine_sim=config.use_cosine_sim,
            threshold_ema_dead_code=config.threshold_ema_dead_code,
            kmeans_init=config.kmeans_init,
        )
        assert not self.vq.has_projections  # codes must live in feature space (see module doc)

    def forward(self, z: Tensor) -> QuantizerOutput:
        if z.ndim != 4 or z.shape[1] != self.dim:
            raise ValueError(f"expected features (B, {self.dim}, h, w), got {tuple(z.shape)}")
        if self.lookup_only and self.training:
            raise RuntimeError("a lookup-only quantizer (built for inference) cannot train")
        with _no_autocast(z.device):
            quantized, indices, loss = self._library_quantize(z.float())
        if indices.ndim == 3:  # the library drops the codebook axis when heads == 1
            indices = rearrange(indices, "b h w -> b h w 1")
        if not self.training:
            # The library returns its shared `zero` buffer here; hand back a fresh tensor.
            loss = quantized.new_zeros(())
        return QuantizerOutput(quantized=quantized, indices=indices.long(), loss=loss)

    @torch.compiler.disable
    def _library_quantize(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The library's forward, never compiled (``train.compile``): in training it updates
        the codebooks in place and replaces dead codes by data-dependent indexing, which
        inductor's graph partitioner rejects ("Node view was invalid, but is output", torch
        2.11); the encoder and decoder around it still compile."""
        return self.vq(z)

    def indices_to_features(self, indices: Tensor) -> Tensor:
        """(B, h, w, codebooks) indices -> (B, D, h, w) codes; equals eval-mode ``quantized``."""
        if indices.ndim != 4 or indices.shape[-1] != self.codebooks:
            raise ValueError(
                f"expected indices (B, h, w, {self.codebooks}), got {tuple(indices.shape)}"
            )
        with _no_autocast(indices.device):
            return self.vq.get_output_from_indices(indices.long())


def code_usage(indices: Tensor, codebook_size: int) -> dict[str, float]:
    """Per-codebook perplexity (exp entropy of the code histogram) and fraction of codes used.

    Perplexity equals ``codebook_size`` when all codes are used equally and 1 when a single
    code is; a collapsed codebook shows up here long before it shows in the loss.
    """
    if indices.ndim < 1 or indices.numel() == 0:
        raise ValueError(f"expected non-empty indices (..., codebooks), got {tuple(indices.shape)}")
    flat = indices.reshape(-1, indices.shape[-1]).long()
    if int(flat.min()) < 0 or int(flat.max()) >= codebook_size:
        raise ValueError(
            f"indices must lie in [0, {codebook_size}), got [{flat.min()}, {flat.max()}]"
        )
    codebooks = flat.shape[1]
    offsets = torch.arange(codebooks, device=flat.device) * codebook_size
    counts = torch.bincount((flat + offsets).flatten(), minlength=codebooks * codebook_size)
    counts = rearrange(counts, "(k n) -> k n", k=codebooks).double()
    probs = counts / counts.sum(dim=-1, keepdim=True)
    perplexity = torch.exp(-torch.special.xlogy(probs, probs).sum(dim=-1))
    usage = (counts > 0).double().mean(dim=-1)
    result = {"perplexity": perplexity.mean().item(), "usage": usage.mean().item()}
    for g, (p, u) in enumerate(zip(perplexity.tolist(), usage.tolist(), strict=True)):
        result[f"perplexity_{g}"] = p
        result[f"usage_{g}"] = u
    return result
