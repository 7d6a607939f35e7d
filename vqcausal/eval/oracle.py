"""A factor oracle: a small CNN that reads the ground-truth factors back from an image.

It judges counterfactual images. ``decode(intervene(x, a))`` is *atomic* when the oracle reads
exactly the factors of the true x' from it: the intended factor moved one step in the right
direction and nothing else changed. The oracle is only as good as its own held-out accuracy,
so that accuracy (per factor and all-factors-exact) is reported next to the atomicity.

* Training data: distinct images of the TRAIN split (the split the run used, so no image the
  counterfactuals are compared with is ever seen), uniformly over their grid points, with
  their factor values; held-out accuracy is measured on the TEST split's images.
* Network: stride-2 3x3 convolutions (GELU) and a per-pixel colour MLP, pooled over the
  whole image (global max and mean; soft-argmax positions of the conv channels), one hidden
  layer and one softmax head per factor; AdamW with a one-cycle learning rate and label
  smoothing. See :class:`FactorOracle` for why nothing position-specific reaches the head.
* Caching: weights go to ``oracle-<dataset>.safetensors`` (no pickle) beside a JSON of the
  settings, the data it was trained on and its accuracy; a later evaluation reuses them when
  that description matches exactly.

Held-out accuracy (mean over factors / all factors exact), measured with 2 threads on 2 cores
of an x86 server CPU (transitions seed 0, test fraction 0.1; the toy 0.2):

* default (2000 steps, 20k train images): shapes3d 0.9999 / 0.9995 on 2000 test images in
  ~105 s (1000 steps: 0.998 / 0.987 in ~50 s); pendulum (96 px, stride 3: 740 train images)
  1.0 / 1.0 in ~145 s, at 64 px in ~110 s; dSprites 0.81 (orientation 0.15: the square and
  ellipse look the same at several orientations; the other factors >= 0.93); toy 0.95.
* ``fast`` (300 steps, tiny CNN): toy 1.0 / 1.0 in a few seconds on one core (>= 0.95 / 0.90
  over 8 split seeds). It is for smoke tests: on shapes3d it reaches only ~0.57 / ~0.00, and
  ``vqcausal evaluate`` then flags its atomicity as unreliable.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from vqcausal.atomic import atomic_path, write_json_atomic
from vqcausal.data.photos import PhotoSource
from vqcausal.data.source import GroundTruthSource, to_float
from vqcausal.data.transitions import SPLITS, TransitionSampler
from vqcausal.progress import Progress

Render = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class OracleSettings:
    """Network size and training budget of the factor oracle."""

    widths: tuple[int, ...] = (16, 32, 64, 128)  # one stride-2 conv per entry
    colour_width: int = 16  # per-pixel colour MLP (1x1 convolutions)
    hidden: int = 256
    max_side: int = 64  # larger images are area-downsampled to this side first
    colour_side: int = 32  # the colour MLP reads the image area-downsampled to this side
    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    train_images: int = 20_000  # at most this many distinct train-split images
    test_images: int = 2_000  # at most this many distinct test-split images
    seed: int = 0
    # CPU threads while training; None: one for images of at most 32 px (a tiny network only
    # loses time synchronising more), else torch's setting
    threads: int | None = None

    @classmethod
    def fast(cls) -> OracleSettings:
        """A tiny CNN and a few hundred steps: seconds on the toy scene (tests, smoke runs)."""
        return cls(
            widths=(16, 32),
            colour_width=32,
            colour_side=16,
            hidden=64,
            steps=300,
            batch_size=64,
            lr=6e-3,
            train_images=2_000,
            test_images=500,
        )

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["widths"] = list(self.widths)
        return data


class FactorOracle(nn.Module):
    """Images float (B, C, H, W) in [0, 1] -> one logit vector per factor.

    Every feature the head sees is pooled over the whole image, so what is learned about an
    object at one place carries over to other places (a flattened feature map lets a small
    training set be memorised as position-specific lookups instead, which fails on unseen
    combinations of factor values):

    * what: global max and mean of the conv features, and of a per-pixel colour MLP (1x1
      convolutions: colours independent of shape, position and the image border);
    * where: the soft-argmax (expected row and column) of every conv channel.
    """

    def __init__(
        self, image_shape: tuple[int, ...] | list[int], sizes: list[int], settings: OracleSettings
    ) -> None:
        super().__init__()
        self.sizes = list(sizes)
        self.max_side, self.colour_side = settings.max_side, settings.colour_side
        channels = int(image_shape[0])
        layers: list[nn.Module] = []
        for width in settings.widths:
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.GELU()]
            channels = width
        self.conv = nn.Sequential(*layers)
        colour = settings.colour_width
        self.colour = nn.Sequential(
            nn.Conv2d(int(image_shape[0]), colour, 1),
            nn.GELU(),
            nn.Conv2d(colour, colour, 1),
            nn.GELU(),
        )
        self.head = nn.Sequential(
            nn.Linear(4 * channels + 2 * colour, settings.hidden),
            nn.GELU(),
            nn.Linear(settings.hidden, sum(self.sizes)),
        )

    @staticmethod
    def _soft_argmax(features: torch.Tensor) -> list[torch.Tensor]:
        b, c, h, w = features.shape
        weights = features.flatten(2).softmax(-1).view(b, c, h, w)
        rows = torch.linspace(-1, 1, h, device=features.device, dtype=features.dtype)
        cols = torch.linspace(-1, 1, w, device=features.device, dtype=features.dtype)
        return [(weights.sum(3) * rows).sum(-1), (weights.sum(2) * cols).sum(-1)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        side = max(x.shape[-2:])
        if side > self.max_side:
            x = F.interpolate(x, scale_factor=self.max_side / side, mode="area")
        x = x - 0.5
        features = self.conv(x)
        # colours need no detail: the per-pixel MLP reads a downsampled image
        side = max(x.shape[-2:])
        small = x
        if side > self.colour_side:
            small = F.interpolate(x, scale_factor=self.colour_side / side, mode="area")
        colour = self.colour(small)
        pooled = [
            features.amax((2, 3)),
            features.mean((2, 3)),
            *self._soft_argmax(features),
            colour.amax((2, 3)),
            colour.mean((2, 3)),
        ]
        logits = self.head(torch.cat(pooled, dim=-1))
        return list(logits.split(self.sizes, dim=-1))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """Most likely factor values (B, K) long for float images in [0, 1]."""
        out = []
        for start in range(0, x.shape[0], chunk):
            logits = self(x[start : start + chunk])
            out.append(torch.stack([part.argmax(-1) for part in logits], dim=1))
        if not out:
            return torch.zeros(0, len(self.sizes), dtype=torch.long, device=x.device)
        return torch.cat(out)


# ---- data -------------------------------------------------------------------------------
def split_values(
    sampler: TransitionSampler, n: int, split: str | None, generator: torch.Generator
) -> torch.Tensor:
    """Up to ``n`` distinct factor vectors of a split (None: all data), uniform over them.

    Stored sources draw from their stored images; procedural ones from the full grid (every
    grid point when the grid is small, rejection sampling otherwise); photo collections give
    the labels of up to ``n`` distinct photos (so vectors repeat, as often as in the photos).
    """
    space = sampler.space
    if isinstance(sampler.source, PhotoSource):
        return sampler.source.photo_values[_photo_rows(sampler.source, n, split, generator)]
    stored = sampler.source.stored_values()
    if stored is None and space.num_values <= max(4 * n, 100_000):
        stored = space.unravel(torch.arange(space.num_values))
    if stored is not None:
        if split is not None:
            stored = stored[sampler.split_of(stored) == SPLITS.index(split)]
        if stored.shape[0] > n:
            stored = stored[torch.randperm(stored.shape[0], generator=generator)[:n]]
        return stored
    found: dict[int, torch.Tensor] = {}
    for _ in range(100):
        cand = space.sample_values(2 * n, generator)
        if split is not None:
            cand = cand[sampler.split_of(cand) == SPLITS.index(split)]
        for flat, row in zip(space.ravel(cand).tolist(), cand, strict=True):
            found.setdefault(flat, row)
            if len(found) >= n:
                return torch.stack(list(found.values()))
    return torch.stack(list(found.values())) if found else torch.zeros(0, space.num_factors).long()


def _photo_rows(
    source: PhotoSource, n: int, split: str | None, generator: torch.Generator
) -> torch.Tensor:
    rows = source.split_rows(None if split is None else SPLITS.index(split))
    if len(rows) > n:
        rows = rows[torch.randperm(len(rows), generator=generator)[:n]]
    return rows


def labelled_images(
    sampler: TransitionSampler, n: int, split: str, generator: torch.Generator, render: Render
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``n`` images of a split with their factor vectors: distinct grid points rendered
    (:func:`split_values`), or distinct photos of a photo collection (its own split's)."""
    source = sampler.source
    if isinstance(source, PhotoSource):
        rows = _photo_rows(source, n, split, generator)
        return source.photo_values[rows], source.load_rows(rows)
    values = split_values(sampler, n, split, generator)
    return values, render(values)


