"""Convolutional encoder and decoder around the VQ feature grid (CT-VAE's layout).

Each entry of ``widths`` is one stride-2 4x4 conv, so a 64x64 image with the default
``[64, 128, 256]`` becomes an 8x8 grid of ``embed_dim`` channels: one causal variable per
grid cell and codebook.

Differences from the official CT-VAE code, on purpose:
- a per-position channel LayerNorm (:class:`ChannelNorm`) after every conv stage and at
  the start of each residual block. It is per-sample, so training, eval and single-image
  inference agree (batch norm would break this), and, unlike GroupNorm, local, so codes
  stay functions of their receptive field. Without any norm the same network, trained
  with Adam and MSE on the 16x16 toy scene, drove the sigmoid into saturation within ~25
  steps and stayed at an all-black output in most seeds;
- the encoder ends in a plain 1x1 conv, not 1x1 + LeakyReLU, so the features handed to
  the quantizer are not squashed towards the positive half-space;
- the decoder ends in a sigmoid (images live in [0, 1]) rather than tanh;
- the config's ``widths`` list is never reversed in place (the official code does, so a
  second model built from the same config came out mirrored).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

_SLOPE = 0.2  # LeakyReLU negative slope


class ChannelNorm(nn.Module):
    """LayerNorm over channels at each position: per-sample like GroupNorm, but local.

    GroupNorm pools statistics over the whole image, so every code would depend on every
    pixel (recolouring the floor would change the codes of the object too). Normalising each
    position on its own keeps a code a function of its receptive field only, which is what
    makes interventions sparse in code space.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _norm(channels: int) -> nn.Module:
    return ChannelNorm(channels)


def _act() -> nn.LeakyReLU:
    return nn.LeakyReLU(_SLOPE)


@dataclass
class AutoencoderConfig:
    """Encoder/decoder shape; ``len(widths)`` stride-2 stages set the grid size."""

    # defaults: the CPU-sized model of configs/shapes3d.toml; CT-VAE's official Shapes3D model
    # is widths [64, 128, 256], residual_layers 6, encoder_kernel 3, embed_dim 128
    # (vqcausal.benchmarking.SETTINGS["official"])
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])
    residual_layers: int = 1
    embed_dim: int = 64  # D, channels of the feature grid handed to the quantizer
    # kernel of the encoder's convs after downsampling: 3 widens each code's view of the
    # image by a cell per conv; 1 keeps a code local to the strided convs' receptive field
    # (about 3 cells), so an action that changes one region changes only that region's codes
    encoder_kernel: int = 1


def _check_config(config: AutoencoderConfig) -> tuple[int, ...]:
    """Validate once and return an immutable copy of ``widths``."""
    widths = tuple(int(w) for w in config.widths)
    if not widths or any(w <= 0 for w in widths):
        raise ValueError(
            f"autoencoder widths must be a non-empty list of positive ints, got {config.widths!r}"
        )
    if config.residual_layers < 0:
        raise ValueError(f"residual_layers must be >= 0, got {config.residual_layers}")
    if config.encoder_kernel not in (1, 3, 5):
        raise ValueError(f"encoder_kernel must be 1, 3 or 5, got {config.encoder_kernel}")
    if config.embed_dim <= 0:
        raise ValueError(f"embed_dim must be positive, got {config.embed_dim}")
    return widths


class ResidualLayer(nn.Module):
    """x + Conv1x1(ReLU(Conv3x3(norm(x)))): CT-VAE's residual unit plus a pre-norm."""

    def __init__(self, channels: int, kernel: int = 3) -> None:
        super().__init__()
        self.block = nn.Sequential(
            _norm(channels),
            nn.Conv2d(channels, channels, kernel, padding=kernel // 2, bias=False),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class Encoder(nn.Module):
    """Images (B, C, H, W) in [0, 1] -> features (B, D, H / 2**L, W / 2**L)."""

    def __init__(self, in_channels: int, config: AutoencoderConfig) -> None:
        super().__init__()
        widths = _check_config(config)
        self.in_channels = in_channels
        self.downsample = 2 ** len(widths)
        layers: list[nn.Module] = []
        prev = in_channels
        for width in widths:
            layers += [nn.Conv2d(prev, width, 4, stride=2, padding=1), _norm(width), _act()]
            prev = width
        k = config.encoder_kernel
        layers += [nn.Conv2d(prev, prev, k, padding=k // 2), _norm(prev), _act()]
        layers += [ResidualLayer(prev, k) for _ in range(config.residual_layers)]
        layers += [_norm(prev), _act(), nn.Conv2d(prev, config.embed_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[-2] % self.downsample or x.shape[-1] % self.downsample:
            raise ValueError(
                f"image size {tuple(x.shape[-2:])} must be divisible by {self.downsample} "
                f"(2 ** number of widths) so the decoder can restore it"
            )
        return self.net(x)


class Decoder(nn.Module):
    """Features (B, D, h, w) -> images (B, C, h * 2**L, w * 2**L) in [0, 1]."""

    def __init__(self, out_channels: int, config: AutoencoderConfig) -> None:
        super().__init__()
        widths = _check_config(config)[::-1]  # a reversed copy; the config stays as it was
        self.embed_dim = config.embed_dim
        layers: list[nn.Module] = [
            nn.Conv2d(config.embed_dim, widths[0], 3, padding=1),
            _norm(widths[0]),
            _act(),
        ]
        layers += [ResidualLayer(widths[0]) for _ in range(config.residual_layers)]
        layers += [_norm(widths[0]), _act()]
        for prev, width in zip(widths[:-1], widths[1:], strict=True):
            layers += [
                nn.ConvTranspose2d(prev, width, 4, stride=2, padding=1),
                _norm(width),
                _act(),
            ]
        layers.append(nn.ConvTranspose2d(widths[-1], out_channels, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        if z.ndim != 4 or z.shape[1] != self.embed_dim:
            raise ValueError(f"expected features (B, {self.embed_dim}, h, w), got {tuple(z.shape)}")
        return torch.sigmoid(self.net(z))
