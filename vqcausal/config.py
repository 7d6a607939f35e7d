"""Dataclass configs, read from TOML files and ``--set section.key=value`` overrides.

Every config is a tree of dataclasses. TOML tables map onto nested dataclasses; unknown keys
and wrong types are rejected with one line naming the key, so a typo never trains silently
with a default. Values given with ``--set`` are parsed as TOML literals (``3``, ``0.5``,
``true``, ``[1, 2]``, ``"text"``) and fall back to a bare string.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from vqcausal.data.transitions import TransitionConfig
from vqcausal.errors import VQCausalError
from vqcausal.models.base import ModelConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(VQCausalError):
    """A config file or override that does not fit the config schema."""


#: the ``[data]`` options each dataset reads (``dataset`` and ``path`` apply to all); setting
#: another one is refused rather than silently ignored
DATA_OPTIONS = {
    "shapes3d": (),
    "sprites": ("channels",),
    "pendulum": ("image_size", "stride"),
    "mpi3d": (),
    "smallnorb": ("image_size",),
    "cars3d": ("image_size",),
    "celeba": ("image_size", "attributes"),
    "folder": ("channels", "image_size", "cyclic"),
    "toy": (),
}


@dataclass
class DataConfig:
    """Which images: a procedural renderer, or files the user already has (``path``)."""

    dataset: str = "shapes3d"  # see vqcausal.data.registry.DATASETS
    path: str | None = None  # 3dshapes.h5, dsprites .npz, pendulum folder, image folder
    image_size: int | None = None  # resize (pendulum, smallnorb, cars3d, celeba, folder)
    channels: int | None = None  # 1 or 3 where the source supports both
    # pendulum: keep every stride-th value of the CausalVAE grid (one step = 0.9 degrees);
    # None: 3 for the renderer (an action's effect stays visible at small image sizes), the
    # grid a folder's files lie on (1 for CausalVAE's). The run records the stride it used.
    stride: int | None = None
    cyclic: list[str] = field(default_factory=list)  # folder: names of cyclic factors
    # celeba: the attributes that are the factors; empty: CausalVAE's four (Male, Smiling,
    # Narrow_Eyes, Mouth_Slightly_Open), whose graph is then known
    attributes: list[str] = field(default_factory=list)
    # any dataset: factors whose labels are dropped, so a pair differs in one labelled factor
    # and in any of these, as two CelebA photos differ in identity (vqcausal.data.photos)
    unlabelled: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.dataset not in DATA_OPTIONS:
            raise VQCausalError(
                f"unknown dataset '{self.dataset}'; choose from {', '.join(DATA_OPTIONS)}"
            )
        takes = DATA_OPTIONS[self.dataset]
        for f in dataclasses.fields(self):
            if f.name in ("dataset", "path", "unlabelled") or f.name in takes:
                continue
            default = f.default_factory() if callable(f.default_factory) else f.default
            if getattr(self, f.name) != default:
                options = ", ".join(("path", *takes))
                raise VQCausalError(
                    f"data.{f.name} does not apply to dataset '{self.dataset}' (it reads: "
                    f"{options})"
                )
        if self.channels not in (None, 1, 3):
            raise VQCausalError(f"data.channels must be 1 or 3, got {self.channels}")
        if self.image_size is not None and not 8 <= self.image_size <= 1024:
            raise VQCausalError(f"data.image_size must be in [8, 1024], got {self.image_size}")


@dataclass
class TrainConfig:
    """Two stages: (1) the VQ-VAE on images, (2) transition + retrieval on cached codes."""

    stage1_steps: int = 6000
    stage2_steps: int = 4000
    batch_size: int = 32  # images per stage-1 step (per process)
    stage2_batch_size: int = 64  # cached pairs per stage-2 step (per process)
    lr: float = 2e-3
    stage2_lr: float = 1e-3
    grad_clip: float = 1.0
    # learning rate over each stage (vqcausal.schedule): "constant"; "cosine": a linear warm-up
    # over warmup_steps, then a half cosine down to lr_final times the base rate at the stage's
    # end; "wsd": the same warm-up, the full rate, then a straight line down to lr_final over
    # the stage's last lr_decay_fraction.
    # Constant by default: on the default shapes3d model a cosine stage 1 reconstructed worse
    # (31.2 against 32.3 dB PSNR after 6,000 steps, seed 0)
    lr_schedule: str = "constant"
    warmup_steps: int = 100
    lr_final: float = 0.05
    lr_decay_fraction: float = 0.2
    # train pairs encoded once for stage 2. A rare action's distinct pairs scale with it: at
    # imbalance rho = 100 shapes3d's rarest action has 0.34% of them, and at 20,000 (~170 with
    # its opposite's reversed) it was memorised (held-out retrieval 0.71 and falling with more
    # steps); 80,000 took it to 0.98, for ~2 more minutes of encoding on a 2-core CPU
    cache_pairs: int = 80_000
    # stage 2 draws cached pairs with probability 1/count(action): every action is trained
    # equally often however skewed the data (the rare action's distinct pairs stay as few)
    balance_actions: bool = True
    # stage 2 also trains on every cached pair reversed, (x', inverse(a), x): each action undoes
    # its opposite, so a rare action learns from its opposite's pairs as well
    reverse_pairs: bool = True
    # stage 2 draws each action (times its balanced share) in proportion to its running
    # training loss relative to the mean, to this power (vqcausal.train.focus): the steps go
    # to the actions still wrong (shape, scale) rather than those learned (hues); 0 = off
    action_focus: float = 0.0
    # what the focus weighs: "factor" (an action's share follows the mean loss of both of its
    # factor's directions, so a memorised rare direction is not starved) or "action" (its own)
    focus_by: str = "factor"
    # the least share factor focus gives an action (0.125: an easy action is drawn down to an
    # eighth of its balanced share); 1: focus only adds draws to the hard actions and never
    # takes them from an action whose few pairs are memorised (a rare one under imbalance)
    focus_floor: float = 0.125
    # processes rendering training images ahead of the loop; -1: none on a CPU (they would
    # compete with the model for the cores), up to 8 per process on an accelerator
    data_workers: int = -1
    eval_pairs: int = 1024  # held-out pairs for the in-training evaluation
    eval_every: int = 1000
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    mixed_precision: str = "no"  # no | bf16 | fp16 (the quantizer always runs in fp32)
    # torch.compile the training step: "no", or a backend ("inductor"; "aot_eager" compiles
    # fast, for checks). Pays off on a GPU for long runs; costs ~30 s of compiling per stage
    compile: str = "no"
    channels_last: bool = False  # NHWC convolutions: faster under bf16 on recent GPUs
    # experiment trackers through accelerate: "auto" (TensorBoard when installed), "none",
    # "all" (every installed one), a name ("tensorboard", "wandb", "mlflow", "aim",
    # "comet_ml", ...) or a list of names; files stay in the run folder (vqcausal.train.trackers)
    log_with: str | list[str] = "auto"

    def __post_init__(self) -> None:
        from vqcausal.schedule import SCHEDULES

        if self.lr_schedule not in SCHEDULES:
            raise VQCausalError(f"train.lr_schedule must be one of {', '.join(SCHEDULES)}")
        if self.warmup_steps < 0 or not 0 <= self.lr_final <= 1:
            raise VQCausalError("train.warmup_steps must be >= 0 and train.lr_final in [0, 1]")
        if not 0 < self.lr_decay_fraction <= 1:
            raise VQCausalError("train.lr_decay_fraction must be in (0, 1]")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise VQCausalError("train.mixed_precision must be no, bf16 or fp16")
        if self.compile != "no":
            import torch._dynamo

            backends = torch._dynamo.list_backends(exclude_tags=())
            if self.compile not in backends:
                raise VQCausalError(
                    f"train.compile must be no or a torch.compile backend ({', '.join(backends)})"
                )
        positive = ("batch_size", "stage2_batch_size", "eval_every", "log_every")
        for name in positive + ("checkpoint_every", "keep_checkpoints", "eval_pairs"):
            if getattr(self, name) < 1:
                raise VQCausalError(f"train.{name} must be >= 1")
        if self.action_focus < 0:
            raise VQCausalError("train.action_focus must be >= 0 (0: off)")
        if not 0 < self.focus_floor <= 1:
            raise VQCausalError("train.focus_floor must be in (0, 1]")
        if self.focus_by not in ("factor", "action"):
            raise VQCausalError('train.focus_by must be "factor" or "action"')
        if self.data_workers < -1:
            raise VQCausalError("train.data_workers must be >= 0, or -1 for automatic")
        if self.stage1_steps < 0 or self.stage2_steps < 0 or self.cache_pairs < 1:
            raise VQCausalError("train steps must be >= 0 and train.cache_pairs >= 1")


@dataclass
class Config:
    """Everything a run needs; stored inside every run folder and checkpoint."""

    data: DataConfig = field(default_factory=DataConfig)
    transitions: TransitionConfig = field(default_factory=TransitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runs: str = "runs"  # parent folder of run folders
    name: str = ""  # run folder name prefix; default: the dataset name
    # labels for experiment trackers ("latent=vq", "sweep=ablation"): dashboards group runs by
    # them; sweeps and searches tag each run with its cell or trial
    tags: list[str] = field(default_factory=list)
    seed: int = 0


T = TypeVar("T")


INT_LIMIT = 2**31 - 1  # beyond this an int in a config is damage (it overflows torch's int32)
MAX_STRING = 4096
#: numeric keys ("[]": every item of a list) that must be >= 1 (ints) or > 0 (floats); every
#: other number must be finite and >= 0, except the keys in MIN_BELOW_ZERO
POSITIVE = frozenset(
    [
        "train.lr",
        "train.stage2_lr",
        "train.grad_clip",
        "data.stride",
        "data.image_size",
        "model.classifier_hidden",
        "model.autoencoder.widths[]",
        "model.autoencoder.embed_dim",
        "model.autoencoder.encoder_kernel",
        "model.quantizer.codebook_size",
        "model.quantizer.codebooks",
        "model.transition.hidden",
        "model.transition.heads",
        "model.transition.update_expansion",
        "model.transition.update_layers",
        "model.gaussian.latent_dim",
        "model.ladder.latent_dims[]",
        "model.ladder.hidden",
        "model.scm.concepts",
        "model.scm.concept_dim",
        "model.scm.mask_hidden",
    ]
)
#: keys in [0, 1]
FRACTIONS = frozenset(
    ["model.quantizer.decay", "model.transition.mask_threshold", "model.scm.label_fraction"]
)
MIN_BELOW_ZERO = {"train.data_workers": -1}


def _generic_key(key: str) -> str:
    """``a.b[3]`` -> ``a.b[]``: list items share their list's bounds."""
    return re.sub(r"\[\d+\]", "[]", key)


