"""The README's set-up commands stay true: the main job's launch command runs and prints no
warning (run here on the smoke config for a few steps, as it would on a fresh machine)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs the README's launch command

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_launch_command_runs_without_a_warning(tmp_path):
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    install, tests = blocks[0].strip(), blocks[1].strip()
    assert install.startswith('pip install -e ".[dev]" && ') and tests.startswith("ruff check .")
    launch = install.split(" && ", 1)[1]
    assert launch.startswith("accelerate launch") and launch.endswith("train.py")
    tiny = " --config configs/smoke.toml --set train.stage1_steps=4 --set train.stage2_steps=2"
    tiny += f" --set train.cache_pairs=32 --set runs='\"{tmp_path}\"'"
    done = subprocess.run(
        ["bash", "-c", launch + tiny], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    printed = (done.stdout + done.stderr).lower()
    assert "warn" not in printed and "were not passed" not in printed, printed
    assert "finished at step 6" in printed


def test_train_without_a_config_trains_the_default_experiment(tmp_path):
    """The README's main command names no --config: it must train configs/shapes3d.toml, the
    config the README's tables measure, not the code defaults (which lack its schedule)."""
    from vqcausal.config import DEFAULT_EXPERIMENT, load_config
    from vqcausal.train.run import main as train

    steps = ["train.stage1_steps=2", "train.stage2_steps=1", "train.cache_pairs=16"]
    steps += ["train.eval_pairs=8", "train.batch_size=4", "train.stage2_batch_size=4"]
    argv = [x for s in [*steps, f'runs="{tmp_path}"'] for x in ("--set", s)]
    assert train(argv) == 0
    (run,) = list(tmp_path.iterdir())
    ran, default = load_config(run / "config.toml"), load_config(DEFAULT_EXPERIMENT)
    assert DEFAULT_EXPERIMENT.name == "shapes3d.toml"
    assert ran.train.lr_schedule == default.train.lr_schedule == "wsd"
    assert ran.model.transition == default.model.transition
    assert ran.model.autoencoder == default.model.autoencoder
    # the code defaults themselves stay as they were
    assert load_config(None).train.lr_schedule == "constant"
