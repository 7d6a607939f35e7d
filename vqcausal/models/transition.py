"""Causal transition over discrete code variables: intervention mask, learned graph, propagation.

Variables are the VQ code indices flattened as ``(h, w, codebook)`` with the codebook fastest,
so variable ``i`` uses codebook ``i % num_codebooks``. Actions ``0 .. A-1`` are the real
actions; index ``A`` is the no-op (identity) action.

The work splits into two parts so that retrieval can score every action cheaply:

* action-independent, run once per x: node states ``h`` (per-codebook code embedding plus a
  learned position embedding, then a small transformer for global context) and the weighted
  adjacency ``G`` (factorised pair scores ``q_i . k_j``, so memory is O(B N^2), never
  O(B N^2 D) like the official pair MLP);
* action-dependent, run for every (x, action) slot: the intervention mask, the update of the
  intervened nodes, ``hops`` rounds of message passing along ``G`` and the output head.

Unlike the official CT-VAE code, the action conditions both the intervention update and every
message (the official action node never sends a message), evaluation is deterministic (no
Gumbel noise, thresholded mask), and all actions are scored in one batched pass.

Messages vanish exactly when nothing changed (``f(0) = 0`` by construction), and the output
head reads a node's *own code embedding* plus its change, not its context state. So a node
that is not intervened on and whose parents did not change decodes its own code through a
plain lookup, which generalises to images never seen in training; context only decides the
mask, the graph and the size of the change.
Intervened nodes ignore incoming messages, as under ``do()``.

Internally slot tensors use the layout ``(b, n, s, h)``: per-node maps act on the last axis and
the adjacency product is a single ``bmm`` over ``(b, n, s*h)`` without any copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from vqcausal.models.dag import notears
from vqcausal.models.variables import codebook_offsets

# floats in the widest tensor of one CPU scoring pass (:meth:`CausalTransition.cpu_chunk`):
# ~6 MiB, 8 pairs at the official setting (N = 64, A = 12, a 256-wide update)
CPU_CHUNK_FLOATS = 1_600_000


@dataclass
class TransitionModelConfig:
    """Widths and loss weights of the causal transition."""

    hidden: int = 64  # width of node states (independent of the VQ embedding dim)
    context_layers: int = 2  # transformer layers giving every node global context (once per x)
    heads: int = 4
    hops: int = 2  # message-passing hops along the learned graph
    # width of the intervention update's hidden layer, in multiples of ``hidden``: the update
    # maps (node context, action) to the intervened node's new code, a large lookup (each
    # code, action and position has its own answer) that a ``hidden``-wide layer underfits
    update_expansion: int = 4
    # the action *scales* the update's hidden units as well as shifting them (FiLM:
    # gelu(W_h h * (1 + W_g a) + W_a a)): with a shift alone every action is one bias of the
    # same layer. Measured (tools/transition_probe.py, README): +0.015 changing codes right
    # at width 64; a second update layer +0.02 at 1.45x the time; twice ``hidden`` +0.10
    update_film: bool = False
    # hidden layers of the intervention update, each ``update_expansion * hidden`` wide
    update_layers: int = 1
    mask_threshold: float = 0.5
    w_code: float = 1.0  # CE of predicted codes vs x' codes (true action)
    w_identity: float = 1.0  # CE of the no-op action's prediction vs x's own codes
    w_retrieval: float = 1.0  # CE of analysis-by-synthesis action scores vs the true action
    w_mask: float = 0.01  # sparsity of the intervention mask (mean prob)
    w_graph: float = 0.01  # sparsity of the adjacency (mean weight)
    w_acyclic: float = 0.0  # optional NOTEARS penalty tr(exp(G o G)) - N on the batch-mean graph
    # extra weight of the code CE on the variables that change between x and x' (a weight of
    # 1 + w_changed): most variables just keep their code, which the lookup path gets right
    # early, so the few that change would otherwise carry a small share of the loss
    w_changed: float = 2.0
    # action slots per training pair for the retrieval CE: the true action, its inverse, and
    # random others up to this many (0: all A). Training cost is linear in the slots, so fewer
    # buys more steps; the inverse is always among them, as it is the hardest negative
    train_slots: int = 4
    # back-translation (cycle consistency on unpaired codes): every step, each source code grid
    # of the batch gets an action drawn uniformly, the model's own counterfactual c = T(z, a)
    # (argmax, no gradient), and the pair (c, inverse(a), z) is trained like a real one with
    # this weight: its target z is a real code grid, so a rare action learns to *undo* on as
    # many images as a common one, from its opposite's predictions (see ``back_translated``)
    w_cycle: float = 0.0


@dataclass
class TransitionOutput:
    """Predictions for S action slots per input."""

    logits: Tensor  # (B, S, N, K): per action slot, per variable, logits over the codebook
    mask: Tensor  # (B, S, N) intervention probabilities
    adjacency: Tensor  # (B, N, N) weights in [0, 1], [i, j] = edge j -> i (parent j, child i)


def gumbel_sigmoid_st(logits: Tensor) -> Tensor:
    """Binary sample with logistic noise, straight-through gradients of the relaxed sample."""
    u = torch.rand_like(logits).clamp_(1e-6, 1 - 1e-6)
    soft = torch.sigmoid(logits + torch.log(u) - torch.log1p(-u))
    hard = (soft > 0.5).to(soft.dtype)
    return hard - soft.detach() + soft


class NodeStates(NamedTuple):
    """The action-independent part, computed once per x."""

    own: Tensor  # (B, N, H) embedding of each variable's current code
    context: Tensor  # (B, N, H) the same after the context transformer
    adjacency: Tensor  # (B, N, N)


class CausalTransition(nn.Module):
    """Predicts the codes of x' from the codes of x and an action; scores actions for retrieval."""

    def __init__(
        self,
        num_variables: int,
        codebook_size: int,
        num_codebooks: int,
        num_actions: int,
        config: TransitionModelConfig | None = None,
    ) -> None:
        super().__init__()
        cfg = config or TransitionModelConfig()
        if cfg.hidden % cfg.heads:
            raise ValueError(f"hidden ({cfg.hidden}) must be divisible by heads ({cfg.heads})")
        self.config = cfg
        self.num_variables = num_variables
        self.codebook_size = codebook_size
        self.num_codebooks = num_codebooks
        self.num_actions = num_actions
        self.noop = num_actions
        h = cfg.hidden

        # ---- action-independent: node states and graph (once per x) ----
        self.code_embed = nn.Embedding(num_codebooks * codebook_size, h)
        self.pos_embed = nn.Parameter(torch.randn(num_variables, h))
        offsets = codebook_offsets(num_variables, num_codebooks, codebook_size)
        self.register_buffer("code_offset", offsets, persistent=False)
        layer = nn.TransformerEncoderLayer(
            h, cfg.heads, 2 * h, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.context = nn.TransformerEncoder(
            layer, cfg.context_layers, norm=nn.LayerNorm(h), enable_nested_tensor=False
        )
        self.graph_q = nn.Linear(h, h, bias=False)
        self.graph_k = nn.Linear(h, h, bias=False)
        self.graph_bias = nn.Parameter(torch.tensor(-2.0))  # start sparse

        # ---- action-dependent: mask, intervention update, propagation, output ----
        self.action_embed = nn.Embedding(num_actions + 1, h)  # last row: no-op
        self.mask_q = nn.Linear(h, h, bias=False)  # from the action
        self.mask_k = nn.Linear(h, h, bias=False)  # from the node
        self.mask_bias = nn.Parameter(torch.tensor(-2.0))  # start sparse: few nodes intervened
        # U(h_i, a) = W2 gelu(W_h h_i + W_a a), update_expansion * h wide in the middle
        wide = cfg.update_expansion * h
        self.update_node = nn.Linear(h, wide)
        self.update_action = nn.Linear(h, wide, bias=False)
        self.update_gain = nn.Linear(h, wide, bias=False) if cfg.update_film else None
        if self.update_gain is not None:
            nn.init.zeros_(self.update_gain.weight)  # starts as the shift-only update
        more = range(cfg.update_layers - 1)
        self.update_hidden = nn.ModuleList(nn.Linear(wide, wide) for _ in more)
        self.update_out = nn.Linear(wide, h)
        self.prop_node = nn.Linear(h, h)  # message context c(h_i, a) = P_h h_i + P_a a
        self.prop_action = nn.Linear(h, h, bias=False)
        self.prop_in = nn.Linear(h, h, bias=False)
        self.prop_out = nn.Linear(h, h, bias=False)
        self.out_norm = nn.LayerNorm(h)
        self.out_weight = nn.Parameter(torch.randn(num_codebooks, h, codebook_size) / math.sqrt(h))
        self.out_bias = nn.Parameter(torch.zeros(num_codebooks, codebook_size))

    # ---- the two parts ---------------------------------------------------------------
    def node_states(self, codes: Tensor) -> NodeStates:
        """Action-independent part: own-code and context states (B, N, H), adjacency (B, N, N)."""
        if codes.ndim != 2 or codes.shape[1] != self.num_variables:
            raise ValueError(
                f"codes must be (B, {self.num_variables}) long, got {tuple(codes.shape)}"
            )
        own = self.code_embed(codes + self.code_offset)
        h = self.context(own + self.pos_embed)
        q, k = self.graph_q(h), self.graph_k(h)
        scores = torch.baddbmm(
            self.graph_bias.expand(1, 1, 1), q, k.transpose(1, 2), alpha=h.shape[-1] ** -0.5
        )
        adjacency = torch.sigmoid(scores) * (1 - torch.eye(self.num_variables, device=h.device))
        return NodeStates(own, h, adjacency)

    def _slots(self, codes: Tensor, actions: Tensor | None) -> Tensor:
        """Normalise actions to (B, S); None means all A real actions."""
        b = codes.shape[0]
        if actions is None:
            return repeat(torch.arange(self.num_actions, device=codes.device), "s -> b s", b=b)
        if actions.ndim == 1:
            actions = actions[:, None]
        if actions.ndim != 2 or actions.shape[0] != b:
            raise ValueError(f"actions must be (B,) or (B, S) with B={b}, got {actions.shape}")
        return actions

    def _mask(self, logits: Tensor, hard: bool | None) -> Tensor:
        """Stochastic straight-through mask in training, thresholded (or soft) otherwise."""
        if hard is None and self.training:
            return gumbel_sigmoid_st(logits)
        probs = torch.sigmoid(logits)
        if hard is False:
            return probs
        hard_mask = (probs > self.config.mask_threshold).to(probs.dtype)
        return hard_mask - probs.detach() + probs

    def apply_actions(
        self, states: NodeStates, actions: Tensor, hard: bool | None = None
    ) -> tuple[Tensor, Tensor]:
        """Action-dependent part for slots (B, S): logits (b, n, s, k) and mask probs (b, n, s)."""
        cfg = self.config
        h, adjacency = states.context, states.adjacency
        act = self.action_embed(actions)  # (b, s, h)
        mask_logits = (
            torch.einsum("bsd,bnd->bns", self.mask_q(act), self.mask_k(h)) * h.shape[-1] ** -0.5
            + self.mask_bias
        )
        mask = self._mask(mask_logits, hard)[..., None]  # (b, n, s, 1)

        # intervention: delta0_i = m_i * U(h_i, a); the node part is computed once per x
        node = self.update_node(h)[:, :, None]
        if self.update_gain is not None:
            node = node * (1 + self.update_gain(act)[:, None])
        hidden = F.gelu(node + self.update_action(act)[:, None])
        for layer in self.update_hidden:
            hidden = F.gelu(layer(hidden))
        delta0 = mask * self.update_out(hidden)  # (b, n, s, h)

        # propagation: delta <- delta0 + (1 - m) * f(G @ delta), f(msg) = W2 (gelu(W1 msg + c) -
        # gelu(c)) with the action- and node-dependent context c, so f(0) = 0 exactly
        ctx = self.prop_node(h)[:, :, None] + self.prop_action(act)[:, None]
        ctx_act = F.gelu(ctx)
        keep = 1 - mask
        delta = delta0
        b, n, s, d = delta.shape
        for _ in range(cfg.hops):
            msg = torch.bmm(adjacency, delta.reshape(b, n, s * d)).view(b, n, s, d)
            delta = delta0 + keep * self.prop_out(F.gelu(self.prop_in(msg) + ctx) - ctx_act)

        out = self.out_norm(states.own[:, :, None] + delta)
        if self.num_codebooks == 1:
            logits = torch.matmul(out, self.out_weight[0]) + self.out_bias[0]
        else:
            out = rearrange(out, "b (p c) s h -> b p c s h", c=self.num_codebooks)
            logits = torch.einsum("bpcsh,chk->bpcsk", out, self.out_weight)
            logits = logits + self.out_bias[:, None]
            logits = rearrange(logits, "b p c s k -> b (p c) s k")
        return logits, torch.sigmoid(mask_logits)

    # ---- public API --------------------------------------------------------------------
    def forward(
        self, codes: Tensor, actions: Tensor | None = None, hard: bool | None = None
    ) -> TransitionOutput:
        """Predict x' codes for actions (B,) -> S = 1, (B, S) -> S slots, None -> all A actions.

        ``hard=None``: straight-through Gumbel-sigmoid mask in training mode, thresholded mask
        (prob > ``mask_threshold``) in eval mode. ``hard=True``: always the thresholded mask;
        ``hard=False``: always the soft (expected) mask. Only the ``None``/training case is
        random.
        """
        slots = self._slots(codes, actions)
        states = self.node_states(codes)
        logits, probs = self.apply_actions(states, slots, hard)
        return TransitionOutput(
            logits=rearrange(logits, "b n s k -> b s n k"),
            mask=rearrange(probs, "b n s -> b s n"),
            adjacency=states.adjacency,
        )

    @torch.no_grad()
    def predict(self, codes: Tensor, actions: Tensor) -> Tensor:
        """Deterministic argmax codes of x': actions (B,) -> (B, N), (B, S) -> (B, S, N)."""
        logits = self(codes, actions, hard=True).logits.argmax(-1)
        return logits[:, 0] if actions.ndim == 1 else logits

    def score_actions(self, codes: Tensor, codes_next: Tensor) -> Tensor:
        """Sum over variables of log p(codes_next | codes, a) for all A actions in one pass: (B, A).

        Stochastic in training mode (Gumbel mask), deterministic in eval mode. Without
        gradients on the CPU, the pairs go through in chunks (:meth:`cpu_chunk`): the
        action-dependent tensors of a whole large batch spill out of the cache, and a batch
        of 256 pairs scored in one pass ran at under half the rate of chunks of 8. The
        action-independent part (node states, graph) still runs once for the whole batch.
        """
        states, slots = self.node_states(codes), self._slots(codes, None)
        chunk = len(codes)
        if codes.device.type == "cpu" and not torch.is_grad_enabled():
            chunk = self.cpu_chunk()
        scores = []
        for *part, part_slots, part_next in zip(
            *(t.split(chunk) for t in (*states, slots, codes_next)), strict=True
        ):
            logits, _ = self.apply_actions(NodeStates(*part), part_slots)
            scores.append(_log_likelihood(logits, part_next))
        return scores[0] if len(scores) == 1 else torch.cat(scores)

    def cpu_chunk(self) -> int:
        """Pairs scored per pass on the CPU: the widest action-dependent tensor, the update's
        (pairs, N, A, update_expansion * hidden) hidden layer, kept near ``CPU_CHUNK_FLOATS``
        (a 2-core EPYC, 2 MiB L2 per core, 32 MiB L3; official setting, 256 pairs in chunks
        of 1 / 2 / 4 / 8 / 16, interleaved in one process: 379 / 486 / 592 / 670 / 492
        pairs/s, and 2.4x the rate of one 256-pair pass)."""
        cfg = self.config
        per_pair = self.num_variables * self.num_actions * cfg.update_expansion * cfg.hidden
        return max(1, CPU_CHUNK_FLOATS // per_pair)

    def inverse(self, actions: Tensor) -> Tensor:
        """The action undoing each action (``f+`` <-> ``f-``: actions come in pairs ``2f, 2f + 1``,
        as :class:`vqcausal.data.factors.FactorSpace` lays them out)."""
        return actions ^ 1

    def training_slots(self, actions: Tensor) -> Tensor:
        """(B, S) actions scored per training pair: the true one first, then (with
        ``train_slots``) its inverse ``a ^ 1`` and distinct random others; else all the rest."""
        b, a = actions.shape[0], self.num_actions
        # a random order of all actions, the true one forced first and its inverse second
        key = torch.rand(b, a, device=actions.device)
        rows = torch.arange(b, device=actions.device)
        key[rows, actions] = -2.0
        if a % 2 == 0:
            key[rows, self.inverse(actions)] = -1.0
        order = key.argsort(dim=1)
        slots = self.config.train_slots
        return order[:, :slots] if 0 < slots < a else order

    @torch.no_grad()
    def back_translated(
        self, codes: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Synthetic pairs for ``w_cycle``: (c, inverse(a), z) for a drawn uniformly over
        actions and c = T(z, a) the model's own counterfactual (thresholded mask, argmax).

        Kept: rows where c differs from z (training "the inverse does nothing" would collapse
        both directions) and retrieval gives c back its own action (a scores c highest of all
        actions), so the inverse learns from counterfactuals the model can already tell apart.
        Train them *without* the ``w_changed`` weighting (``losses(..., weigh_changed=False)``):
        a wrong change in a counterfactual would otherwise outweigh the real pairs that forbid
        it; on a toy with one action never paired that made both directions of its factor move
        a second factor, while unweighted they learn the unpaired action exactly.
        Returns (codes c, actions inverse(a), targets z, drawn a), row-aligned."""
        b = codes.shape[0]
        actions = torch.randint(0, self.num_actions, (b,), device=codes.device, generator=generator)
        # one deterministic pass over all actions gives every counterfactual and its scores
        logits, _ = self.apply_actions(self.node_states(codes), self._slots(codes, None), hard=True)
        rows = torch.arange(b, device=codes.device)
        counterfactual = logits[rows, :, actions].argmax(-1)  # (b, n)
        owner = _log_likelihood(logits, counterfactual).argmax(-1)
        keep = (counterfactual != codes).any(1) & (owner == actions)
        return counterfactual[keep], self.inverse(actions[keep]), codes[keep], actions[keep]

    def losses(
        self, codes: Tensor, actions: Tensor, codes_next: Tensor, weigh_changed: bool = True
    ) -> dict[str, Tensor]:
        """All loss terms plus ``total`` from ONE pass over the action slots and the no-op.

        The true action's slot gives the code CE, the no-op slot the identity CE, and the
        real slots (all A, or ``train_slots`` of them: :meth:`training_slots`) the
        analysis-by-synthesis retrieval CE. ``acyclic`` is only computed when
        ``w_acyclic > 0`` (else 0). ``retrieval_accuracy`` is a detached metric, not in ``total``;
        ``pair_code`` the code CE of each pair (B,), detached.
        """
        cfg = self.config
        b = codes.shape[0]
        real = self.training_slots(actions)  # (b, S), the true action in column 0
        noop = torch.full((b, 1), self.noop, device=codes.device, dtype=real.dtype)
        states = self.node_states(codes)
        adjacency = states.adjacency
        logits, probs = self.apply_actions(states, torch.cat([real, noop], 1))  # (b, n, S+1, k)

        changed = (codes_next != codes).to(logits.dtype)
        per_variable = F.cross_entropy(
            rearrange(logits[:, :, 0], "b n k -> b k n"), codes_next, reduction="none"
        )
        weight = 1 + cfg.w_changed * changed if weigh_changed else torch.ones_like(changed)
        weighted = weight * per_variable
        code = weighted.sum() / weight.sum()
        identity = F.cross_entropy(rearrange(logits[:, :, -1], "b n k -> b k n"), codes)
        scores = _log_likelihood(logits[:, :, :-1], codes_next)
        first = torch.zeros_like(actions)  # the true action's column
        retrieval = F.cross_entropy(scores, first)
        mask = probs.mean()
        graph = adjacency.mean()
        acyclic = notears(adjacency.mean(0)) if cfg.w_acyclic > 0 else adjacency.new_zeros(())
        total = (
            cfg.w_code * code
            + cfg.w_identity * identity
            + cfg.w_retrieval * retrieval
            + cfg.w_mask * mask
            + cfg.w_graph * graph
            + cfg.w_acyclic * acyclic
        )
        with torch.no_grad():
            # right only when the true action scores above every other: argmax would count a
            # tie (a model that tells actions apart not at all) for the first, true, column
            others = scores[:, 1:].amax(-1) if scores.shape[1] > 1 else scores[:, 0] - 1
            accuracy = (scores[:, 0] > others).float().mean()
        return {
            "code": code,
            "identity": identity,
            "retrieval": retrieval,
            "mask": mask,
            "graph": graph,
            "acyclic": acyclic,
            "retrieval_accuracy": accuracy,
            "total": total,
            "pair_code": (weighted.sum(1) / weight.sum(1)).detach(),
        }


def _log_likelihood(logits: Tensor, codes_next: Tensor) -> Tensor:
    """Sum over variables of log-softmax at the target codes: (b, n, s, k), (b, n) -> (b, s)."""
    target = repeat(codes_next, "b n -> b n s 1", s=logits.shape[2])
    picked = logits.gather(-1, target).squeeze(-1)
    return (picked - torch.logsumexp(logits, dim=-1)).sum(1)
