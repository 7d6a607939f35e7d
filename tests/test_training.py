"""End to end: train the smoke config, resume bit-exactly, use the run from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_folder, stage2_train_retrieval
from PIL import Image

from vqcausal.cli import main as cli
from vqcausal.config import TrainConfig, load_config
from vqcausal.data.toy import ToyRenderer
from vqcausal.data.transitions import TransitionSampler
from vqcausal.errors import VQCausalError
from vqcausal.runs import latest_checkpoint
from vqcausal.train.run import main as train

TINY = [
    "train.stage1_steps=20",
    "train.stage2_steps=20",
    "train.cache_pairs=128",
    "train.eval_pairs=16",
    "train.eval_every=1000",
    "train.log_every=1",
    "train.checkpoint_every=10",
]


def losses(folder: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["total"] for r in records if "total" in r}


def save_png(tensor: torch.Tensor, path: Path) -> Path:
    Image.fromarray(tensor.permute(1, 2, 0).numpy()).save(path)
    return path


@pytest.fixture(scope="session")
def pair_files(tmp_path_factory) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Held-out toy pairs written as PNG files, with their true action names."""
    folder = tmp_path_factory.mktemp("pairs")
    source = ToyRenderer()
    sampler = TransitionSampler(source, load_config("configs/smoke.toml").transitions)
    t = sampler.sample(12, "test", torch.Generator().manual_seed(5))
    x, x_next = sampler.images(t)
    pairs = [
        (save_png(x[i], folder / f"a{i}.png"), save_png(x_next[i], folder / f"b{i}.png"))
        for i in range(len(t))
    ]
    return pairs, [source.space.action_names[a] for a in t.actions.tolist()]


def test_toy_model_learns_held_out_transitions(trained_run):
    """The smoke config learns the toy's training transitions exactly and retrieves held-out
    ones far above chance (0.25). Held-out accuracy swings with the seed on a 96-image toy
    (~19 held-out images): config seeds 0 / 1 / 2 / 3 gave synthesis 0.72 / 0.53 / 0.84 / 0.95,
    classifier 0.71 / 0.68 / 0.89 / 0.81, reconstruction 30.0 / 25.3 / 30.8 / 29.4 dB."""
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["finished"] and summary["step"] == 1200
    assert min(stage2_train_retrieval(trained_run)[-3:]) >= 0.95
    assert summary["retrieval_synthesis_accuracy"] >= 0.5
    assert summary["retrieval_classifier_accuracy"] >= 0.5
    assert summary["recon_psnr"] >= 24.0


def summary_matches_last_eval(run: Path, records: list[dict]) -> bool:
    """summary.json carries the numbers of the run's last evaluation."""
    summary = json.loads((run / "summary.json").read_text())
    last = [r["eval"] for r in records if "eval" in r][-1]
    return all(summary[key] == value for key, value in last.items())


def test_run_folder_holds_config_checkpoint_metrics_figures(trained_run):
    config = load_config(trained_run / "config.toml")
    assert config.data.dataset == "toy" and config.train.stage1_steps == 600
    ckpt = latest_checkpoint(trained_run)
    assert ckpt.finished and ckpt.step == 1200
    assert (ckpt.path / "model.safetensors").exists()
    assert ckpt.meta["model_args"]["action_names"] == ToyRenderer().space.action_names
    figures = {p.name for p in (trained_run / "figures").iterdir()}
    assert {"recon-0000600.png", "interventions-0001200.png", "adjacency-0001200.png"} <= figures
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").open()]
    eval_steps = [r["step"] for r in records if "eval" in r]
    assert eval_steps[-1] == 1200 and len(eval_steps) == len(set(eval_steps))  # each step once
    assert summary_matches_last_eval(trained_run, records)
    grid = Image.open(trained_run / "figures" / "interventions-0001200.png")
    assert grid.height > 4 * 32  # one row per action
    assert len(list((trained_run / "checkpoints").glob("step-*"))) == 2  # keep_checkpoints
    records = [
        json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()
    ]
    stage1 = [r for r in records if r["stage"] == 1 and "total" in r]
    assert stage1 and all(0 < r["usage"] <= 1 and r["perplexity"] >= 1 for r in stage1)


