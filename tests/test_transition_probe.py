"""tools/transition_probe.py: known figures from known predictions, a probe that learns on a
real run's cache, one JSON row per variant, bad input as one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import transition_probe as probe  # noqa: E402

from vqcausal.runs import latest_checkpoint, model_args_from_meta, read_latent_cache  # noqa: E402


def test_figures_count_changed_unchanged_mask_and_factors():
    # two pairs of three variables; pair 0 is a hue+ pair, pair 1 a size- pair
    changed = torch.tensor([[True, True, False], [True, False, False]])
    right = torch.tensor([[True, False, True], [True, True, False]])
    mask = torch.tensor([[True, False, False], [True, True, True]])
    scored = {"right": right, "changed": changed, "mask": mask}
    row = probe.figures(scored, torch.tensor([2, 1]), ["size+", "size-", "hue+", "hue-"])
    assert row["changed_right"] == pytest.approx(2 / 3)
    assert row["unchanged_right"] == pytest.approx(2 / 3)
    assert row["exact"] == 0.0
    assert row["mask_recall"] == pytest.approx(2 / 3)
    assert row["per_factor"] == pytest.approx({"size": 1.0, "hue": 0.5})


def test_a_trained_probe_beats_an_untrained_one(trained_run: Path):
    config = probe.load_config(trained_run / "config.toml")
    margs = model_args_from_meta(latest_checkpoint(trained_run).meta)
    cache = {k: v.long() for k, v in read_latent_cache(trained_run).items()}
    train = len(cache["actions"]) - 400
    held = [v[train:] for v in (cache["latents"], cache["actions"], cache["latents_next"])]
    changed = []
    for steps in (1, 300):
        model, _ = probe.train_transition(config, margs, cache, train, steps, seed=0)
        changed.append(probe.figures(probe.score(model, *held), held[1], margs.action_names))
    assert changed[1]["changed_right"] > changed[0]["changed_right"] + 0.2
    assert changed[1]["unchanged_right"] > 0.9


def test_the_probe_writes_one_row_per_variant(trained_run: Path, tmp_path: Path):
    out = tmp_path / "probe.json"
    film = ["film", "model.transition.update_film=true"]
    argv = [str(trained_run), "--steps", "5", "--held-out", "200", "--out", str(out)]
    assert probe.main([*argv, "--variant", *film]) == 0
    report = json.loads(out.read_text())
    assert [r["variant"] for r in report["results"]] == ["base", "film"]
    assert report["results"][1]["overrides"] == ["model.transition.update_film=true"]
    base, film_row = report["results"]
    assert film_row["parameters"] > base["parameters"]  # the gain's weights
    assert all(0 <= r["changed_right"] <= 1 and r["per_factor"] for r in report["results"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--variant", "lr", "train.stage2_lr=0.1"], "model.transition."),
        (["--variant", "base", "model.transition.hops=1"], "used twice"),
        (["--held-out", "999999"], "leaves no training pairs"),
        (["--variant", "x", "model.transition.hops=oops"], "hops"),
    ],
)
def test_bad_input_is_one_line(trained_run: Path, tmp_path: Path, capsys, extra, message):
    argv = [str(trained_run), "--steps", "1", "--out", str(tmp_path / "p.json"), *extra]
    assert probe.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "p.json").exists()


def test_a_folder_that_is_not_a_run_is_one_line(tmp_path: Path, capsys):
    assert probe.main([str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
