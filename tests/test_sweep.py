"""The imbalance ablation: planner, skip/resume bookkeeping, aggregation, one real tiny cell."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from vqcausal.config import load_config
from vqcausal.sweep import cells as cell_folders
from vqcausal.sweep import command, engine, results, spec, tables
from vqcausal.sweep import plan as planner
from vqcausal.sweep.plan import Cell
from vqcausal.sweep.spec import SweepError
from vqcausal.train.run import config_toml


def resolved(cell: Cell):
    """The config the cell's training run would get (train.py resolves the same way)."""
    return load_config(cell.config_path, list(cell.overrides))


# ---- planner ------------------------------------------------------------------------------------
def test_smoke_plan_is_the_small_grid():
    cells = planner.plan("smoke")
    assert [c.name for c in cells] == [
        "shapes3d-vq-actions-rho1-s0",
        "shapes3d-gaussian-actions-rho1-s0",
        "shapes3d-vq-actions-rho100-s0",
        "shapes3d-gaussian-actions-rho100-s0",
    ]
    config = resolved(cells[2])
    assert config.model.autoencoder.widths == [16, 32, 64]
    assert f"train.stage1_steps={config.train.stage1_steps}" in spec.SMOKE_OVERRIDES
    assert config.transitions.imbalance == 100.0 and config.model.latent == "vq"


def test_cpu_plan_is_the_issue_grid_with_the_default_model():
    cells = planner.plan("cpu")
    latents = ("vq", "gaussian", "ladder")
    per_seed = [f"shapes3d-{lat}-actions-rho{rho}" for rho in (1, 10, 100) for lat in latents]
    per_seed += [f"shapes3d-{lat}-held_out-k16" for lat in latents]
    assert [c.name for c in cells] == [f"{n}-s{s}" for s in (0, 1, 2) for n in per_seed]
    config = resolved(cells[2 * 3])  # vq at rho 100, seed 0
    assert config.model.autoencoder.widths == [32, 64, 128]  # configs/shapes3d.toml
    assert (config.train.stage1_steps, config.train.stage2_steps) == (6000, 2000)
    # the default's stage 1 before it doubled (the shared autoencoders measured at that size)
    assert config.train.lr_decay_fraction == 0.2
    assert (
        config.train.action_focus
        == load_config(spec.CONFIG_DIR / "shapes3d.toml").train.action_focus
    )
    assert config.transitions.imbalance == 100.0 and config.model.latent == "vq"
    held = resolved(cells[9])
    assert (held.transitions.rare_action, held.transitions.rare_examples) == ("object_hue+", 16)


def test_full_plan_counts_names_and_seed_major_order():
    cells = planner.plan(
        "full", datasets=["shapes3d"], latents=["vq", "scm"], rhos=[1, 10], ks=[1, 5], seeds=[0, 1]
    )
    # per seed and latent: actions rho 1, 10; values rho 10 (rho 1 is the actions cell);
    # held_out k 1, 5
    assert len(cells) == 2 * 2 * 5
    names = {c.name for c in cells}
    assert len(names) == len(cells)
    assert "shapes3d-scm-values-rho10-s1" in names
    assert "shapes3d-vq-held_out-k5-s0" in names
    assert "shapes3d-vq-values-rho1-s0" not in names
    assert [c.seed for c in cells] == [0] * 10 + [1] * 10
    # without the actions mode, values keeps its own uniform cell
    only_values = planner.plan(
        "full", datasets=["sprites"], latents=["vq"], modes=["values"], rhos=[1, 10], seeds=[0]
    )
    assert [c.name for c in only_values] == [
        "sprites-vq-values-rho1-s0",
        "sprites-vq-values-rho10-s0",
    ]
    full = planner.plan("full")
    assert len(full) == 2 * 4 * 3 * (3 + 2 + 3)