@pytest.mark.slow
def test_resume_continues_step_count_and_loss_curve(tmp_path):
    straight, staged, extended = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    base = ["--config", "configs/smoke.toml", *sum((["--set", s] for s in TINY), [])]
    assert train([*base, "--set", f'runs="{straight}"']) == 0
    reference = losses(run_folder(straight))
    assert sorted(reference) == list(range(1, 41))

    # stop after stage 1, then resume into stage 2
    assert train([*base, "--set", f'runs="{staged}"', "--stage", "1"]) == 0
    folder = run_folder(staged)
    assert latest_checkpoint(folder).step == 20 and not latest_checkpoint(folder).finished
    assert train(["--resume", str(folder)]) == 0
    assert losses(folder) == reference  # bit-exact on CPU

    # stop in the middle of stage 2, then resume with more steps
    short = [*base, "--set", f'runs="{extended}"', "--set", "train.stage2_steps=7"]
    assert train(short) == 0
    folder = run_folder(extended)
    assert latest_checkpoint(folder).step == 27
    assert train(["--resume", str(folder), "--set", "train.stage2_steps=20"]) == 0
    assert latest_checkpoint(folder).step == 40
    assert losses(folder) == reference


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_rendering_in_loader_workers_trains_the_same_model(tmp_path):
    """Workers only move the rendering: the loss curve is the in-process one, bit for bit."""
    base = ["--config", "configs/smoke.toml", *sum((["--set", s] for s in TINY), [])]
    curves = []
    for workers in (0, 2):
        runs = tmp_path / f"w{workers}"
        assert (
            train([*base, "--set", f'runs="{runs}"', "--set", f"train.data_workers={workers}"]) == 0
        )
        curves.append(losses(run_folder(runs)))
        records = (run_folder(runs) / "metrics.jsonl").read_text().splitlines()
        waits = [json.loads(r)["data_wait"] for r in records if '"data_wait"' in r]
        assert waits and all(0.0 <= w < 1.0 for w in waits)
    assert curves[0] == curves[1] and len(curves[0]) == 40


def test_in_training_evaluation_does_not_change_training(tmp_path):
    """The held-out evaluation reads the model in eval mode and draws from no RNG, so how often
    it runs (``train.eval_every``, 2,000 in the default config to save time) leaves the loss
    curve as it is, bit for bit, in both stages."""
    base = ["--config", "configs/smoke.toml", *sum((["--set", s] for s in TINY), [])]
    curves = []
    for every in (1000, 3):
        runs = tmp_path / f"every{every}"
        assert train([*base, "--set", f'runs="{runs}"', "--set", f"train.eval_every={every}"]) == 0
        records = (run_folder(runs) / "metrics.jsonl").read_text().splitlines()
        evals = [json.loads(r)["step"] for r in records if '"eval"' in r]
        assert evals == ([40] if every == 1000 else [*range(3, 40, 3), 40])
        curves.append(losses(run_folder(runs)))
    assert curves[0] == curves[1] and len(curves[0]) == 40


@pytest.mark.slow
def test_compiled_channels_last_training_follows_the_eager_curve(tmp_path):
    """train.compile wraps the training step in torch.compile (aot_eager: the same kernels,
    traced, so it compiles fast) and channels_last reorders memory: neither may change what is
    learned beyond float rounding."""
    steps = ["train.stage1_steps=6", "train.stage2_steps=6", "train.log_every=1"]
    base = ["--config", "configs/smoke.toml", *sum((["--set", s] for s in TINY + steps), [])]
    assert train([*base, "--set", f'runs="{tmp_path / "eager"}"']) == 0
    fast = ['train.compile="aot_eager"', "train.channels_last=true"]
    runs = tmp_path / "compiled"
    assert train([*base, "--set", f'runs="{runs}"', *sum((["--set", s] for s in fast), [])]) == 0
    eager, compiled = losses(run_folder(tmp_path / "eager")), losses(run_folder(runs))
    assert sorted(compiled) == sorted(eager) == list(range(1, 13))
    for step, value in eager.items():
        assert compiled[step] == pytest.approx(value, rel=1e-3, abs=1e-4), step
    with pytest.raises(VQCausalError, match="torch.compile backend"):
        TrainConfig(compile="warp-drive")


