"""Figures of a model's interventions: every action applied to one image, step by step."""

from __future__ import annotations

import torch

from vqcausal.data.source import to_float
from vqcausal.eval.pairs import model_device
from vqcausal.models.base import CausalImageModel


@torch.no_grad()
def intervention_grid(
    model: CausalImageModel, x: torch.Tensor, steps: int = 4
) -> tuple[list, list]:
    """Rows = actions; columns = x then the counterfactual after 1..steps applications."""
    num_actions = model.args.num_actions
    device = model_device(model)
    source = to_float(x[:1]).to(device).expand(num_actions, -1, -1, -1)
    actions = torch.arange(num_actions, device=device)[:, None].expand(-1, steps)
    out = model.intervene(source, actions)  # (A, steps, C, H, W)
    rows = [torch.cat([source[a : a + 1], out[a]]).cpu() for a in range(num_actions)]
    return rows, list(model.args.action_names)
