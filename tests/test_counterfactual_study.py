"""tasks/counterfactual_study.py end to end on the toy scene: two variants, one table, one grid."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import TOY_TINY
from PIL import Image

from vqcausal.config import load_config

NARROW_VARIANTS = ("before", "transition-training", "narrow-transition")

pytestmark = pytest.mark.slow  # trains and evaluates two variants


def load_study():
    path = Path(__file__).resolve().parent.parent / "tasks" / "counterfactual_study.py"
    spec = importlib.util.spec_from_file_location("task_counterfactual_study", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_variants_give_a_table_and_a_comparison_grid(tmp_path, capsys):
    study = load_study()
    out = tmp_path / "study"
    argv = ["--size", "smoke", "--datasets", "toy", "--out", str(out), "--threads", "1"]
    argv += ["--variants", "before", "default"]
    for item in TOY_TINY:
        argv += ["--set", item]
    assert study.main(argv) == 0
    results = json.loads((out / "study.json").read_text())
    assert [r["variant"] for r in results] == ["before", "default"]
    # both variants are cells of one sweep in the study folder
    cells = sorted(p.name for p in out.iterdir() if (p / "cell.json").exists())
    assert cells == ["before-toy-vq-default-s0", "default-toy-vq-default-s0"]
    for r in results:
        figures = r["figures"]
        for title in ("atomicity", "AE ceiling", "codes right (changed)", "synthesis balanced"):
            assert 0.0 <= figures[title] <= 1.0, (title, figures[title])
        assert figures["train minutes"] > 0 and figures["CF PSNR"] > 5
    # the variants differ where they say: the "before" run has no classifier attention
    before, default = (load_config(Path(r["run"]) / "config.toml") for r in results)
    assert before.model.classifier_layers == 0 and default.model.classifier_layers == 2
    table = (out / "study.md").read_text().splitlines()
    assert table[2].startswith("| toy | before | 1 |") and table[3].startswith("| toy | default |")
    with Image.open(out / "counterfactuals.png") as grid:
        width, height = grid.size
    # one row per toy action (4), 2 + 2 images of 16 px at scale 2 per row
    assert height > 4 * 32 and width > 4 * 32
    # a second run skips every finished run
    assert study.main(argv) == 0
    assert "skipped" in capsys.readouterr().out
    assert study.main([*argv, "--variants", "after"]) == 2


def test_without_variants_the_study_runs_before_and_default_and_every_variant_is_valid():
    study = load_study()
    assert study.build_parser().parse_args([]).variants == ["before", "default"]
    shapes3d = Path(__file__).resolve().parent.parent / "configs" / "shapes3d.toml"
    for name, (_, overrides) in study.VARIANTS.items():
        config = load_config(shapes3d, [*overrides])
        if name == "default":
            assert config.train.lr_schedule == "wsd" and config.train.focus_floor == 0.125
        # the default config's wide transition; the variants before it take the narrow one
        wide = (config.model.transition.hidden, config.model.transition.update_film)
        assert wide == ((64, False) if name in NARROW_VARIANTS else (128, True)), name
        # the variants measured before the long stage 1 pin its 6,000 steps, the decay over the
        # last fifth and no focus; the rest are the default's 12,000 steps with focus
        short = name in {*NARROW_VARIANTS, "short-stage1"}
        train = config.train
        assert train.stage1_steps == (6000 if short else 12000), name
        assert train.lr_decay_fraction == (0.2 if short else 0.5), name
        assert train.action_focus == (0.0 if short or name == "no-focus" else 2.0), name
        assert train.focus_floor == (1.0 if name == "focus-floor" else 0.125), name
        # 2,500 stage-2 steps since the long stage 1; the variants before it pin their own
        pinned = {"before": 3000, "transition-training": 3000, "narrow-transition": 4000}
        pinned |= {"short-stage1": 3000, "short-stage2": 2000}
        assert train.stage2_steps == pinned.get(name, 2500), name


def test_at_smoke_size_the_size_keeps_its_steps_and_the_variant_its_other_settings():
    study = load_study()
    before = dict(o.split("=", 1) for o in study.variant_overrides("before", "smoke"))
    assert "train.stage1_steps" not in before and "train.stage2_steps" not in before
    assert "model.transition.hidden" not in before  # the smoke model's width
    assert before["train.lr_schedule"] == '"constant"'
    assert study.variant_overrides("before", "full") == study.VARIANTS["before"][1]
    args = study.build_parser().parse_args(["--size", "smoke", "--variants", "before"])
    (cell,) = study.cells_of(args, "before")
    config = load_config(cell.config_path, list(cell.overrides))
    assert (config.train.stage1_steps, config.train.stage2_steps) == (1200, 600)
    assert config.train.lr_schedule == "constant"