def test_overrides_realise_each_mode_and_the_latent():
    cells = {
        c.name: c
        for c in planner.plan(
            "full",
            datasets=["shapes3d", "sprites"],
            latents=["vq", "scm"],
            rhos=[1, 10],
            ks=[5],
            seeds=[3],
            overrides=["train.stage2_steps=7"],
        )
    }
    actions = resolved(cells["shapes3d-vq-actions-rho10-s3"])
    assert actions.transitions.imbalance == 10.0 and actions.transitions.value_imbalance == 1.0
    assert actions.seed == 3 and actions.model.latent == "vq" and actions.data.dataset == "shapes3d"
    assert actions.train.stage2_steps == 7  # the user's --set comes last
    values = resolved(cells["sprites-vq-values-rho10-s3"])
    assert values.transitions.value_imbalance == 10.0 and values.transitions.imbalance == 1.0
    held = resolved(cells["shapes3d-vq-held_out-k5-s3"])
    assert held.transitions.rare_action == "object_hue+" and held.transitions.rare_examples == 5
    assert held.transitions.imbalance == 1.0
    # scm takes its concepts from the data when the run is built, not from the sweep
    assert resolved(cells["shapes3d-scm-actions-rho1-s3"]).model.latent == "scm"
    assert resolved(cells["sprites-scm-held_out-k5-s3"]).model.scm.concepts is None
    assert resolved(cells["sprites-scm-held_out-k5-s3"]).transitions.rare_action == "scale+"
    assert not any("scm" in o for o in cells["sprites-vq-actions-rho10-s3"].overrides)
    # size "full" keeps each dataset's own model and steps
    default = load_config(spec.CONFIG_DIR / "shapes3d.toml")
    assert actions.train.stage1_steps == default.train.stage1_steps
    custom = planner.plan(
        "smoke", modes=["held_out"], ks=[2], held_out_actions={"shapes3d": "scale-"}
    )
    assert resolved(custom[0]).transitions.rare_action == "scale-"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": "huge"}, "unknown size 'huge'"),
        ({"latents": ["vq", "vae"]}, "unknown latent 'vae'"),
        ({"datasets": ["mnist"]}, "unknown dataset 'mnist'"),
        ({"modes": ["labels"]}, "unknown mode 'labels'"),
        ({"rhos": [0.5]}, "rho must be a finite number >= 1"),
        ({"modes": ["held_out"], "ks": [0]}, "k .* must be >= 1"),
        ({"modes": ["held_out"], "held_out_actions": {"shapes3d": "hue+"}}, "no action 'hue\\+'"),
        ({"seeds": []}, "no seed"),
        ({"overrides": ["model.latent='scm'"]}, "set per cell by the sweep; use --latents"),
        ({"overrides": ["transitions.imbalance=5"]}, "use --modes actions --rhos"),
    ],
)
def test_bad_grids_are_one_line_errors(kwargs, message):
    with pytest.raises(SweepError, match=message):
        planner.plan(**kwargs)


# ---- skipping and resuming (no training: the runner is mocked) ----------------------------------
def fake_checkpoint(run_dir: Path, step: int, finished: bool, stage1_steps: int = 10) -> None:
    folder = run_dir / "checkpoints" / f"step-{step:07d}"
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "step": step,
        "finished": finished,
        "stage1_steps": stage1_steps,
        "model_args": {"image_shape": [3, 16, 16]},
        "saved_at": f"2026-01-01 00:00:{step % 60:02d}",
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    (run_dir / "checkpoints" / "latest").write_text(folder.name)


def fake_metrics(
    run_dir: Path,
    names: list[str],
    per_action: dict[str, float],
    balanced: float,
    classifier: float = 0.5,
    psnr: float = 20.0,
    test_pairs: int = 10,
) -> None:
    confusion = [
        [test_pairs if i == j else 0 for j in range(len(names))] for i in range(len(names))
    ]
    report = {
        "accuracy": balanced,
        "balanced_accuracy": balanced,
        "worst_action_accuracy": min(per_action.values()),
        "undirected_accuracy": 1.0,
        "top_k": {"1": balanced, "3": 1.0},
        "per_action": per_action,
        "confusion": confusion,
    }
    metrics = {
        "retrieval": {
            "synthesis": report,
            "classifier": {**report, "balanced_accuracy": classifier},
        },
        "reconstruction": {"mse": 0.01, "psnr": 30.0},
        "counterfactual": {
            "psnr": psnr,
            "ssim": 0.9,
            "atomicity": 0.25,
            "oracle_accuracy": 1.0,
            # per-action atomicity: half the action's retrieval accuracy (a known answer)
            "per_action": {n: {"atomicity": a / 2} for n, a in per_action.items()},
        },
    }
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    (run_dir / "eval" / "metrics.json").write_text(json.dumps(metrics))


