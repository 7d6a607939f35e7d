"""CausalVAE's latent (Yang et al. 2021): a linear SCM over concept blocks plus a mask layer.

The latent has ``n`` concepts, each a block of ``k`` dims (``latent_dim = n * k``); one scalar
edge weight ``A[i, j]`` (edge i -> j) is shared by the ``k`` dims of a block, as in the official
code. The pipeline for one image:

1. exogenous posterior ``q(eps | x) = N(mu, diag sigma^2)``. A Linear predicts the endogenous
   mean ``m`` and ``mu = (I - A^T) m`` (same posterior family, but z's mean does not move when
   A does, so the encoder never chases the graph);
2. linear SCM ``z = A^T z + eps``, i.e. ``z = (I - A^T)^{-1} eps`` per block channel: the
   concept blocks, which the decoder reads;
3. mask layer ``z'_j = f_j(A_:j o z) + e_j`` (the paper's ``g_j(A_j o z)``): the parents'
   blocks gated by their edge weights, a linear part plus a bounded MLP (:class:`MaskLayer`),
   with ``e_j = z_j - f_j(z)`` the structural noise abducted from z, so ``z' = z`` for an
   observed image and the mask layer acts where an SCM's functions act: under do(), which
   recomputes the descendants of the intervened concept from their new parents. (The
   official code adds the *linear* SCM's noise instead, so ``z'_j = z_j + r_j(parents)``
   with r the MLP's part: once the structure was learned from the labels, that put the
   pendulum's shadow-length block at MIC 0.52 against its label while z's block was 1.00.)

Losses (per image, averaged over the batch):

* ``kl``: an exact Gaussian KL. Labelled rows: ``KL(q(z | x) || prod_i N(u_i 1_k, I))`` with
  ``q(z | x) = N(M mu, M diag(sigma^2) M^T)`` (eps's posterior pushed through the SCM,
  ``M = (I - A^T)^{-1}``, per block channel). Unlabelled rows: the SCM's own prior
  ``eps ~ N(0, I)``, i.e. ``KL(q(eps | x) || N(0, I)) = KL(q(z | x) || N(0, M M^T))`` (a KL is
  invariant under one invertible map on both sides). A prior ``N(0, I)`` on ``z`` itself would
  penalise every edge.
* ``label``: a per-concept linear head predicts ``u_i`` from block ``i`` of ``z'`` (MSE).
* ``mask``: the structural regression ``sum_i ||t_i - g_i(A_i o t)||^2`` (NOTEARS least
  squares) on label-aligned blocks ``t``: ``t_i = u_i 1_k`` on labelled rows (CausalVAE's
  ``l_u``, on normalised labels), the detached posterior mean of ``z`` elsewhere (the paper's
  ``l_m``). Regressing the encoder's ``z`` instead learns spurious edges from its imperfect
  alignment, and ``||z - z'||^2`` with ``+ eps`` is identically 0 for a linear ``g``.
* ``invariance`` (on transition pairs, :meth:`SCMLatent.pair_losses`): an atomic action
  moves one concept's exogenous noise, so every other concept's structural residual must not
  change between x and x'.
* ``sparsity``: L1 on ``A``; ``acyclic``: augmented Lagrangian ``lambda H + rho / 2 H^2`` with
  ``H(A) = tr((I + A o A / n)^n) - n``; the loop calls :meth:`SCMLatent.update_lagrangian`
  (the official code uses fixed weights 3 and 0.5).

Structure and representation are learned separately: ``A`` and the mask layer's structural
functions get gradients from ``mask``, ``invariance``, ``sparsity`` and ``acyclic`` only;
reconstruction, KL and the label head see ``A`` as a constant and never the mask layer. (With
the mask layer's MLP on the decoder's path, reconstruction pulled the MLP of the pendulum's
shadow length away from the structural fit, and those edges faded below the threshold.)
Under the label prior ``N(u, I)``, which ignores the graph, their pull on ``A`` is towards zero
(less posterior noise propagated down the graph); in our synthetic runs it shrank the edges by
half or more and, with A also free in the encoder path, reversed an edge.

Orientation: labels make concepts identifiable, not edge directions. An observational fit
orients edges only up to Markov equivalence for linear-Gaussian data, and on the pendulum it
prefers effect -> cause (the shadows predict the angles better than the reverse); the
official code hides this by initialising ``A`` with the true causal order. The transition
pairs are interventions with known targets, and the invariance term reads them: an edge into
a concept that another concept's action leaves unchanged is penalised. Edges *out of* a
concept no action targets have no interventional evidence at all (with interventions on the
angles only, "shadow position -> shadow length" explains the data as well as the direct
edges, since both shadows are functions of the angles); ``edge_prior = "interventional"``
(default) therefore allows edges only out of acted-on concepts. The reported graph
thresholds the *edge strength*, the mean ``|d f_j / d z_i|`` on the label scale
(:meth:`SCMLatent.edge_strength`), not the gate ``A_ij`` alone, since the mask layer's MLP
shares the effect with it.

Differences from the official CausalVAE code on purpose: the
posterior variance is used, ``A`` has a zero diagonal and no hand-set initial order, labels are
normalised by the caller, the DAG penalty is a real augmented Lagrangian, the mask layer's
noise is the structural residual (step 3), actions move concepts
by steps measured on the data, and ``do()`` propagates to all descendants (grandchildren too)
in topological order, for any value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from torch import Tensor, nn

from vqcausal.models.dag import acyclicity, reachability, topological_order
from vqcausal.models.latent import ContinuousLatent, LatentOutput

EDGE_PRIORS = ("interventional", "none")
PROBES = 256  # points at which edge strengths are measured


@dataclass
class SCMConfig:
    """CausalVAE latent settings; loss weights multiply per-image terms."""

    # n concepts, one per label of the data: None (the default) takes the source's
    # (``concept_names``: its factors, or the concepts it defines, as the pendulum does) when
    # a run is built; a number that does not match the data is refused there
    concepts: int | None = None
    concept_dim: int = 4  # k dims per concept block; latent_dim = n * k
    label_fraction: float = 1.0  # fraction of each batch whose labels are used (the first rows)
    w_kl: float = 1.0
    w_label: float = 1.0  # label reconstruction: predict u_i from z_i (CausalVAE's "u" loss)
    w_mask: float = 1.0  # structural regression ||t - g(A^T t)||^2, t = labels or z (l_u / l_m)
    w_sparsity: float = 1e-3  # L1 on A
    lagrangian_rho: float = 1.0  # augmented Lagrangian initial penalty
    lagrangian_rho_growth: float = 10.0
    lagrangian_rho_max: float = 1e6
    lagrangian_tol: float = 0.25  # h must shrink by this factor between updates, else rho grows
    w_invariance: float = 1.0  # exogenous noise of non-intervened concepts constant across a pair
    edge_prior: str = "interventional"  # interventional: edges only out of acted-on concepts | none
    init_edge_weight: float = 0.1  # every allowed edge starts here (see SCMLatent.__init__)
    edge_threshold: float = 0.3  # edge strength (mean |d f_j / d z_i|) above this is an edge
    mask_hidden: int = 64  # width of each concept's g_j
    mask_lipschitz: float = 2.0  # bound on the slope of g_j's nonlinear part


class MaskLayer(nn.Module):
    """Structural functions ``f_j(z) = sum_i A[i, j] z_i + r_j(A_:j o z) - r_j(0)``.

    The paper's mask layer ``z_j = g_j(A_j o z) + eps_j``: each concept's MLP ``r_j`` reads its
    parents' blocks gated by their edge weights (an element-wise mask, so it can model a
    non-monotone effect of two parents, e.g. the pendulum's shadow length, which a function of
    the *sum* of the parents, as in the official code, cannot). ``r_j``'s weights are rescaled
    to spectral norm <= 1 and ``lipschitz``: an unbounded MLP could amplify a tiny gate and
    leave ``A`` near zero, so the L1 penalty on ``A`` would no longer select edges. ``f_j(0) =
    0`` keeps roots at ``z_j = eps_j``; W2 starts at zero, so the layer starts as the linear SCM.
    """

    def __init__(self, concepts: int, concept_dim: int, hidden: int, lipschitz: float) -> None:
        super().__init__()
        self.lipschitz = lipschitz
        width = concepts * concept_dim
        self.w1 = nn.Parameter(torch.randn(concepts, width, hidden) / math.sqrt(width))
        self.b1 = nn.Parameter(torch.zeros(concepts, hidden))
        self.w2 = nn.Parameter(torch.zeros(concepts, hidden, concept_dim))

    @staticmethod
    def _bounded(weight: Tensor, bound: float) -> Tensor:
        norm = torch.linalg.matrix_norm(weight, ord=2)  # (n,) spectral norms
        return weight * (bound / torch.clamp(norm, min=bound))[:, None, None]

    def forward(self, blocks: Tensor, adjacency: Tensor) -> Tensor:
        """(B, n, k) concept blocks -> (B, n, k) structural predictions f_j."""
        linear = torch.einsum("ij,bik->bjk", adjacency, blocks)
        gated = rearrange(torch.einsum("ij,bik->bjik", adjacency, blocks), "b j i k -> b j (i k)")
        w1 = self._bounded(self.w1, 1.0)
        w2 = self._bounded(self.w2, self.lipschitz)
        h = torch.einsum("bjm,jmh->bjh", gated, w1) + self.b1
        return linear + torch.einsum("bjh,jhk->bjk", F.elu(h) - F.elu(self.b1), w2)


class SCMLatent(ContinuousLatent):
    """Features (B, F) -> exogenous eps -> causal concept blocks z (B, n*k) -> decoder (B, F).

    Training mode samples eps; eval mode uses its mean, so evaluation is deterministic. ``mean``
    is the concept blocks z of the posterior mean in both modes (the mask layer gives z' = z
    for an observed image; it acts under do()).
    """

    own_actions = True  # do() on the concepts, not the model's learned shift

    def __init__(
        self,
        feature_dim: int,
        config: SCMConfig | None = None,
        action_targets: list[int] | None = None,
        action_steps: list[float] | None = None,
    ) -> None:
        """``action_targets[a]`` is the concept action ``a`` moves (-1: none of them) and
        ``action_steps[a]`` its mean signed change in normalised label units, both measured on
        the data (:func:`vqcausal.data.transitions.action_concept_steps`); by default action
        ``2i`` / ``2i + 1`` moves concept ``i`` by +1 / -1."""
        super().__init__()
        self.config = cfg = config or SCMConfig()
        if cfg.concepts is None:
            raise ValueError("scm.concepts is unset: give the number of concepts of the data")
        if cfg.edge_prior not in EDGE_PRIORS:
            raise ValueError(f"scm.edge_prior must be one of {EDGE_PRIORS}, got {cfg.edge_prior!r}")
        self.concepts, self.concept_dim = cfg.concepts, cfg.concept_dim
        self.latent_dim = cfg.concepts * cfg.concept_dim
        self.feature_dim = feature_dim
        if action_targets is None:
            action_targets = [a // 2 for a in range(2 * cfg.concepts)]
        if action_steps is None:
            action_steps = [1.0 - 2.0 * (a % 2) for a in range(len(action_targets))]
        if len(action_steps) != len(action_targets) or any(
            not -1 <= t < cfg.concepts for t in action_targets
        ):
            raise ValueError("action_targets / action_steps do not fit the concepts")
        self.num_actions = len(action_targets)
        self.register_buffer("action_targets", torch.tensor(action_targets), persistent=False)
        # (A, n) shift of each concept per action, in normalised label units
        shift = torch.zeros(self.num_actions, cfg.concepts)
        for a, (t, step) in enumerate(zip(action_targets, action_steps, strict=True)):
            if t >= 0:
                shift[a, t] = step
        # measured on labels at build time; stage 2 recalibrates it on encoded latent pairs
        self.register_buffer("action_shift", shift)
        # Interventions tell edges out of an acted-on concept apart; with none on a concept,
        # its out-edges have no interventional evidence (module docstring, "Orientation").
        allowed = 1.0 - torch.eye(cfg.concepts)
        if cfg.edge_prior == "interventional":
            targeted = torch.zeros(cfg.concepts)
            targeted[[t for t in action_targets if t >= 0]] = 1.0
            allowed = allowed * targeted[:, None]
        self.register_buffer("allowed_edges", allowed, persistent=False)
        # No hand-set causal order (the official init encodes the answer): every allowed edge,
        # both directions, starts at the same small weight. Zero is a saddle point for an edge
        # whose effect has no linear part (the pendulum's shadow length): the gate then gets no
        # gradient through the mask layer's MLP, whose output weights start at zero too.
        self.weights = nn.Parameter(cfg.init_edge_weight * allowed)
        generator = torch.Generator().manual_seed(0)
        probes = torch.randn(PROBES, cfg.concepts, generator=generator)
        self.register_buffer("probes", repeat(probes, "p n -> p n k", k=cfg.concept_dim), False)
        self.heads = nn.Linear(feature_dim, 2 * self.latent_dim)  # -> (mu, logvar) of eps
        self.out = nn.Linear(self.latent_dim, feature_dim)
        self.mask_layer = MaskLayer(
            cfg.concepts, cfg.concept_dim, cfg.mask_hidden, cfg.mask_lipschitz
        )
        self.label_weight = nn.Parameter(
            torch.full((cfg.concepts, cfg.concept_dim), 1.0 / cfg.concept_dim)
        )
        self.label_bias = nn.Parameter(torch.zeros(cfg.concepts))
        # Augmented Lagrangian state travels with checkpoints.
        self.register_buffer("lagrangian_lambda", torch.tensor(0.0))
        self.register_buffer("lagrangian_rho", torch.tensor(float(cfg.lagrangian_rho)))
        self.register_buffer("lagrangian_h_prev", torch.tensor(float("inf")))

    # ---- graph ----

    def adjacency(self) -> Tensor:
        """Weighted graph A (n, n), ``A[i, j]`` = edge i -> j; the diagonal is always zero."""
        return self.weights * self.allowed_edges

    @torch.no_grad()
    def separately_clipped(self) -> list[list[nn.Parameter]]:
        """The structure (A and the mask layer) learns from the structural terms alone, whose
        gradient is small beside the reconstruction's: clipped together, one large
        reconstruction step scaled the graph's step down with it, and on the pendulum at stride 3
        one seed of three never grew the shadow-length edges (0.03 / 0.05; 0.62 / 0.61 unclipped).
        """
        return [[self.weights, *self.mask_layer.parameters()]]

    def edge_strength(self) -> Tensor:
        """(n, n) mean |d f_j / d z_i| (block i moved as a whole, block mean of f_j) over
        standard-normal probes of the normalised label scale: ``|A_ij|`` for a linear SCM, and
        for the mask layer the effect a parent really has, however gate and MLP share it."""
        adjacency = self.adjacency().detach()
        strength = torch.zeros_like(adjacency)
        with torch.enable_grad():
            probes = self.probes.clone().requires_grad_(True)
            out = reduce(self.structural(probes, adjacency), "p n k -> p n", "mean")
            for j in range(self.concepts):
                (grad,) = torch.autograd.grad(out[:, j].sum(), probes, retain_graph=True)
                strength[:, j] = reduce(grad, "p n k -> p n", "sum").abs().mean(0)
        return strength * (adjacency != 0)

    def learned_graph(self) -> Tensor:
        """0/1 long (n, n): edges whose strength exceeds ``edge_threshold``."""
        return (self.edge_strength() > self.config.edge_threshold).long()

    def acyclicity(self) -> Tensor:
        """H(A) >= 0, zero iff A is a DAG; the training loop passes it to update_lagrangian."""
        return acyclicity(self.adjacency())

    @torch.no_grad()
    def update_lagrangian(self, h_value: float) -> None:
        """Dual ascent: lambda += rho h; rho grows unless h shrank by ``lagrangian_tol``."""
        cfg = self.config
        h = float(h_value)
        self.lagrangian_lambda += self.lagrangian_rho * h
        if h > cfg.lagrangian_tol * float(self.lagrangian_h_prev):
            rho = min(
                float(self.lagrangian_rho) * cfg.lagrangian_rho_growth, cfg.lagrangian_rho_max
            )
            self.lagrangian_rho.fill_(rho)
        self.lagrangian_h_prev.fill_(h)

    # ---- SCM maps on blocks (B, n, k) ----

    def _blocks(self, flat: Tensor) -> Tensor:
        return rearrange(flat, "b (n k) -> b n k", n=self.concepts)

    @staticmethod
    def _flat(blocks: Tensor) -> Tensor:
        return rearrange(blocks, "b n k -> b (n k)")

    def _mixing(self, adjacency: Tensor) -> Tensor:
        """M = (I - A^T)^{-1}: exogenous noise -> linear-SCM z."""
        eye = torch.eye(self.concepts, dtype=adjacency.dtype, device=adjacency.device)
        return torch.linalg.inv(eye - adjacency.T)

    def linear_abduct(self, z: Tensor, adjacency: Tensor | None = None) -> Tensor:
        """eps = (I - A^T) z per block channel, the inverse of :meth:`linear_scm`."""
        adjacency = self.adjacency() if adjacency is None else adjacency
        eye = torch.eye(self.concepts, dtype=adjacency.dtype, device=adjacency.device)
        return self._flat(torch.einsum("ij,bik->bjk", eye - adjacency, self._blocks(z)))

    def linear_scm(self, eps: Tensor, adjacency: Tensor | None = None) -> Tensor:
        """z = (I - A^T)^{-1} eps per block channel: (B, n*k) -> (B, n*k)."""
        adjacency = self.adjacency() if adjacency is None else adjacency
        mixing = self._mixing(adjacency)
        return self._flat(torch.einsum("ij,bjk->bik", mixing, self._blocks(eps)))

    def structural(self, z_blocks: Tensor, adjacency: Tensor) -> Tensor:
        """f_j(A_:j o z) for every concept j: (B, n, k) -> (B, n, k)."""
        return self.mask_layer(z_blocks, adjacency)

    # ---- posterior, prior, losses ----

    def exogenous(self, features: Tensor) -> Tensor:
        """Posterior mean of eps (B, n*k): only the intervened concept's block should move."""
        return self.encode(features)[0]

    def encode(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior (mu, logvar) of eps, each (B, n*k).

        The head predicts the endogenous mean m and eps's mean is its abduction
        ``(I - A^T) m`` (A held constant): the same family of diagonal posteriors over eps, but
        z's mean no longer moves whenever A does, so the encoder need not chase the graph.
        """
        mean_z, logvar = rearrange(self.heads(features), "b (two d) -> two b d", two=2)
        return self.linear_abduct(mean_z, self.adjacency().detach()), logvar.clamp(-12.0, 12.0)

    def kl(
        self, mu: Tensor, logvar: Tensor, labels: Tensor | None, adjacency: Tensor | None = None
    ) -> Tensor:
        """Per-sample KL (B,) in float32: q(eps) = N(mu, diag exp(logvar)) pushed through the
        SCM vs N(u_i 1_k, I) on labelled rows, KL(q(eps) || N(0, I)) elsewhere."""
        mu, logvar = mu.float(), logvar.float()
        unlabelled = 0.5 * (mu.square() + logvar.exp() - logvar - 1.0).sum(-1)
        labelled_rows = self.labelled_rows(labels, mu.shape[0], mu.device)
        if labels is None or not bool(labelled_rows.any()):
            return unlabelled
        adjacency = (self.adjacency().detach() if adjacency is None else adjacency).float()
        mixing = self._mixing(adjacency)
        var = self._blocks(logvar.exp())
        mean_z = torch.einsum("ij,bjk->bik", mixing, self._blocks(mu))
        prior = repeat(torch.nan_to_num(labels.float()), "b n -> b n k", k=self.concept_dim)
        trace = torch.einsum("ij,bjk->b", mixing.square(), var)
        # log det(M diag(s^2) M^T) = sum log s^2 - 2 log|det(I - A^T)|, summed over k channels
        eye = torch.eye(self.concepts, dtype=adjacency.dtype, device=adjacency.device)
        logdet_map = torch.linalg.slogdet(eye - adjacency.T).logabsdet
        logdet = logvar.sum(-1) - 2.0 * self.concept_dim * logdet_map
        sq = (mean_z - prior).square().sum((1, 2))
        conditioned = 0.5 * (trace + sq - self.latent_dim - logdet)
        return torch.where(labelled_rows, conditioned, unlabelled)

    def labelled_rows(self, labels: Tensor | None, batch: int, device: torch.device) -> Tensor:
        """Bool (B,): rows whose labels are used.

        The first ``round(label_fraction * B)`` rows (batches are shuffled, so this is a random
        fraction without touching the RNG) that have no NaN label. For a fixed labelled subset
        of a dataset, pass NaN labels for the unlabelled samples.
        """
        if labels is None:
            return torch.zeros(batch, dtype=torch.bool, device=device)
        if labels.shape != (batch, self.concepts):
            raise ValueError(f"labels must be (B, {self.concepts}), got {tuple(labels.shape)}")
        keep = round(self.config.label_fraction * batch)
        rows = torch.arange(batch, device=device) < keep
        return rows & torch.isfinite(labels).all(-1)

    def predict_labels(self, z: Tensor) -> Tensor:
        """Per-concept linear head: block i of z (B, n*k) -> u_i, giving (B, n)."""
        return torch.einsum("bnk,nk->bn", self._blocks(z), self.label_weight) + self.label_bias

    def forward(
        self, features: Tensor, labels: Tensor | None = None, step: int = 0
    ) -> LatentOutput:
        """``labels`` (B, n) are normalised concept labels (NaN rows: unlabelled); ``step`` is
        unused (no schedule: the DAG penalty follows update_lagrangian instead)."""
        cfg = self.config
        fixed = self.adjacency().detach()  # the ELBO terms hold A constant (module docstring)
        mu, logvar = self.encode(features)
        if self.training:  # sample and mean through the SCM in one pass
            eps = torch.cat([mu + torch.randn_like(mu) * (0.5 * logvar).exp(), mu])
            z, mean = self.linear_scm(eps, fixed).chunk(2)
        else:
            z = mean = self.linear_scm(mu, fixed)

        rows = self.labelled_rows(labels, features.shape[0], features.device)
        kl = self.kl(mu, logvar, labels, fixed).mean()
        if labels is not None and bool(rows.any()):
            pred = self.predict_labels(z)[rows].float()
            label = F.mse_loss(pred, labels[rows].float(), reduction="none").sum(-1).mean()
            aligned = repeat(
                torch.nan_to_num(labels.to(z.dtype)), "b n -> b (n k)", k=self.concept_dim
            )
            target = torch.where(rows[:, None], aligned, mean.detach())
        else:
            label = kl.new_zeros(())
            target = mean.detach()
        adjacency = self.adjacency()
        blocks = self._blocks(target)
        mask = (blocks - self.structural(blocks, adjacency)).square().sum((1, 2)).mean()
        sparsity = adjacency.abs().sum()
        h = acyclicity(adjacency)
        acyclic = self.lagrangian_lambda * h + 0.5 * self.lagrangian_rho * h.square()
        total = (
            cfg.w_kl * kl
            + cfg.w_label * label
            + cfg.w_mask * mask
            + cfg.w_sparsity * sparsity
            + acyclic
        )
        losses = {
            "kl": kl,
            "label": label,
            "mask": mask,
            "sparsity": sparsity,
            "acyclic": acyclic,
            "total": total,
        }
        return LatentOutput(z=z, mean=mean, losses=losses)

    def to_decoder(self, z: Tensor) -> Tensor:
        return self.out(z)

    @torch.no_grad()
    def sample_prior(
        self,
        labels: Tensor | None = None,
        num: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Decoder z (B, n*k) from the priors the KL uses: z ~ N(u_i 1_k, I) given labels
        (B, n), else eps ~ N(0, I) through the linear SCM (``num`` samples)."""
        device = self.weights.device
        if labels is not None:
            shape = (labels.shape[0], self.latent_dim)
            noise = torch.randn(shape, generator=generator, device=device)
            return repeat(labels.float(), "b n -> b (n k)", k=self.concept_dim) + noise
        if num is None:
            raise ValueError("sample_prior needs labels or num")
        eps = torch.randn((num, self.latent_dim), generator=generator, device=device)
        return self.linear_scm(eps)

    # ---- interventions ----

    def abduct(self, z: Tensor, adjacency: Tensor | None = None) -> Tensor:
        """Structural noise of z under the mask layer: eps_j = z_j - g_j(A_j o z), (B, n*k)."""
        adjacency = self.pruned_adjacency() if adjacency is None else adjacency
        blocks = self._blocks(z)
        return self._flat(blocks - self.structural(blocks, adjacency))

    def pruned_adjacency(self) -> Tensor:
        """A restricted to the learned graph: interventions follow the graph the model reports."""
        return self.adjacency() * self.learned_graph().to(self.weights.dtype)

    def do(self, z: Tensor, concept: int | Tensor, value: Tensor) -> Tensor:
        """do(z_i = value): (B, n*k) -> (B, n*k).

        Abduct every block's noise from z (under the thresholded graph), set block i, and
        recompute the descendants of i through the mask layer in topological order, so
        grandchildren see their parents' new values; ancestors and non-descendants keep their
        values exactly. ``concept`` is an int or (B,) long; ``value`` is (B,) (broadcast over
        the block) or (B, k). If the thresholded graph has a cycle there is no topological
        order: the reachable nodes are then updated by ``n`` rounds of fixed-point iteration
        (exact for a DAG, an approximation of the cyclic equilibrium otherwise).
        """
        b, n = z.shape[0], self.concepts
        graph = self.learned_graph()  # edge strengths: measured once per call
        adjacency = (self.adjacency() * graph.to(self.weights.dtype)).to(z.dtype)
        noise = self._blocks(self.abduct(z, adjacency))
        concept = torch.as_tensor(concept, device=z.device).long().expand(b)
        value = value.to(z.dtype)
        if value.dim() == 1:
            value = repeat(value, "b -> b k", k=self.concept_dim)
        target = F.one_hot(concept, n).bool()  # (B, n)
        descendants = reachability(graph).to(z.device)[concept] & ~target  # (B, n)

        blocks = self._blocks(z).clone()
        blocks[target] = value
        order = topological_order(graph)
        if order is None:
            order = list(range(n)) * n  # fixed-point sweeps
        for j in order:
            new = self.structural(blocks, adjacency)[:, j] + noise[:, j]
            blocks[:, j] = torch.where(descendants[:, j, None], new, blocks[:, j])
        return self._flat(blocks)

    def intervene(self, z: Tensor, actions: Tensor) -> Tensor:
        """Move the acted-on concept block by the action's step via do(): (B, n*k) -> (B, n*k).

        Steps are in normalised label units (measured on the data), which is where blocks sit
        to the extent that they follow their prior mean ``u_i 1_k``. An action that moves no
        concept returns z unchanged.
        """
        rows = torch.arange(z.shape[0], device=z.device)
        concept = self.action_targets[actions].clamp(min=0)
        step = self.action_shift[actions, concept].to(z.dtype)
        value = self._blocks(z)[rows, concept] + step[:, None]
        return self.do(z, concept, value)

    def after_step(self, step: int) -> None:
        """CausalVAE's augmented Lagrangian: tighten the acyclicity constraint every 100 steps."""
        if step % 100 == 99:
            with torch.no_grad():
                self.update_lagrangian(float(self.acyclicity()))

    def graph(self) -> Tensor:
        # CausalVAE's A[i, j] is the edge i -> j; the shared convention is [child, parent]
        return self.adjacency().detach().abs().clamp(max=1).T

    def synthesis_scores(self, z: Tensor, z_next: Tensor) -> Tensor:
        """The concept whose exogenous noise moved most, in its action's direction."""
        adjacency = self.pruned_adjacency()  # one edge-strength pass for both
        return self.retrieval_scores(self.abduct(z, adjacency), self.abduct(z_next, adjacency))

    @torch.no_grad()
    def calibrate(self, z: Tensor, actions: Tensor, z_next: Tensor) -> None:
        """Set each action's step to the median change of its concept's block mean between
        encoded pairs (B, n*k): the label-scale step is one grid step only to the extent that
        blocks follow their prior mean, and the decoder reads the latent scale. The pairs
        may sit on another device (the latent cache stays on the CPU)."""
        z, actions, z_next = (t.to(self.action_shift.device) for t in (z, actions, z_next))
        change = reduce(self._blocks(z_next.float() - z.float()), "b n k -> b n", "mean")
        for a in range(self.num_actions):
            target = int(self.action_targets[a])
            rows = actions == a
            if target >= 0 and bool(rows.any()):
                self.action_shift[a, target] = change[rows, target].median()

    def retrieval_scores(self, eps: Tensor, eps_next: Tensor) -> Tensor:
        """Scores (B, A): minus the squared distance between the exogenous change and each
        action's shift (its step on its concept's block), so the best action names the concept
        whose noise moved, the direction and the size. A learned alternative is
        ``vqcausal.models.latent.PairClassifier``."""
        delta = self._blocks(eps_next - eps)  # (B, n, k)
        shift = repeat(self.action_shift.to(delta.dtype), "a n -> a n k", k=self.concept_dim)
        return -(delta[:, None] - shift[None]).square().sum((2, 3))

    def pair_losses(self, labels: Tensor | None, actions: Tensor | None) -> dict[str, Tensor]:
        """Interventional invariance on label pairs: rows ``[x; x']`` with ``actions`` (B/2,).

        An atomic action moves one concept's exogenous noise; every other concept's structural
        residual ``e_j = u_j - f_j(u)`` must stay put. Squared residual changes are divided by
        the concept's mean squared label change over all pairs (scale-free: for a non-root, 1 = the
        graph explains none of its change). This is what orients edges: an observational fit
        on labels cannot (module docstring), and on the pendulum it prefers effect -> cause.
        """
        if labels is None or actions is None or self.config.w_invariance == 0:
            return {}
        half = actions.shape[0]
        finite = torch.isfinite(labels).all(-1)
        rows = (finite[:half] & finite[half:]).float()
        u = repeat(torch.nan_to_num(labels.float()), "b n -> b n k", k=self.concept_dim)
        residual = reduce(u - self.structural(u, self.adjacency()), "b n k -> b n", "mean")
        target = self.action_targets[actions]
        moved = F.one_hot(target.clamp(min=0), self.concepts).bool() & (target >= 0)[:, None]
        keep = (~moved).float() * rows[:, None]
        change = (residual[half:] - residual[:half]).square()
        # typical squared change of each concept over all pairs (a root only moves when acted on)
        label_change = (u[half:, :, 0] - u[:half, :, 0]).square() * rows[:, None]
        scale = label_change.sum(0) / rows.sum().clamp(min=1)
        ratio = (change * keep).sum(0) / keep.sum(0).clamp(min=1) / scale.clamp(min=1e-6)
        return {"invariance": self.config.w_invariance * ratio.sum()}
