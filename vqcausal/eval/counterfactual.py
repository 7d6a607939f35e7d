"""The ``counterfactual`` section of ``vqcausal evaluate``: how atomic interventions are, and why.

A counterfactual is decode(step(encode(x), a)); it is *atomic* when a factor oracle reads from it
exactly the factors of the renderer's true x'. When it is not, the loss can sit in either stage,
so the section splits it:

* **autoencoder ceiling**: the oracle on decode(encode(x')), the counterfactual a perfect
  transition would give with this autoencoder. No transition can be more atomic than this.
* **transition on codes** (discrete latents): accuracy on the variables that really change
  between x and x' and on those that do not, and precision / recall of "this variable changes"
  (:func:`~vqcausal.eval.metrics.code_change_report`).
* per action: atomicity, ``intended_moved``, ``others_kept``, the ceiling and the code figures;
  per factor: how often the oracle reads it right from the counterfactual, from
  decode(encode(x')) and from the true x'.
* **fit** (discrete latents, when the run folder keeps its stage-2 cache): the same code figures
  on the cached training pairs stage 2 learned from. Equal to the held-out ones: the
  transition underfits (more steps or capacity help); far above them: it memorised the cache.
* **chained steps**: the same action applied k = 1 .. ``chain_steps`` times to the codes,
  judged against the renderer's factors after k steps (pairs whose chain would step off a
  bounded factor's grid are left out of that k), since users chain actions and errors compound.
"""

from __future__ import annotations

from typing import Any

import torch

from vqcausal.data.factors import FactorSpace
from vqcausal.data.source import to_float
from vqcausal.data.transitions import Transitions
from vqcausal.eval.metrics import code_change_report, code_change_summary, psnr, ssim
from vqcausal.eval.oracle import atomicity_report
from vqcausal.eval.pairs import PairLatents, chunks, model_device
from vqcausal.models.base import CausalImageModel

CHAIN_STEPS = 3
RELIABLE_ORACLE = 0.9  # the oracle must read this fraction of the true x' exactly
FIGURE_PAIRS = 2  # held-out pairs per action in the figure
DIFFERENCE_GAIN = 4.0  # the difference map shows 4 |cf - x'|, so small errors are visible