def test_retrieve_cli_on_png_files(trained_run, pair_files, capsys):
    pairs, truth = pair_files
    correct = 0
    for (a, b), action in zip(pairs, truth, strict=True):
        assert cli(["retrieve", str(a), str(b), "--run", str(trained_run), "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        ranked = out["pairs"][0]["actions"]
        assert len(ranked) == 3 and ranked[0]["probability"] >= ranked[1]["probability"]
        correct += ranked[0]["action"] == action
    assert correct >= 0.5 * len(pairs)  # held-out pairs; chance 0.25 (see the seed spread above)


def test_bf16_retrieval_ranks_as_fp32_does(trained_run, pair_files, capsys):
    """bf16 scoring (images still encoded in fp32) keeps every clear answer; only near-ties
    may swap (measured on 512 toy pairs: 98 - 100% agreement, probabilities within 0.15)."""
    pairs, _ = pair_files
    ranked = {}
    for precision in ("fp32", "bf16"):
        for a, b in pairs:
            argv = ["retrieve", str(a), str(b), "--run", str(trained_run), "--json", "--top-k", "2"]
            assert cli([*argv, "--precision", precision]) == 0
            top = json.loads(capsys.readouterr().out)["pairs"][0]["actions"]
            ranked.setdefault(precision, []).append(top)
    for top32, top16 in zip(ranked["fp32"], ranked["bf16"], strict=True):
        if top32[0]["probability"] - top32[1]["probability"] > 0.3:
            assert top16[0]["action"] == top32[0]["action"]
        same = {a["action"]: a["probability"] for a in top16}
        for entry in top32:
            if entry["action"] in same:
                assert same[entry["action"]] == pytest.approx(entry["probability"], abs=0.15)


def test_retrieve_pairs_two_folders_and_finds_the_newest_run(trained_run, pair_files, tmp_path):
    pairs, _ = pair_files
    left, right = tmp_path / "left", tmp_path / "right"
    left.mkdir(), right.mkdir()
    for i, (a, b) in enumerate(pairs[:3]):
        (left / f"p{i}.png").write_bytes(a.read_bytes())
        (right / f"p{i}.png").write_bytes(b.read_bytes())
    result = _run_cli(["retrieve", str(left), str(right), "--runs", str(trained_run.parent)])
    assert result.count("->") == 3 and "p0.png" in result


def _run_cli(args: list[str]) -> str:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert cli(args) == 0
    return buffer.getvalue()


def test_intervene_cli_writes_a_rollout_png(trained_run, pair_files, tmp_path):
    a = pair_files[0][0][0]
    out = tmp_path / "cf.png"
    args = ["intervene", str(a), "--action", "hue+", "--action", "position-", "--steps", "2"]
    text = _run_cli([*args, "--run", str(trained_run), "--out", str(out), "--scale", "1"])
    assert "4 step(s)" in text
    image = Image.open(out)
    assert image.width >= 5 * 16 and image.height >= 16  # input + 4 steps


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda run, png, tmp: ["retrieve", png, png, "--run", str(tmp / "nope")], "not found"),
        (lambda run, png, tmp: ["retrieve", png, png, "--runs", str(tmp)], "train one"),
        (lambda run, png, tmp: ["retrieve", str(tmp / "bad.png"), png, "--run", run], "bad.png"),
        (
            lambda run, png, tmp: ["intervene", png, "--action", "size+", "--run", run],
            "unknown action 'size+'",
        ),
        (lambda run, png, tmp: ["retrieve", str(tmp), png, "--run", run], "two folders"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    trained_run, pair_files, tmp_path, capsys, make_args, message
):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    png = str(pair_files[0][0][0])
    assert cli(make_args(str(trained_run), png, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "train.stage1_stepz=3"], "unknown config key 'train.stage1_stepz'"),
        (["--set", "model.autoencoder.widths=[8, 8, 8, 8, 8]"], "not divisible"),
        (["--resume", "/no/such/run"], "run folder not found"),
        (["--set", 'model.latent="flow"'], "model.latent 'flow'"),
    ],
)
def test_train_bad_input(args, message, capsys, tmp_path):
    assert (
        train(
            ["--config", "configs/smoke.toml", "--set", f'runs="{tmp_path}"', *args]
            if "--resume" not in args
            else args
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing written


def test_vqcausal_train_passes_options_through(tmp_path):
    """``vqcausal train --config ...`` is ``train.py --config ...`` (options first)."""
    sets = ["train.stage1_steps=2", "train.stage2_steps=1", "train.cache_pairs=32"]
    sets += ["train.eval_pairs=16", f'runs="{tmp_path}"']
    argv = ["train", "--config", "configs/smoke.toml"] + [a for s in sets for a in ("--set", s)]
    assert cli(argv) == 0
    assert latest_checkpoint(run_folder(tmp_path)).finished