class FakeRunner:
    """Plays train.py and vqcausal evaluate by writing the files they would write."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[tuple[list[str], dict[str, str]]] = []
        self.fail_on = fail_on

    def __call__(self, argv: list[str], env: dict[str, str], log: Path) -> int:
        self.calls.append((argv, env))
        log.parent.mkdir(parents=True, exist_ok=True)
        if self.fail_on and any(self.fail_on in a for a in argv):
            log.write_text("Traceback...\nerror: something broke\n")
            return 2
        if "evaluate" in argv:
            run_dir = Path(argv[argv.index("evaluate") + 1])
            fake_metrics(run_dir, ["a", "b"], {"a": 1.0, "b": 0.5}, 0.75)
            (run_dir / "eval" / "oracle-toy.json").write_text("{}")
        elif "--resume" in argv:
            step = 10 if "--stage" in argv else 20  # --stage 1 stops after stage 1
            fake_checkpoint(Path(argv[argv.index("--resume") + 1]), step, finished=step == 20)
        else:
            sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
            runs = json.loads(next(s for s in sets if s.startswith("runs=")).split("=", 1)[1])
            step = 10 if "--stage" in argv else 20
            fake_checkpoint(Path(runs) / "run-20260101-000000", step, finished=step == 20)
        return 0

    def commands(self, cell: Cell) -> list[str]:
        """What was run for a cell: train | resume | evaluate, in order."""
        out = []
        for argv, _ in self.calls:
            text = " ".join(argv)
            if cell.name not in text:
                continue
            out.append(
                "evaluate" if "evaluate" in argv else "resume" if "--resume" in argv else "train"
            )
        return out


@pytest.fixture
def toy_cells() -> list[Cell]:
    return planner.plan("smoke", datasets=["toy"], latents=["vq", "gaussian"], rhos=[1, 10])


def bring_to_done(cells: list[Cell], sweep: Path, runner, evaluate_args=()) -> list:
    """What each Ray task of a sweep does, here in this process."""
    return [
        cell_folders.run_cell(cell, sweep, {"OMP_NUM_THREADS": "1"}, runner, evaluate_args)
        for cell in cells
    ]


def test_finished_cells_are_skipped_and_unfinished_ones_resumed(tmp_path, toy_cells):
    done, resume, evaluate_only, new = toy_cells
    fake_checkpoint(tmp_path / done.name / "run-1", 20, finished=True)
    fake_metrics(tmp_path / done.name / "run-1", ["a"], {"a": 1.0}, 1.0)
    fake_checkpoint(tmp_path / resume.name / "run-1", 10, finished=False)
    fake_checkpoint(tmp_path / evaluate_only.name / "run-1", 20, finished=True)
    (tmp_path / new.name / "run-killed").mkdir(parents=True)  # killed before a checkpoint
    (tmp_path / new.name / "run-killed" / "config.toml").write_text("")
    (tmp_path / ".oracle").mkdir()
    (tmp_path / ".oracle" / "oracle-toy.safetensors").write_bytes(b"weights")
    runner = FakeRunner()
    outcomes = bring_to_done(toy_cells, tmp_path, runner, ("--fast",))

    assert [o.status for o in outcomes] == ["skipped", "done", "done", "done"]
    assert [o.message for o in outcomes[1:]] == [
        "resumed and evaluated",
        "evaluated (training had finished)",
        "trained and evaluated",
    ]
    assert runner.commands(done) == []
    assert runner.commands(resume) == ["resume", "evaluate"]
    assert runner.commands(evaluate_only) == ["evaluate"]
    assert runner.commands(new) == ["train", "evaluate"]
    assert not (tmp_path / new.name / "run-killed").exists()
    resume_argv = next(a for a, _ in runner.calls if "--resume" in a)
    assert resume_argv[-1] == str(tmp_path / resume.name / "run-1")
    train_argv = next(a for a, _ in runner.calls if "--config" in a)
    assert train_argv[train_argv.index("--config") + 1].endswith("configs/smoke.toml")
    assert "transitions.imbalance=10.0" in train_argv and "--set" in train_argv
    evaluate_argv = next(a for a, _ in runner.calls if "evaluate" in a)
    evaluated = Path(evaluate_argv[evaluate_argv.index("evaluate") + 1])
    assert evaluate_argv[evaluate_argv.index("--out") + 1] == str(evaluated / "eval")
    assert evaluate_argv[-1] == "--fast"
    # the shared oracle reached every evaluated run, and the cache kept what they made
    for cell in (resume, evaluate_only, new):
        run_dir = cell_folders.evaluated_run(tmp_path / cell.name)
        assert (run_dir / "eval" / "oracle-toy.safetensors").read_bytes() == b"weights"
    assert (tmp_path / ".oracle" / "oracle-toy.json").exists()
    assert json.loads((tmp_path / new.name / "cell.json").read_text())["name"] == new.name

    # a second pass finds everything done and runs nothing
    again = FakeRunner()
    outcomes = bring_to_done(toy_cells, tmp_path, again)
    assert [o.status for o in outcomes] == ["skipped"] * 4 and again.calls == []


def test_failed_cells_are_reported_with_their_last_error_line(tmp_path, toy_cells):
    outcomes = bring_to_done(toy_cells, tmp_path, FakeRunner(fail_on="rho10"))
    assert [o.status for o in outcomes] == ["done", "done", "failed", "failed"]
    assert "training failed (exit 2): error: something broke" in outcomes[2].message
    assert "train.log" in outcomes[2].message
    summary = command.failure_summary(outcomes)
    assert summary.startswith("2 of 4 cells failed; first: toy-vq-actions-rho10-s0")


def test_a_stopped_command_gets_one_sigint_and_saves_its_work(tmp_path):
    """The engine's stop flag reaches a running command as SIGINT (training checkpoints on it)."""
    script = (
        "import signal, sys, time\n"
        "def stop(*_):\n"
        "    open(sys.argv[1], 'w').write('checkpointed'); sys.exit(130)\n"
        "signal.signal(signal.SIGINT, stop)\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    marker = tmp_path / "saved"
    log = tmp_path / "cmd.log"
    asked = []

    def should_stop() -> bool:
        asked.append(1)
        # a line of its own: the log's header echoes the command, whose text holds "started"
        return log.exists() and "started" in log.read_text().splitlines()

    runner = cell_folders.SubprocessRunner(should_stop, poll_s=0.1, grace_s=20)
    # as in a Ray worker, which runs tasks with SIGINT blocked (children inherit the mask)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        code = runner([sys.executable, "-c", script, str(marker)], dict(os.environ), log)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    assert code == 130 and marker.read_text() == "checkpointed" and asked
    assert runner([sys.executable, "-c", "pass"], dict(os.environ), log) == 130  # stopped


def test_the_same_settings_in_another_order_reuse_the_folder(tmp_path, toy_cells):
    cell = toy_cells[0]
    cell_folders.write_cell_file(cell, tmp_path / cell.name)
    reordered = dataclasses.replace(cell, overrides=tuple(reversed(cell.overrides)))
    assert reordered != cell and cell_folders.same_run(cell, reordered)
    cell_folders.write_cell_file(reordered, tmp_path / cell.name)  # accepted
    changed = dataclasses.replace(cell, overrides=(*cell.overrides, "train.lr=0.5"))
    assert not cell_folders.same_run(cell, changed)


def test_a_variant_leads_the_cell_name_and_survives_its_cell_file(tmp_path, toy_cells):
    cell = toy_cells[0]
    variant = dataclasses.replace(cell, variant="wsd")
    assert variant.name == f"wsd-{cell.name}" and "variant=wsd" in variant.tags("study")
    engine.check_cells([cell, variant], tmp_path)  # two folders, one sweep
    cell_folders.write_cell_file(variant, tmp_path / variant.name)
    saved = json.loads((tmp_path / variant.name / "cell.json").read_text())
    assert Cell.from_dict(saved) == variant
    # a cell file written before variants existed reads as no variant
    del saved["variant"]
    assert Cell.from_dict(saved).variant == "" and Cell.from_dict(saved).name == cell.name


def test_a_folder_of_other_settings_is_refused_before_anything_runs(tmp_path, toy_cells):
    cell = toy_cells[0]
    cell_folders.write_cell_file(cell, tmp_path / cell.name)
    other = planner.plan(
        "smoke", datasets=["toy"], latents=["vq"], rhos=[1], overrides=["train.stage1_steps=5"]
    )[0]
    assert other.name == cell.name
    with pytest.raises(SweepError, match="other settings \\(overrides differ\\)"):
        engine.check_cells([other], tmp_path)
    with pytest.raises(SweepError, match="share a name"):
        engine.check_cells([cell, cell], tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(SweepError, match="other settings"):
        engine.run_sweep([other], tmp_path, echo=lambda _: None)  # before Ray starts
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_one_sweep_per_folder(tmp_path):
    with engine._SweepLock(tmp_path):
        second = engine._SweepLock(tmp_path)
        with pytest.raises(SweepError, match="another sweep is running"):
            second.__enter__()
    with engine._SweepLock(tmp_path):  # released
        pass


# ---- aggregation on fabricated results ----------------------------------------------------------
TOY_ACTIONS = ["position+", "position-", "hue+", "hue-"]


def fabricate(
    sweep: Path, cell: Cell, per_action: dict[str, float], balanced: float, **kwargs
) -> None:
    cell_folders.write_cell_file(cell, sweep / cell.name)
    run_dir = sweep / cell.name / "run-1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(config_toml(resolved(cell)))
    fake_metrics(run_dir, TOY_ACTIONS, per_action, balanced, **kwargs)


def test_aggregation_means_stds_rarest_action_and_files(tmp_path):
    cells = planner.plan(
        "smoke",
        datasets=["toy"],
        latents=["vq", "gaussian"],
        modes=["actions", "held_out"],
        rhos=[1, 10],
        ks=[2],
        seeds=[0, 1, 2],
    )
    by_name = {c.name: c for c in cells}
    balanced = {0: 0.8, 1: 0.9, 2: 1.0}
    for seed in range(3):
        for latent in ("vq", "gaussian"):
            for level in ("rho1", "rho10"):
                per_action = {"position+": 1.0, "position-": 0.9, "hue+": 0.8, "hue-": 0.1 * seed}
                fabricate(
                    tmp_path,
                    by_name[f"toy-{latent}-actions-{level}-s{seed}"],
                    per_action,
                    balanced[seed] if latent == "vq" else 0.5,
                    psnr=20.0 + seed,
                    test_pairs=3 + seed,
                )
            held = {"position+": 1.0, "position-": 1.0, "hue+": 0.25, "hue-": 1.0}
            fabricate(tmp_path, by_name[f"toy-{latent}-held_out-k2-s{seed}"], held, 0.7)
    (tmp_path / "unfinished" / "run-1").mkdir(parents=True)  # no cell.json: not a cell

    rows = results.collect(tmp_path)
    assert len(rows) == 18
    vq10 = [r for r in rows if r.cell.startswith("toy-vq-actions-rho10")]
    assert {r.rarest_action for r in vq10} == {"hue-"}  # the last action is the rarest
    assert sorted(r.rarest_accuracy for r in vq10) == pytest.approx([0.0, 0.1, 0.2])
    assert sorted(r.rarest_test_pairs for r in vq10) == [3, 4, 5]
    assert sorted(r.rarest_atomicity for r in vq10) == pytest.approx([0.0, 0.05, 0.1])
    assert [r.common_atomicity for r in vq10] == pytest.approx([(1.0 + 0.9 + 0.8) / 6] * 3)
    freqs = vq10[0].frequencies
    assert freqs["position+"] / freqs["hue-"] == pytest.approx(10.0)
    assert vq10[0].rarest_frequency == pytest.approx(min(freqs.values()))
    uniform = next(r for r in rows if r.cell == "toy-vq-actions-rho1-s0")
    assert uniform.rarest_action == "hue-"  # a tie: the action that imbalance makes rarest
    held = next(r for r in rows if r.cell == "toy-vq-held_out-k2-s0")
    assert held.rarest_action == "hue+" and held.rarest_accuracy == 0.25

    summaries = {(s.latent, s.mode, s.rho_or_k): s for s in tables.summarise(rows)}
    s = summaries[("vq", "actions", 10.0)]
    assert s.seeds == 3
    assert s.mean["balanced_accuracy"] == pytest.approx(0.9)
    assert s.std["balanced_accuracy"] == pytest.approx(0.1)
    assert s.mean["counterfactual_psnr"] == pytest.approx(21.0)
    assert s.std["classifier_balanced_accuracy"] == pytest.approx(0.0)
    assert summaries[("gaussian", "actions", 10.0)].mean["balanced_accuracy"] == pytest.approx(0.5)

    table = tables.markdown_table(rows)
    lines = table.splitlines()
    assert len(lines) == 2 + 6
    line = next(x for x in lines if x.startswith("| toy | vq | actions | rho=10 |"))
    assert "| 3 | hue- (4) | 0.900 ± 0.100 | 0.100 ± 0.100 |" in line
    assert "21.0 ± 1.0" in line
    assert lines.index(line) > lines.index(
        next(x for x in lines if "| vq | actions | rho=1 |" in x)
    )

    files = tables.write_results(tmp_path)
    assert (tmp_path / "results.md").read_text() == table
    with open(files["csv"]) as f:
        records = list(csv.DictReader(f))
    assert len(records) == 18 and float(records[0]["balanced_accuracy"]) > 0
    with open(files["per_action_csv"]) as f:
        assert len(list(csv.DictReader(f))) == 18 * 4
    names = sorted(p.name for p in files["figures"])
    assert names == [
        "accuracy_vs_rho-toy-actions.png",
        "held_out_vs_k-toy.png",
        "per_action_vs_frequency-toy.png",
        "rarest_vs_rho-toy.png",
    ]
    assert all(p.stat().st_size > 1000 for p in files["figures"])


def test_rarest_action_follows_action_order(tmp_path):
    cell = planner.plan(
        "smoke",
        datasets=["toy"],
        latents=["vq"],
        rhos=[10],
        overrides=["transitions.action_order=[3, 2, 1, 0]"],
    )[0]
    fabricate(tmp_path, cell, {"position+": 0.3, "position-": 1.0, "hue+": 1.0, "hue-": 1.0}, 0.8)
    (row,) = results.collect(tmp_path)
    assert row.rarest_action == "position+" and row.rarest_accuracy == 0.3


def load_task(name: str):
    """A task script as a module (tasks/ is a folder of scripts, not a package)."""
    path = Path(__file__).resolve().parent.parent / "tasks" / f"{name}.py"
    found = importlib.util.spec_from_file_location(f"task_{name}", path)
    module = importlib.util.module_from_spec(found)
    found.loader.exec_module(module)
    return module


def test_task_cli_bad_input_is_one_error_line(capsys):
    main = load_task("imbalance_ablation").main
    assert main(["--size", "big"]) == 2
    assert (
        capsys.readouterr().err.strip() == "error: unknown size 'big'; choose from smoke, cpu, full"
    )
    assert main(["--jobs", "two"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: argument --jobs")


def test_vqcausal_ablate_is_the_task(capsys, tmp_path):
    from vqcausal.cli import main as cli

    out = tmp_path / "sweep"
    assert cli(["ablate", "--size", "smoke", "--dry-run", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "shapes3d" in printed and "vq" in printed
    assert cli(["ablate", "--size", "enormous"]) == 2


def test_each_cell_run_is_tagged_for_tracker_dashboards(tmp_path):
    (cell,) = planner.plan("smoke", datasets=["toy"], latents=["vq"], rhos=[10])
    argv = cell_folders.train_command(cell, tmp_path / "ablation" / cell.name, sys.executable)
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    config = load_config(cell.config_path, sets)
    assert config.tags == [
        "sweep=ablation",
        "dataset=toy",
        "latent=vq",
        "mode=actions",
        "rho=10",
        "seed=0",
    ]


# ---- shared stage 1 -----------------------------------------------------------------------------
def test_cpu_cells_of_one_latent_and_seed_share_a_stage1_that_differs_only_in_stage2_keys():
    from vqcausal.train.shared_stage1 import STAGE2_ONLY, flat_config

    cells = planner.plan("cpu", latents=["vq", "gaussian"], seeds=[0, 1])
    for cell in cells:
        stage1 = cell.stage1_cell()
        assert stage1 is not None and stage1.name == f"shapes3d-{cell.latent}-stage1-s{cell.seed}"
        mine, theirs = (flat_config(resolved(c)) for c in (cell, stage1))
        differ = {k for k in mine if mine[k] != theirs[k]}
        assert differ <= STAGE2_ONLY, differ
        assert theirs["train.stage1_steps"] == 6000 and theirs["transitions.imbalance"] == 1.0
    assert len({c.stage1_cell() for c in cells}) == 4  # (vq, gaussian) x (seed 0, 1)
    # a sweep of a stage-2 lever shares the plain sweep's stage 1; a stage-1 setting does not
    lever = planner.plan("cpu", latents=["vq"], seeds=[0], overrides=["train.action_focus=2.0"])
    assert lever[0].stage1_cell() == cells[0].stage1_cell()
    assert "train.action_focus=2.0" in lever[0].overrides
    wider = planner.plan("cpu", latents=["vq"], seeds=[0], overrides=["train.lr=0.001"])
    assert "train.lr=0.001" in wider[0].stage1_cell().overrides
    # values skews the images stage 1 learns from: those cells train their own
    values = planner.plan("cpu", latents=["vq"], modes=["values"], rhos=[10], seeds=[0])
    assert values[0].stage1_cell() is None
    assert all(c.stage1_cell() is None for c in planner.plan("full", seeds=[0]))
    # the cell file keeps it; one written before shared stage 1 existed reads as none
    saved = cells[0].to_dict()
    assert Cell.from_dict(saved) == cells[0]
    del saved["stage1_overrides"]
    assert Cell.from_dict(saved).stage1_cell() is None


@pytest.fixture
def shared_toy_cells(monkeypatch) -> list[Cell]:
    shared = dataclasses.replace(spec.SIZES["smoke"], share_stage1=True)
    monkeypatch.setitem(spec.SIZES, "smoke", shared)
    return planner.plan("smoke", datasets=["toy"], latents=["vq", "gaussian"], rhos=[1, 10])


def test_a_shared_stage1_is_trained_once_and_copied_into_each_cell(tmp_path, shared_toy_cells):
    runner = FakeRunner()
    outcomes = bring_to_done(shared_toy_cells, tmp_path, runner)
    assert [o.status for o in outcomes] == ["done"] * 4
    for latent in ("vq", "gaussian"):
        stage1 = Cell.from_dict(
            json.loads((tmp_path / f"toy-{latent}-stage1-s0/cell.json").read_text())
        )
        assert runner.commands(stage1) == ["train"]  # once for both of its cells
        (argv,) = [a for a, _ in runner.calls if stage1.name in " ".join(a)]
        assert argv[-2:] == ["--stage", "1"] and "transitions.imbalance=10.0" not in argv
    for cell in shared_toy_cells:
        assert runner.commands(cell) == ["train", "evaluate"]
        argv = next(a for a, _ in runner.calls if "--config" in a and cell.name in " ".join(a))
        copy = Path(argv[argv.index("--stage1-from") + 1])
        assert copy == tmp_path / cell.name / cell_folders.STAGE1_COPY
        assert (copy / "checkpoints" / "latest").read_text() == "step-0000010"
        assert (copy / "checkpoints" / "step-0000010" / "meta.json").is_file()
    # the table has the four cells, not the stage-1 runs
    for cell in shared_toy_cells:
        run_dir = cell_folders.evaluated_run(tmp_path / cell.name)
        (run_dir / "config.toml").write_text(config_toml(resolved(cell)))
    assert sorted(r.latent for r in results.collect(tmp_path)) == ["gaussian"] * 2 + ["vq"] * 2
    again = FakeRunner()
    assert [o.status for o in bring_to_done(shared_toy_cells, tmp_path, again)] == ["skipped"] * 4
    assert again.calls == []


def test_an_unfinished_shared_stage1_is_resumed_and_a_failed_one_fails_its_cells(
    tmp_path, shared_toy_cells
):
    vq_rho1 = shared_toy_cells[0]
    stage1 = vq_rho1.stage1_cell()
    fake_checkpoint(tmp_path / stage1.name / "run-1", 5, finished=False)
    runner = FakeRunner()
    assert cell_folders.run_cell(vq_rho1, tmp_path, {}, runner).status == "done"
    assert runner.commands(stage1) == ["resume"]
    resumed = next(a for a, _ in runner.calls if "--resume" in a)
    assert resumed[-2:] == ["--stage", "1"]

    failing = FakeRunner(fail_on="stage1")
    outcome = cell_folders.run_cell(shared_toy_cells[1], tmp_path / "b", {}, failing)
    assert outcome.status == "failed"
    assert outcome.message.startswith("shared stage 1 toy-gaussian-stage1-s0 failed (exit 2)")
    assert "error: something broke" in outcome.message
    assert runner.commands(shared_toy_cells[1]) == []


def test_each_shared_stage1_starts_before_the_cells_that_wait_for_it():
    cells = planner.plan("cpu", latents=["vq"], seeds=[0, 1], rhos=[1, 100])
    names = [c.name for c in engine.stage1_first(cells)]
    assert names[:2] == ["shapes3d-vq-actions-rho1-s0", "shapes3d-vq-actions-rho1-s1"]
    assert sorted(names) == sorted(c.name for c in cells)
    plain = planner.plan("smoke")  # nothing shared: the plan's order
    assert engine.stage1_first(plain) == plain
