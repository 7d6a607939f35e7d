"""Shared fixtures: tiny sources so tests never need a real dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vqcausal.data.factors import Factor, FactorSpace
from vqcausal.data.source import IndexedSource
from vqcausal.data.toy import ToyRenderer


class SparseToy(IndexedSource):
    """The toy scene with only some grid points stored, like a partial dataset file."""

    name = "sparse-toy"
    image_shape = (3, 16, 16)

    def __init__(self, keep: torch.Tensor, split: torch.Tensor | None = None) -> None:
        self.renderer = ToyRenderer()
        super().__init__(self.renderer.space, self.renderer.space.unravel(keep))
        self.split = split

    def load_rows(self, rows: torch.Tensor) -> torch.Tensor:
        return self.renderer.render(self.row_values[rows])

    def stored_split(self) -> torch.Tensor | None:
        return self.split


@pytest.fixture
def toy() -> ToyRenderer:
    return ToyRenderer()


@pytest.fixture
def sparse_toy() -> SparseToy:
    keep = torch.tensor([i for i in range(96) if i % 5 != 0])
    return SparseToy(keep)


@pytest.fixture
def mixed_space() -> FactorSpace:
    return FactorSpace([Factor("hue", 4, cyclic=True), Factor("scale", 3), Factor("pos", 5)])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test of the shared trained run is slow: whichever runs first trains it."""
    for item in items:
        if "trained_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny models run fastest on one thread and never stall on an oversubscribed CI box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_folder(runs: Path) -> Path:
    """The one run folder under ``runs``."""
    (folder,) = [p for p in runs.iterdir() if p.is_dir()]
    return folder


def stage2_train_retrieval(folder: Path) -> list[float]:
    """The retrieval accuracy on training batches logged through stage 2 of a run."""
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [r["retrieval_accuracy"] for r in records if r["stage"] == 2 and "total" in r]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """The smoke config trained once (toy data, ~1 minute on one core), shared by tests."""
    from vqcausal.train.run import main as train

    runs = tmp_path_factory.mktemp("runs")
    assert train(["--config", "configs/smoke.toml", "--set", f'runs="{runs}"']) == 0
    return run_folder(runs)


#: configs/smoke.toml-sized and a few dozen steps: what sweep and study tests train for real
TOY_TINY = (
    "model.autoencoder.widths=[16, 32]",
    "model.autoencoder.embed_dim=32",
    "model.quantizer.codebook_size=32",
    "model.transition.hidden=32",
    "train.stage1_steps=40",
    "train.stage2_steps=30",
    "train.cache_pairs=500",
    "train.eval_pairs=64",
    "train.checkpoint_every=20",
    "train.log_every=10",
)


def train_retrieve_evaluate(tmp_path: Path, data: list[str], a, b) -> list[str]:
    """The smoke run every new source goes through: a tiny model trained for a few steps on
    ``data`` (``--set`` overrides naming the dataset and its path), then ``retrieve`` on two of
    its images (``a``, ``b``: H x W (x 3) uint8 arrays) and ``evaluate --fast``. Returns the
    model's action names."""
    from PIL import Image

    from vqcausal.eval.evaluate import evaluate_run
    from vqcausal.inference import retrieve
    from vqcausal.runs import load_model_from_run
    from vqcausal.train.run import main as train

    sets = [*data, f'runs="{tmp_path / "runs"}"', "train.stage1_steps=6", "train.stage2_steps=4"]
    sets += ["train.cache_pairs=64", "train.eval_pairs=16", "train.batch_size=8"]
    assert train(["--config", "configs/smoke.toml", *(x for s in sets for x in ("--set", s))]) == 0
    (run,) = list((tmp_path / "runs").iterdir())
    model, _ = load_model_from_run(run)
    for name, image in (("a.png", a), ("b.png", b)):
        Image.fromarray(image).save(tmp_path / name)
    (answer,) = retrieve(model, [(tmp_path / "a.png", tmp_path / "b.png")], top_k=2)
    assert len(answer.actions) == 2 and answer.actions[0][0] in model.args.action_names
    result = evaluate_run(run, pairs=32, fast=True, disentanglement=False)
    assert 0 <= result.metrics["retrieval"]["synthesis"]["balanced_accuracy"] <= 1
    return list(model.args.action_names)