def _accuracy(oracle: FactorOracle, images: torch.Tensor, values: torch.Tensor, names) -> dict:
    device = next(oracle.parameters()).device
    predicted = torch.cat(
        [
            oracle.predict(to_float(images[s : s + 256]).to(device)).cpu()
            for s in range(0, images.shape[0], 256)
        ]
    )
    right = predicted == values
    per_factor = right.double().mean(0).tolist()
    return {
        "accuracy": float(sum(per_factor) / len(per_factor)),
        "exact": right.all(1).double().mean().item(),
        "per_factor": dict(zip(names, per_factor, strict=True)),
        "test_images": int(values.shape[0]),
    }


@contextmanager
def _cpu_threads(threads: int | None, device: torch.device | str):
    """Temporarily use ``threads`` CPU threads (when set and training on the CPU)."""
    before = torch.get_num_threads()
    if threads and torch.device(device).type == "cpu":
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_oracle(
    source: GroundTruthSource,
    sampler: TransitionSampler,
    settings: OracleSettings,
    render: Render | None = None,
    device: torch.device | str = "cpu",
) -> tuple[FactorOracle, dict]:
    """Train on train-split images, measure accuracy on test-split images."""
    render = render or source.render
    generator = torch.Generator().manual_seed(settings.seed)
    train_values, train_images = labelled_images(
        sampler, settings.train_images, "train", generator, render
    )
    test_values, test_images = labelled_images(
        sampler, settings.test_images, "test", generator, render
    )
    if test_values.shape[0] == 0:  # a split without test images: hold out a tenth of train
        cut = max(1, train_values.shape[0] // 10)
        test_values, train_values = train_values[:cut], train_values[cut:]
        test_images, train_images = train_images[:cut], train_images[cut:]

    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        oracle = FactorOracle(source.image_shape, source.space.sizes, settings).to(device)
    optimizer = torch.optim.AdamW(
        oracle.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.lr, total_steps=max(1, settings.steps), pct_start=0.15
    )
    oracle.train()
    n = train_values.shape[0]
    loss = torch.zeros(())
    threads = settings.threads
    if threads is None and max(source.image_shape[1:]) <= 32:
        threads = 1
    with _cpu_threads(threads, device), Progress("factor oracle", settings.steps) as bar:
        for _ in range(settings.steps):
            pick = torch.randint(n, (settings.batch_size,), generator=generator)
            x = to_float(train_images[pick]).to(device)
            y = train_values[pick].to(device)
            logits = oracle(x)
            loss = sum(
                F.cross_entropy(part, y[:, k], label_smoothing=settings.label_smoothing)
                for k, part in enumerate(logits)
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.advance(loss=float(loss.detach()))
        oracle.eval()
        info = _accuracy(oracle, test_images, test_values, source.space.names)
    info.update(
        train_images=int(n),
        final_loss=float(loss.detach()),
        train_seconds=round(time.perf_counter() - started, 3),
    )
    return oracle, info


# ---- cache ------------------------------------------------------------------------------
def oracle_key(source: GroundTruthSource, settings: OracleSettings, data: dict) -> dict:
    """What must match for cached weights to be reused: settings, data and its split.

    Normalised through JSON (tuples become lists) so that it compares equal to a stored one.
    """
    key = {
        "settings": settings.to_dict(),
        "data": data,
        "source": source.name,
        "image_shape": list(source.image_shape),
        **source.space.to_dict(),
    }
    return json.loads(json.dumps(key))


def cache_paths(folder: Path, dataset: str) -> tuple[Path, Path]:
    return folder / f"oracle-{dataset}.safetensors", folder / f"oracle-{dataset}.json"


def _load_cached(
    folder: Path, dataset: str, key: dict, source: GroundTruthSource, settings: OracleSettings
) -> tuple[FactorOracle, dict] | None:
    weights, description = cache_paths(folder, dataset)
    try:
        info = json.loads(description.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("key") != key:
        return None
    if not isinstance(info.get("report"), dict):
        return None
    oracle = FactorOracle(source.image_shape, source.space.sizes, settings)
    try:
        missing, unexpected = load_model(oracle, str(weights), strict=False)
    except (OSError, SafetensorError, RuntimeError):
        return None
    if missing or unexpected:
        return None
    oracle.eval()
    return oracle, info


def load_or_train_oracle(
    folder: Path,
    dataset: str,
    source: GroundTruthSource,
    sampler: TransitionSampler,
    settings: OracleSettings,
    data: dict,
    render: Render | None = None,
    device: torch.device | str = "cpu",
) -> tuple[FactorOracle, dict]:
    """The cached oracle when its description matches, else a freshly trained (and cached) one.

    ``data`` describes the images (the run's data config and split settings); the returned
    info holds the accuracy and ``cached`` (whether the weights were reused).
    """
    key = oracle_key(source, settings, data)
    cached = _load_cached(folder, dataset, key, source, settings)
    if cached is not None:
        oracle, description = cached
        return oracle.to(device), {**description["report"], "cached": True}
    oracle, report = train_oracle(source, sampler, settings, render, device)
    weights, description = cache_paths(folder, dataset)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(weights) as tmp:
        save_model(oracle, str(tmp))
    write_json_atomic(description, {"key": key, "report": report})
    return oracle, {**report, "cached": False}


# ---- atomicity ----------------------------------------------------------------------------
def atomicity_report(
    predicted: torch.Tensor,
    values_next: torch.Tensor,
    actions: torch.Tensor,
    action_names: list[str] | None = None,
) -> dict:
    """How atomic counterfactuals are, from the oracle's reading of them.

    ``predicted`` (B, K): factors the oracle reads from decode(intervene(x, a)); ``values_next``
    (B, K): the true factors of x'; ``actions`` (B,): action ``2k`` / ``2k + 1`` moves factor k.

    * ``atomicity``: fraction with every factor equal to x''s (the intended factor moved one
      step in the right direction and nothing else changed);
    * ``intended_moved``: fraction whose intended factor equals x''s, whatever the others;
    * ``others_kept``: fraction whose other factors all equal x''s (= x's);
    * ``per_action``: atomicity per action (None where an action has no pairs);
    * ``per_action_detail``: per action, its ``pairs`` and the three fractions above;
    * ``per_factor``: per factor, the fraction read right (named after the actions, less
      their ``+`` / ``-``).
    """
    predicted, values_next = predicted.long().cpu(), values_next.long().cpu()
    actions = actions.long().cpu()
    if predicted.shape != values_next.shape or predicted.shape[0] != actions.shape[0]:
        raise ValueError(
            f"shapes differ: predicted {tuple(predicted.shape)}, values_next "
            f"{tuple(values_next.shape)}, actions {tuple(actions.shape)}"
        )
    n, k = predicted.shape
    names = action_names or [f"{f}{sign}" for f in range(k) for sign in "+-"]
    if n == 0:
        return {
            "atomicity": None,
            "intended_moved": None,
            "others_kept": None,
            "per_action": {},
            "per_action_detail": {},
            "per_factor": {},
        }
    right = predicted == values_next
    intended = F.one_hot(actions // 2, k).bool()
    exact = right.all(1).double()
    moved = right[intended].double()  # (n,): the intended factor of each row
    kept = (right | intended).all(1).double()
    per_action, detail = {}, {}
    for a, name in enumerate(names):
        rows = actions == a
        present = bool(rows.any())
        per_action[name] = exact[rows].mean().item() if present else None
        detail[name] = {
            "pairs": int(rows.sum()),
            "atomicity": per_action[name],
            "intended_moved": moved[rows].mean().item() if present else None,
            "others_kept": kept[rows].mean().item() if present else None,
        }
    factor_names = [name[:-1] for name in names[::2]]
    per_factor = dict(zip(factor_names, right.double().mean(0).tolist(), strict=True))
    return {
        "atomicity": exact.mean().item(),
        "intended_moved": moved.mean().item(),
        "others_kept": kept.mean().item(),
        "per_action": per_action,
        "per_action_detail": detail,
        "per_factor": per_factor,
    }
