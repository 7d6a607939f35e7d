"""Action focus: stage 2 spends more of its steps on the actions the model still gets wrong.

Balanced sampling trains every action equally often, but actions are not equally hard. On
shapes3d the transition has a hue step (a colour lookup) nearly right early in stage 2, while a
shape step (every code of the object redrawn) is still improving when stage 2 ends. With
``train.action_focus = s > 0`` each action's share of the draws is multiplied by
``(L_a / mean L) ** s``, clipped to ``[floor, cap]`` (``floor`` 1 / cap unless set), where
``L_a`` is a running mean of the per-pair *training* loss the stage-2 objective reports for
action ``a`` (:data:`vqcausal.models.base.PAIR_LOSS`). Only training pairs steer it, never
held-out ones.

With ``partners`` (``train.focus_by = "factor"``) an action's loss is the mean of its own and
its inverse's (``f+`` and ``f-``), so both directions of a factor get the same share. A rare
direction's few pairs are soon memorised and its own training loss falls below the others'; by
itself it would be drawn *less* (at rho = 100 that took the rarest action's classifier
retrieval from 0.66 to 0.43), while its factor, as hard as its common direction, keeps it drawn.
Measured at rho = 100 (README, Rare actions) with the 64-wide transition: the rare action's
retrieval holds (0.967 -> 0.973) but its counterfactuals do not (atomicity 0.41 -> 0.19); with
the default's 128-wide one they do (0.710 -> 0.674 against the others' 0.663; 0.695 with a
floor of 1, below), seed 0.

``floor = 1`` (``train.focus_floor``) makes focus only add draws: no action falls below its
balanced share, so an action whose loss is low because its few pairs are memorised keeps the
steps that balanced sampling gives it, and the hard factors get more on top.

The running means live in memory: a resumed run starts again from equal shares and has its
estimates back after a few dozen steps.
"""

from __future__ import annotations

import torch


class ActionFocus:
    """Running per-action loss -> a sampling factor per action (1 for actions not yet seen)."""

    def __init__(
        self,
        num_actions: int,
        strength: float,
        momentum: float = 0.98,
        cap: float = 8.0,
        partners: torch.Tensor | None = None,
        floor: float | None = None,
    ) -> None:
        floor = 1 / cap if floor is None else floor
        if strength < 0 or not 0 <= momentum < 1 or cap < 1 or not 0 < floor <= 1:
            raise ValueError("need strength >= 0, momentum in [0, 1), cap >= 1, floor in (0, 1]")
        if partners is not None and partners.shape != (num_actions,):
            raise ValueError(f"partners must be one action per action, ({num_actions},)")
        self.strength, self.momentum, self.cap, self.floor = strength, momentum, cap, floor
        self.partners = partners
        self.loss = torch.zeros(num_actions, dtype=torch.float64)
        self.seen = torch.zeros(num_actions, dtype=torch.bool)

    def update(self, actions: torch.Tensor, pair_loss: torch.Tensor) -> None:
        """Fold one batch in: each action present moves its running mean toward its batch mean."""
        n = len(self.loss)
        actions = actions.detach().cpu()
        count = torch.bincount(actions, minlength=n).double()
        total = torch.bincount(actions, weights=pair_loss.detach().cpu().double(), minlength=n)
        present = count > 0
        batch_mean = total / count.clamp(min=1)
        new = present & ~self.seen
        old = present & self.seen
        self.loss[new] = batch_mean[new]
        self.loss[old] = self.momentum * self.loss[old] + (1 - self.momentum) * batch_mean[old]
        self.seen |= present

    def factors(self) -> torch.Tensor:
        """(A,) float64: how many times its balanced share each action is drawn."""
        out = torch.ones_like(self.loss)
        if self.strength == 0 or not self.seen.any():
            return out
        loss = self.loss
        if self.partners is not None:  # mean over the seen ones of (a, partner(a))
            both = torch.stack([self.loss, self.loss[self.partners]])
            known = torch.stack([self.seen, self.seen[self.partners]]).double()
            loss = (both * known).sum(0) / known.sum(0).clamp(min=1)
        seen = loss[self.seen]
        relative = seen / seen.mean().clamp(min=1e-12)
        out[self.seen] = relative.clamp(min=1e-12).pow(self.strength).clamp(self.floor, self.cap)
        return out