@torch.no_grad()
def step_all(model: CausalImageModel, latents: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``model.step_latent`` over every row in chunks; CPU in, CPU out."""
    device = model_device(model)
    parts = [
        model.step_latent(latents[p].to(device), actions[p].to(device)).cpu()
        for p in chunks(len(actions))
    ]
    return torch.cat(parts)


def training_fit(model: CausalImageModel, cache: dict[str, torch.Tensor], pairs: int) -> dict:
    """Code figures (:func:`~vqcausal.eval.metrics.code_change_summary`) of the transition on
    the first ``pairs`` cached training pairs (``latents``, ``actions``, ``latents_next``)."""
    latents, actions = cache["latents"][:pairs], cache["actions"][:pairs]
    predicted = step_all(model, latents, actions)
    return code_change_summary(latents, cache["latents_next"][:pairs], predicted)


@torch.no_grad()
def read_factors(
    model: CausalImageModel, oracle: torch.nn.Module, latents: torch.Tensor
) -> torch.Tensor:
    """The factors the oracle reads from decode(latents): (B, K) long on the CPU."""
    device, oracle_device = model_device(model), model_device(oracle)
    parts = [
        oracle.predict(model.decode_latent(latents[p].to(device)).clamp(0, 1).to(oracle_device))
        for p in chunks(len(latents))
    ]
    return torch.cat(parts).cpu()


@torch.no_grad()
def read_images(oracle: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The factors the oracle reads from uint8 images: (B, K) long on the CPU."""
    device = model_device(oracle)
    parts = [oracle.predict(to_float(images[p]).to(device)) for p in chunks(len(images))]
    return torch.cat(parts).cpu()


@torch.no_grad()
def image_quality(
    model: CausalImageModel, latents: torch.Tensor, targets: torch.Tensor
) -> tuple[float, float]:
    """Mean PSNR and SSIM of decode(latents) against uint8 target images."""
    device = model_device(model)
    psnrs, ssims = [], []
    for p in chunks(len(latents)):
        image = model.decode_latent(latents[p].to(device)).clamp(0, 1)
        target = to_float(targets[p]).to(device)
        psnrs.append(psnr(image, target).cpu())
        ssims.append(ssim(image, target).cpu())
    return torch.cat(psnrs).mean().item(), torch.cat(ssims).mean().item()


def chained_atomicity(
    model: CausalImageModel,
    oracle: torch.nn.Module,
    latents: torch.Tensor,
    transitions: Transitions,
    space: FactorSpace,
    names: list[str],
    steps: int = CHAIN_STEPS,
    first: torch.Tensor | None = None,
) -> dict[str, dict]:
    """Atomicity after applying each pair's action k = 1 .. ``steps`` times to x's latents.

    The truth after k steps comes from the factor space (the renderer's grid), so x'' and x'''
    need no rendering; a row drops out from the first k whose step leaves a bounded factor's
    grid; the chain ends where no row is left (a grid too small for k steps: no figure, rather
    than an atomicity of nothing). ``first``: the one-step prediction if already computed."""
    values, actions = transitions.values.cpu(), transitions.actions.cpu()
    valid = torch.ones(len(actions), dtype=torch.bool)
    current = latents
    out: dict[str, dict] = {}
    for k in range(1, steps + 1):
        values, ok = space.apply(values, actions)
        valid &= ok
        if not valid.any():
            break
        current = first if k == 1 and first is not None else step_all(model, current, actions)
        read = read_factors(model, oracle, current[valid])
        report = atomicity_report(read, values[valid], actions[valid], names)
        out[str(k)] = {
            "pairs": int(valid.sum()),
            "atomicity": report["atomicity"],
            "intended_moved": report["intended_moved"],
            "others_kept": report["others_kept"],
            "per_action": report["per_action"],
        }
    return out


def _per_action(atomic: dict, ceiling: dict, codes: dict | None, names: list[str]) -> dict:
    """One row per action: pairs, atomicity, moved/kept, the ceiling, the code figures."""
    rows = {}
    for name in names:
        row: dict[str, Any] = dict(atomic["per_action_detail"][name])
        row["autoencoder_ceiling"] = ceiling["per_action"][name]
        if codes is not None:
            row.update({f"codes_{k}": v for k, v in (codes["per_action"][name] or {}).items()})
        rows[name] = row
    return rows


@torch.no_grad()
def counterfactual_section(
    model: CausalImageModel,
    pairs: PairLatents,
    transitions: Transitions,
    oracle: torch.nn.Module,
    oracle_info: dict,
    space: FactorSpace,
    chain_steps: int = CHAIN_STEPS,
    predicted: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Every counterfactual figure of the module docstring for held-out ``pairs``.

    ``predicted``: the one-step latents to judge instead of ``model.step_latent``'s (known
    cases: x''s own latents reach the autoencoder ceiling); later chained steps always use
    ``model.step_latent``."""
    names = list(space.action_names)
    actions = transitions.actions.cpu()
    if predicted is None:
        predicted = step_all(model, pairs.latents, actions)
    cf_psnr, cf_ssim = image_quality(model, predicted, pairs.x_next)
    atomic = atomicity_report(
        read_factors(model, oracle, predicted), transitions.values_next, actions, names
    )
    ceiling = atomicity_report(
        read_factors(model, oracle, pairs.latents_next), transitions.values_next, actions, names
    )
    true = atomicity_report(
        read_images(oracle, pairs.x_next), transitions.values_next, actions, names
    )
    codes = None
    if predicted.dtype == torch.long:  # discrete codes: where the transition is right
        codes = code_change_report(pairs.latents, pairs.latents_next, predicted, actions, names)
    unchanged = torch.cat(
        [psnr(to_float(pairs.x[p]), to_float(pairs.x_next[p])) for p in chunks(len(actions))]
    )
    section: dict[str, Any] = {
        "psnr": cf_psnr,
        "ssim": cf_ssim,
        # x itself against x': what a "counterfactual" that changes nothing would score
        "psnr_unchanged": unchanged.mean().item(),
        "atomicity": atomic["atomicity"],
        "intended_moved": atomic["intended_moved"],
        "others_kept": atomic["others_kept"],
        "autoencoder_ceiling": ceiling["atomicity"],
        "oracle_accuracy": oracle_info["accuracy"],
        # the oracle on the true x' of these pairs: the most that atomicity can show
        "oracle_exact_on_targets": true["atomicity"],
        # atomicity means little when the oracle cannot read the true x' themselves
        "atomicity_reliable": bool((true["atomicity"] or 0.0) >= RELIABLE_ORACLE),
    }
    if codes is not None:
        section["code_accuracy"] = (predicted == pairs.latents_next).double().mean().item()
        section["codes"] = {k: v for k, v in codes.items() if k != "per_action"}
    chained = chained_atomicity(
        model, oracle, pairs.latents, transitions, space, names, chain_steps, predicted
    )
    for k, report in chained.items():
        section[f"atomicity_chained_{k}"] = report["atomicity"]
    section["chained"] = chained
    section["per_action"] = _per_action(atomic, ceiling, codes, names)
    section["per_factor"] = {
        factor: {
            "counterfactual": atomic["per_factor"][factor],
            "autoencoder": ceiling["per_factor"][factor],
            "true": true["per_factor"][factor],
        }
        for factor in atomic["per_factor"]
    }
    section["oracle"] = oracle_info
    return section


# ---- the figure ---------------------------------------------------------------------------------
def pairs_per_action(actions: torch.Tensor, per_action: int) -> dict[int, torch.Tensor]:
    """The first ``per_action`` pairs of each action present, in action order."""
    return {a: (actions == a).nonzero().squeeze(1)[:per_action] for a in actions.unique().tolist()}


@torch.no_grad()
def diagnosis_rows(
    model: CausalImageModel,
    pairs: PairLatents,
    actions: torch.Tensor,
    names: list[str],
    per_action: int = FIGURE_PAIRS,
) -> tuple[list[torch.Tensor], list[str]]:
    """Rows for ``labelled_rows(..., group=5)``: per action, a few held-out pairs, each as
    x | true x' | decode(encode(x')) | counterfactual | 4 |counterfactual - x'|.

    The third image shows what the autoencoder alone makes of x' (its ceiling); the difference
    map shows where the counterfactual went wrong."""
    device = model_device(model)
    rows, labels = [], []
    for a, index in pairs_per_action(actions.cpu(), per_action).items():
        x, x_next = to_float(pairs.x[index]), to_float(pairs.x_next[index])
        ae = model.decode_latent(pairs.latents_next[index].to(device)).clamp(0, 1).cpu()
        step = model.step_latent(pairs.latents[index].to(device), actions[index].to(device))
        cf = model.decode_latent(step).clamp(0, 1).cpu()
        diff = ((cf - x_next).abs().mean(1, keepdim=True) * DIFFERENCE_GAIN).clamp(0, 1)
        diff = diff.expand_as(cf)
        rows.append(torch.stack([x, x_next, ae, cf, diff], dim=1).flatten(0, 1))
        labels.append(f"{names[a]}: x | x' | AE(x') | cf | 4|cf-x'|")
    return rows, labels


# ---- the per-action table -------------------------------------------------------------------
#: (column title, key in a ``per_action`` row) of the per-action table
PER_ACTION_COLUMNS = (
    ("pairs", "pairs"),
    ("atomic", "atomicity"),
    ("moved", "intended_moved"),
    ("kept", "others_kept"),
    ("AE ceil", "autoencoder_ceiling"),
    ("chg ok", "codes_accuracy_changed"),
    ("same ok", "codes_accuracy_unchanged"),
    ("chg prec", "codes_change_precision"),
    ("chg rec", "codes_change_recall"),
)
#: what the short titles mean, printed under the table
PER_ACTION_LEGEND = (
    "atomic: the oracle reads exactly x''s factors; moved / kept: the intended factor / all "
    "others read right; AE ceil: atomicity of decode(encode(x')); chg ok / same ok: codes right "
    "among the variables that change / stay; chg prec / rec: precision / recall of changing a "
    "variable; N steps: atomicity after the action applied N times"
)


def per_action_table(section: dict) -> tuple[list[str], list[list[Any]]]:
    """Header and rows (action, the columns present, atomicity after the longest chain) of a
    ``counterfactual`` section, for the printed summary and the HTML report."""
    per_action = section.get("per_action") or {}
    present = [
        (title, key)
        for title, key in PER_ACTION_COLUMNS
        if any(key in row for row in per_action.values())
    ]
    chained = section.get("chained") or {}
    longest = max(chained, key=int, default=None)
    header = ["action", *(title for title, _ in present)]
    if longest is not None and longest != "1":
        header.append(f"{longest} steps")
    rows = []
    for name, row in per_action.items():
        cells = [name, *(row.get(key) for _, key in present)]
        if len(header) > len(present) + 1:
            cells.append(chained[longest]["per_action"].get(name))
        rows.append(cells)
    return header, rows