def check_number(value: float, key: str) -> None:
    """The bounds every config number obeys (see POSITIVE, FRACTIONS, MIN_BELOW_ZERO)."""
    generic = _generic_key(key)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{key}' must be a finite number, got {value}")
    if isinstance(value, int) and abs(value) > INT_LIMIT:
        raise ConfigError(f"config key '{key}' is out of range ({value:.3g}; at most {INT_LIMIT})")
    if generic in POSITIVE and value <= 0:
        raise ConfigError(f"config key '{key}' must be > 0, got {value}")
    if generic in FRACTIONS and not 0 <= value <= 1:
        raise ConfigError(f"config key '{key}' must be in [0, 1], got {value}")
    least = MIN_BELOW_ZERO.get(generic, 0)
    if value < least:
        raise ConfigError(f"config key '{key}' must be >= {least}, got {value}")


def check_string(value: str, key: str) -> None:
    if len(value) > MAX_STRING:
        raise ConfigError(f"config key '{key}' is too long ({len(value)} characters)")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(f"config key '{key}' contains control characters: {value[:40]!r}")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a type hint (bool/int/float/str, Optional, list, dataclass)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' wants a list, got {value!r}")
        (item,) = typing.get_args(hint)
        if not value and _generic_key(key) + "[]" in POSITIVE:
            raise ConfigError(f"config key '{key}' must not be empty")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' wants a table, got {value!r}")
        return from_dict(hint, value, prefix=f"{key}.")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        check_number(value, key)
        return float(value)
    if hint in (bool, int, float, str):
        if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
            if hint in (int, float):
                check_number(value, key)
            elif hint is str:
                check_string(value, key)
            return value
        raise ConfigError(
            f"config key '{key}' wants {_type_name(hint)}, got {type(value).__name__} {value!r}"
        )
    raise ConfigError(f"config key '{key}' has an unsupported type {hint}")  # pragma: no cover


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"unknown config key '{prefix}{key}' (known: {known})")
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    try:
        return cls(**kwargs)
    except VQCausalError as err:
        raise ConfigError(f"config section '{prefix.rstrip('.') or 'root'}': {err}") from None


def to_dict(config: Any) -> dict:
    """Plain nested dict of a config, with None values dropped (TOML has no null)."""

    def clean(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items() if v is not None}
        return obj

    return clean(dataclasses.asdict(config))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    except RecursionError:
        raise ConfigError(f"override '{key.strip()}' is nested too deeply") from None
    return path, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Merge ``--set`` overrides into a nested dict (validated later by :func:`from_dict`)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
        node[path[-1]] = value
    return data


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None


#: the default experiment (procedural Shapes3D, the CPU-sized CT-VAE): what ``train.py`` runs
#: without ``--config``, so the README's main command trains the config its tables measure
#: (the code defaults alone lack its schedule and transition width)
DEFAULT_EXPERIMENT = Path(__file__).resolve().parents[1] / "configs" / "shapes3d.toml"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the TOML file, then ``--set`` overrides."""
    data = read_toml(path) if path else {}
    return from_dict(Config, apply_overrides(data, overrides or []))
