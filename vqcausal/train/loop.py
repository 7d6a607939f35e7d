"""The two-stage training loop, driven by accelerate.

Stage 1 trains what the model's ``stage1_objective`` holds (for ``vq``: encoder, quantizer,
decoder) on images. Stage 2 freezes those, encodes a fixed set of training pairs once (the
latent cache) and trains the model's ``stage2_objective`` (for ``vq``: the causal transition
and the retrieval classifier) on latents only. One global step counter spans both stages, so a run
resumes exactly where it stopped, in either stage.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import save_file
from torch import nn

from vqcausal.atomic import atomic_path, write_json_atomic, write_text_atomic
from vqcausal.config import Config, to_dict
from vqcausal.data.source import ConceptScaler, GroundTruthSource, to_float
from vqcausal.data.transitions import TransitionSampler
from vqcausal.errors import VQCausalError
from vqcausal.models.base import PAIR_LOSS, CausalImageModel
from vqcausal.progress import Progress
from vqcausal.runs import (
    CACHE_KEYS,
    LATENT_CACHE,
    Checkpoint,
    metric_records,
    read_latent_cache,
    resume_hint,
)
from vqcausal.schedule import lr_factor
from vqcausal.train.batches import StepBatches, data_workers, loader
from vqcausal.train.checkpoint import load_train_state, save_checkpoint
from vqcausal.train.divergence import best_recon, divergence
from vqcausal.train.evaluation import EvalSet, held_out_metrics, save_figures
from vqcausal.train.focus import ActionFocus
from vqcausal.train.signals import deferred_signals
from vqcausal.train.stage2_pairs import encode_transitions, pair_weights, with_reversed_pairs
from vqcausal.train.trackers import flatten, log_images, log_summary


class TrainingError(VQCausalError):
    """Training cannot go on (non-finite loss, ...); the last good checkpoint is kept."""


class Interrupted(VQCausalError):
    """Ctrl-C: a checkpoint was saved and the run can be resumed."""


def clip_groups(module: nn.Module, apart: list[list[nn.Parameter]]) -> list[list[nn.Parameter]]:
    """``module``'s trained parameters in groups clipped each by its own gradient norm: the
    sets ``apart`` (those of them ``module`` trains) and, first, everything else."""
    params = [p for p in module.parameters() if p.requires_grad]
    trained = {id(p) for p in params}
    groups = [[p for p in group if id(p) in trained] for group in apart]
    groups = [group for group in groups if group]
    taken = {id(p) for group in groups for p in group}
    return [[p for p in params if id(p) not in taken], *groups]


class Trainer:
    """Owns the model, data, run folder and the loop of both stages."""

    def __init__(
        self,
        config: Config,
        source: GroundTruthSource,
        model: CausalImageModel,
        run_dir: Path,
        accelerator: Accelerator,
        resume: Checkpoint | None = None,
    ) -> None:
        self.config = config
        self.train = config.train
        self.source = source
        self.sampler = TransitionSampler(source, config.transitions)
        self.concepts = ConceptScaler(source, seed=config.seed)
        self.model = model.to(accelerator.device)
        self.run_dir = run_dir
        self.accelerator = accelerator
        self.step = 0 if resume is None else resume.step
        self.state = None if resume is None else load_train_state(resume)
        self.rank = accelerator.process_index
        self.generator = torch.Generator().manual_seed(config.seed * 1000 + self.rank)
        torch.manual_seed(config.seed * 1000 + self.rank)
        local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        self.workers = data_workers(self.train.data_workers, accelerator.device, local)
        self.data_wait = 0.0  # seconds the loop waited for rendered images since the last log
        self.last_eval: tuple[int, int, dict] | None = None  # (step, stage, metrics)
        self.eval_set = EvalSet.draw(self.sampler, self.train.eval_pairs, config.seed)
        self.metrics_path = run_dir / "metrics.jsonl"
        if resume is not None and accelerator.is_main_process:
            self.truncate_metrics(resume.step)
        self.last_checkpoint: Path | None = None if resume is None else resume.path
        self.checkpoint_step = None if resume is None else resume.step
        self.last_loss: float = float("nan")
        self.best_recon = best_recon(self.metrics_path) if resume is not None else None

    # ---- bookkeeping ------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        return self.train.stage1_steps + self.train.stage2_steps

    def stage_of(self, step: int) -> int:
        return 1 if step < self.train.stage1_steps else 2

    @property
    def last_stage(self) -> int:
        """The stage of the last step taken (stage 1 before any)."""
        return self.stage_of(max(self.step - 1, 0))

    def truncate_metrics(self, step: int) -> None:
        """Drop log lines after the checkpoint a run resumes from (a crash or Ctrl-C leaves
        records of steps that will be trained again) and a half-written last line."""
        if not self.metrics_path.exists():
            return
        kept = [line for line, r in metric_records(self.metrics_path) if r["step"] <= step]
        write_text_atomic(self.metrics_path, "".join(f"{line}\n" for line in kept))

    def log(self, record: dict) -> None:
        """One ``metrics.jsonl`` record, and the same scalars to the trackers at its step."""
        if self.accelerator.is_main_process:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if self.accelerator.trackers:
            scalars = flatten({k: v for k, v in record.items() if k != "step"})
            self.accelerator.log(scalars, step=record["step"])

    def meta(self, finished: bool) -> dict:
        return {
            "step": self.step,
            "stage": self.last_stage,
            "finished": finished,
            "stage1_steps": self.train.stage1_steps,
            "stage2_steps": self.train.stage2_steps,
            "model_args": self.model.args.to_dict(),
            "config": to_dict(self.config),
            "data": self.source.describe(),
            "last_loss": self.last_loss if math.isfinite(self.last_loss) else None,
            "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }

    def checkpoint(self, optimizer: torch.optim.Optimizer | None, finished: bool = False) -> None:
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            state = {
                "torch_rng": torch.get_rng_state(),
                "data_rng": self.generator.get_state(),
                "stage": torch.tensor(self.last_stage),
            }
            if optimizer is not None:
                state["optimizer"] = optimizer.state_dict()
            self.last_checkpoint = save_checkpoint(
                self.run_dir, self.model, self.meta(finished), state, self.train.keep_checkpoints
            )
        self.checkpoint_step = self.step
        self.accelerator.wait_for_everyone()

    def restore_state(self, optimizer: torch.optim.Optimizer, stage: int) -> None:
        """Resume: RNG state always, optimizer state if the checkpoint was taken in this stage.

        Restoring both makes a resumed run follow the uninterrupted one bit for bit on CPU.
        """
        if self.state is None:
            return
        if self.accelerator.num_processes == 1:
            torch.set_rng_state(self.state["torch_rng"])
            self.generator.set_state(self.state["data_rng"])
        if "optimizer" in self.state and int(self.state["stage"]) == stage:
            optimizer.load_state_dict(self.state["optimizer"])
        self.state = None

    def prepare(
        self, objective: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """accelerate's wrapping (devices, DDP, autocast), then torch.compile if asked for.
        The compiled module shares its parameters with ``self.model``, which checkpoints and
        evaluation keep using uncompiled."""
        if self.train.channels_last:
            self.model.to(memory_format=torch.channels_last)
        objective, optimizer = self.accelerator.prepare(objective, optimizer)
        if self.train.compile != "no":
            objective = torch.compile(objective, backend=self.train.compile)
        return objective, optimizer

    def train_mode(self, stage: int) -> None:
        """Train mode, with stage-1 modules kept in eval mode (frozen) during stage 2."""
        self.model.train()
        if stage == 2:  # frozen: EMA codebooks and batch-norm statistics stay put
            for module in self.model.stage1_modules():
                module.eval()

    # ---- stages -------------------------------------------------------------------------
    def run(self, stages: tuple[int, ...] = (1, 2)) -> None:
        if 1 in stages and self.step < self.train.stage1_steps:
            self.stage1()
        if 2 in stages and self.step < self.total_steps:
            if self.step < self.train.stage1_steps:
                raise TrainingError(
                    f"stage 2 needs a finished stage 1 (at step {self.step} of "
                    f"{self.train.stage1_steps}); run --stage 1 or --stage all first"
                )
            self.stage2()
        done = self.step >= self.total_steps
        if self.checkpoint_step != self.step:  # e.g. nothing was left to train
            self.checkpoint(None, finished=done)
        if self.accelerator.is_main_process:
            self.final_evaluation()

    def stage1(self) -> None:
        model = self.model
        objective = model.stage1_objective()
        params = [p for p in objective.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.train.lr)
        self.restore_state(optimizer, 1)
        objective, optimizer = self.prepare(objective, optimizer)
        device = self.accelerator.device
        half = max(self.train.batch_size // 2, 1)
        stream = StepBatches(
            self.sampler, half, self.step, self.train.stage1_steps, self.config.seed, self.rank
        )
        batches = iter(loader(stream, self.workers, pin_memory=device.type == "cuda"))

        def step_fn() -> dict[str, float]:
            waited = time.perf_counter()
            rendered = next(batches)
            self.data_wait += time.perf_counter() - waited
            labels = self.concepts.normalise(rendered["values"])
            x = to_float(rendered["x"].to(device, non_blocking=True))
            if self.train.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            batch = {
                "x": x,
                "labels": labels.to(device, non_blocking=True),
                "actions": rendered["actions"].to(device, non_blocking=True),
                "step": self.step,
                "stats": (self.step + 1) % self.train.log_every == 0,  # the step logged next
            }
            with self.accelerator.autocast():
                terms, stats = objective(batch)
            self._update(terms["total"], optimizer, objective)
            model.after_step(self.step)
            return {k: v.item() for k, v in terms.items()} | stats

        self.train_mode(1)
        self._loop(1, self.train.stage1_steps, step_fn, optimizer, self.train.lr)

    def stage2(self) -> None:
        model = self.model
        for module in model.stage1_modules():
            module.requires_grad_(False)
        cache = self.latent_cache()
        model.before_stage2(cache)
        if self.train.reverse_pairs:
            cache = with_reversed_pairs(cache, self.source.space.inverse_action)
        objective = model.stage2_objective()
        optimizer = torch.optim.AdamW(objective.parameters(), lr=self.train.stage2_lr)
        self.restore_state(optimizer, 2)
        objective, optimizer = self.prepare(objective, optimizer)
        device = self.accelerator.device

        weights = pair_weights(cache["actions"], self.train.balance_actions)
        actions = torch.arange(self.model.args.num_actions)
        by_factor = self.train.focus_by == "factor"
        partners = self.source.space.inverse_action(actions) if by_factor else None
        focus = ActionFocus(
            len(actions), self.train.action_focus, partners=partners, floor=self.train.focus_floor
        )

        def step_fn() -> dict[str, float]:
            size = self.train.stage2_batch_size
            draw = weights * focus.factors()[cache["actions"]] if focus.strength else weights
            idx = torch.multinomial(draw, size, replacement=True, generator=self.generator)
            batch = {k: v[idx].to(device) for k, v in cache.items()}
            with self.accelerator.autocast():
                terms, stats = objective(batch)
            pair_loss = terms.pop(PAIR_LOSS)
            self._update(terms["total"], optimizer, objective)
            if focus.strength:
                focus.update(batch["actions"], pair_loss)
                factors = focus.factors()
                stats = stats | {
                    "focus_max": factors.max().item(),
                    "focus_min": factors.min().item(),
                }
            return {k: v.item() for k, v in terms.items()} | stats

        self.train_mode(2)
        self._loop(2, self.total_steps, step_fn, optimizer, self.train.stage2_lr)

    def latent_cache(self) -> dict[str, torch.Tensor]:
        """Training pairs encoded once by the frozen stage-1 model; kept in the run folder."""
        cache = read_latent_cache(self.run_dir)
        if cache is not None:
            return cache
        path = self.run_dir / LATENT_CACHE
        generator = torch.Generator().manual_seed(self.config.seed + 7919)
        t = self.sampler.sample(self.train.cache_pairs, "train", generator)
        was_training = self.model.training
        self.model.eval()
        latents, latents_next = encode_transitions(
            self.model,
            self.sampler,
            t,
            workers=self.workers,
            show=self.accelerator.is_main_process,
        )
        self.model.train(was_training)
        cache = dict(zip(CACHE_KEYS, (latents, t.actions, latents_next), strict=True))
        if self.accelerator.is_main_process:
            path.parent.mkdir(exist_ok=True)
            with atomic_path(path) as tmp:
                save_file({k: v.contiguous() for k, v in cache.items()}, str(tmp))
        return cache

    def _update(
        self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, module: nn.Module
    ) -> None:
        if not torch.isfinite(loss.detach()):
            where = self.last_checkpoint or "none yet"
            raise TrainingError(
                f"non-finite loss at step {self.step}; stopped without saving "
                f"(last good checkpoint: {where})"
            )
        optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        if self.train.grad_clip > 0:
            # accelerate's clip_grad_norm_ unscales fp16 gradients on every call, which AMP
            # allows once per step: unscale once, then clip each group by its own norm
            self.accelerator.unscale_gradients(optimizer)
            for group in clip_groups(module, self.model.separately_clipped()):
                torch.nn.utils.clip_grad_norm_(group, self.train.grad_clip)
        optimizer.step()

    def _loop(
        self,
        stage: int,
        end: int,
        step_fn: Callable[[], dict[str, float]],
        optimizer: torch.optim.Optimizer,
        base_lr: float,
    ) -> None:
        train = self.train
        first = 0 if stage == 1 else train.stage1_steps
        start_time = log_time = time.perf_counter()
        start_step = self.step
        self.data_wait = 0.0
        disable = not self.accelerator.is_main_process
        with Progress(f"stage {stage}", end, completed=self.step, disable=disable) as progress:
            try:
                while self.step < end:
                    factor = lr_factor(
                        train.lr_schedule,
                        self.step,
                        first,
                        end,
                        train.warmup_steps,
                        train.lr_final,
                        train.lr_decay_fraction,
                    )
                    lr = base_lr * factor
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    # a step's weights, counter and log record move together: a signal waits
                    # for all three, so a checkpoint never holds a step unlogged or unnumbered
                    with deferred_signals():
                        terms = step_fn()
                        self.step += 1
                        if self.step % self.train.log_every == 0 or self.step == end:
                            now = time.perf_counter()
                            rate = (self.step - start_step) / (now - start_time)
                            # share of the wall time since the last log spent waiting for data:
                            # on an accelerator, the time it sits idle for want of images
                            data_wait = self.data_wait / max(now - log_time, 1e-9)
                            self.data_wait, log_time = 0.0, now
                            record = {"stage": stage, "step": self.step, "lr": lr} | terms
                            self.log(record | {"steps_per_s": rate, "data_wait": data_wait})
                    self.last_loss = terms["total"]
                    progress.advance(loss=terms["total"])
                    if self.step % self.train.eval_every == 0 and self.accelerator.is_main_process:
                        self.evaluate_now(stage)
                    if self.step % self.train.checkpoint_every == 0 or self.step == end:
                        self.checkpoint(optimizer, finished=self.step >= self.total_steps)
            except KeyboardInterrupt:
                self.checkpoint(optimizer, finished=False)
                raise Interrupted(
                    f"interrupted at step {self.step}; checkpoint saved; "
                    + resume_hint(self.run_dir)
                ) from None

    # ---- evaluation -----------------------------------------------------------------------
    def evaluate_now(self, stage: int) -> dict:
        was_training = self.model.training
        self.model.eval()
        metrics = held_out_metrics(self.model, self.eval_set, with_transition=stage == 2)
        pngs = save_figures(
            self.model, self.eval_set, self.run_dir / "figures", self.step, stage == 2
        )
        log_images(self.accelerator, pngs, self.step)
        if was_training:
            self.train_mode(stage)
        self.log({"stage": stage, "step": self.step, "eval": metrics})
        self.last_eval = (self.step, stage, metrics)
        psnr = metrics.get("recon_psnr")
        if stage == 1 and isinstance(psnr, float) and math.isfinite(psnr):
            warning = divergence(self.best_recon, psnr, self.step)
            if warning is not None:
                sys.stderr.write(f"warning: {warning}\n")
            self.best_recon = max(psnr, self.best_recon or psnr)
        return metrics

    def final_evaluation(self) -> None:
        stage = self.last_stage
        if self.last_eval is not None and self.last_eval[:2] == (self.step, stage):
            metrics = self.last_eval[2]  # the last step was an evaluation step: same numbers
        else:
            metrics = self.evaluate_now(stage)
        summary = {"step": self.step, "finished": self.step >= self.total_steps, **metrics}
        write_json_atomic(self.run_dir / "summary.json", summary)
        log_summary(self.accelerator, metrics, self.step)
        shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
        if not math.isnan(self.last_loss):
            shown["last_loss"] = round(self.last_loss, 4)
        print(f"evaluation at step {self.step}: {shown}")
