"""Atomic transition pairs (x, action, x'): x' is x with one factor moved one step.

Sampling is factor-level first (values, action, values'), images are rendered or looked up
afterwards, so the same code serves procedural renderers and on-disk files.

* Split by source image: every grid point (or stored image) belongs to train or test by a
  seeded hash, or by the split its files came with. A pair belongs to its source's split,
  and train pairs never *land* on a test image either, so no test source image is ever
  seen in training.
* Imbalance: with ratio ``rho`` the action frequencies fall geometrically from 1 (action 0)
  to 1/rho (action A-1), in ``action_order`` (default: the space's action order); rho = 1
  is uniform. ``value_imbalance`` does the same to every factor's values (value 0 most
  frequent). The action is drawn first and the source image is drawn among those the
  action can move, so the requested action frequencies hold exactly even at grid edges.
* Photo collections (:mod:`vqcausal.data.photos`, e.g. CelebA): the factor vectors are drawn
  as above (a vector in proportion to its photos of the split), then a photo of each: x among
  the photos of its vector, x' among those of the moved vector, both of the pair's split. The
  transitions carry the photo rows, and :meth:`TransitionSampler.images` loads those photos.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vqcausal.data.factors import hash_unit
from vqcausal.data.photos import PhotoSource
from vqcausal.data.source import ConceptScaler, GroundTruthSource
from vqcausal.errors import DataError

SPLITS = ("train", "test")


@dataclass
class TransitionConfig:
    """How pairs are drawn; every field is reproducible from ``seed``."""

    imbalance: float = 1.0
    value_imbalance: float = 1.0
    test_fraction: float = 0.1
    seed: int = 0
    action_order: list[int] | None = None
    rare_action: str = ""  # e.g. "object_hue+": its training pairs come from a fixed set ...
    rare_examples: int = 0  # ... of this many distinct pairs (0: off)
    # test pairs draw actions uniformly whatever the training imbalance, so a rare action is
    # measured on as many held-out pairs as a common one (False: test mirrors training)
    balanced_test: bool = True

    def __post_init__(self) -> None:
        if self.imbalance < 1 or self.value_imbalance < 1:
            raise DataError("imbalance ratios must be >= 1 (1 means uniform)")
        if not 0 < self.test_fraction < 1:
            raise DataError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.rare_examples < 0:
            raise DataError(f"rare_examples must be >= 0, got {self.rare_examples}")
        if bool(self.rare_action) != (self.rare_examples > 0):
            raise DataError(
                "rare_action and rare_examples go together: name the action and give "
                "rare_examples >= 1, or leave both unset"
            )


@dataclass
class Transitions:
    """A batch of factor-level transitions; ``images`` adds the pixels."""

    values: torch.Tensor  # (B, K) long
    actions: torch.Tensor  # (B,) long
    values_next: torch.Tensor  # (B, K) long
    # photo collections: which photo is x and which x' (None where the values name the image)
    rows: torch.Tensor | None = None  # (B,) long
    rows_next: torch.Tensor | None = None  # (B,) long

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    def __getitem__(self, index: slice | torch.Tensor) -> Transitions:
        """The transitions at ``index`` (a slice, indices or a mask), every field alike."""
        fields = (self.values, self.actions, self.values_next, self.rows, self.rows_next)
        return Transitions(*(None if f is None else f[index] for f in fields))

    @staticmethod
    def gather(parts: list[tuple[torch.Tensor, Transitions]], n: int) -> Transitions:
        """n transitions put together from parts, each with the positions it fills."""
        first = parts[0][1]
        names = ("values", "actions", "values_next", "rows", "rows_next")
        out = {}
        for name in names:
            like = getattr(first, name)
            if like is None:
                out[name] = None
                continue
            out[name] = like.new_empty((n, *like.shape[1:]))
            for where, part in parts:
                out[name][where] = getattr(part, name)
        return Transitions(**out)


def geometric_weights(n: int, ratio: float) -> torch.Tensor:
    """n probabilities falling geometrically from 1 to 1/ratio, normalised."""
    if n == 1:
        return torch.ones(1, dtype=torch.float64)
    weights = torch.tensor(ratio, dtype=torch.float64) ** (
        -torch.arange(n, dtype=torch.float64) / (n - 1)
    )
    return weights / weights.sum()


class TransitionSampler:
    """Draws reproducible transition batches from a source."""

    def __init__(self, source: GroundTruthSource, config: TransitionConfig | None = None) -> None:
        self.config = config or TransitionConfig()
        if isinstance(source, PhotoSource) and not source.split_given:  # split by our hash
            unit = hash_unit(source.split_keys(), self.config.seed)
            source = source.with_split((unit < self.config.test_fraction).long())
        self.source = source  # a split-less photo collection: our view of it, with our split
        self.space = source.space
        num_actions = self.space.num_actions
        order = self.config.action_order or list(range(num_actions))
        if sorted(order) != list(range(num_actions)):
            raise DataError(f"action_order must be a permutation of 0..{num_actions - 1}")
        weights = geometric_weights(num_actions, self.config.imbalance)
        self.action_probs = torch.empty_like(weights)
        self.action_probs[torch.tensor(order)] = weights
        self.value_weights = [
            geometric_weights(size, self.config.value_imbalance) for size in self.space.sizes
        ]
        self._photos = source if isinstance(source, PhotoSource) else None
        self._stored = source.stored_values()
        if self._photos is not None:
            self._prepare_photos()
        elif self._stored is not None:
            self._prepare_stored()
        self.rare_action: int | None = None
        self.rare_pairs: Transitions | None = None  # the k distinct rare training pairs
        if self.config.rare_action:
            self._prepare_rare()

    # ---- split ---------------------------------------------------------------------
    def split_of(self, values: torch.Tensor) -> torch.Tensor:
        """0 (train) or 1 (test) for each factor vector."""
        if self._stored is not None and self._stored_split is not None:
            rows = self.source.rows_of(values)  # type: ignore[attr-defined]
            split = self._stored_split[rows.clamp(min=0)]
            return torch.where(rows >= 0, split, torch.ones_like(split))
        unit = hash_unit(self.space.ravel(values), self.config.seed)
        return (unit < self.config.test_fraction).long()

    def split_sizes(self, chunk: int = 1 << 20) -> dict[str, int]:
        """Images in each split: photos, stored images, or every grid point of a renderer."""
        if self._photos is not None:
            split = self._photos.photo_split
            return {name: int((split == s).sum()) for s, name in enumerate(SPLITS)}
        if self._stored is not None:
            split = self.split_of(self._stored)
            return {name: int((split == s).sum()) for s, name in enumerate(SPLITS)}
        test = 0
        for start in range(0, self.space.num_values, chunk):
            index = torch.arange(start, min(start + chunk, self.space.num_values))
            test += int(self.split_of(self.space.unravel(index)).sum())
        return {"train": self.space.num_values - test, "test": test}

    # ---- stored (sparse) sources ------------------------------------------------------
    def _value_weight(self, values: torch.Tensor) -> torch.Tensor:
        """Each factor vector's weight under ``value_imbalance`` (the product over factors)."""
        weight = torch.ones(values.shape[0], dtype=torch.float64)
        for k in range(self.space.num_factors):
            weight *= self.value_weights[k][values[:, k]]
        return weight

    def _prepare_stored(self) -> None:
        """Per action, the stored rows it can move onto another stored row."""
        stored = self._stored
        given = self.source.stored_split()
        self._stored_split = None if given is None else given.long()
        row_split = self.split_of(stored)
        row_weight = self._value_weight(stored)
        self._candidates: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        for a in range(self.space.num_actions):
            actions = torch.full((stored.shape[0],), a, dtype=torch.long)
            nxt, valid = self.space.apply(stored, actions)
            target_rows = self.source.rows_of(nxt)  # type: ignore[attr-defined]
            ok = valid & (target_rows >= 0)
            for s in range(2):
                keep = ok & (row_split == s)
                if s == 0:  # train pairs never land on a test image
                    keep &= row_split[target_rows.clamp(min=0)] == 0
                rows = keep.nonzero().squeeze(1)
                self._candidates[(a, s)] = (rows, row_weight[rows])

    def _prepare_photos(self) -> None:
        """Per action and split, the factor vectors it moves onto a vector with photos of the
        same split, weighted by their photos there (uniform over photos) and value weights."""
        photos, vectors = self._photos, self._stored
        assert photos is not None and vectors is not None
        self._stored_split = None  # the split is the photos', not the vectors'
        value_weight = self._value_weight(vectors)
        have = [photos.photo_counts(vectors, s) for s in range(2)]  # the same for every action
        self._candidates = {}
        for a in range(self.space.num_actions):
            actions = torch.full((vectors.shape[0],), a, dtype=torch.long)
            nxt, valid = self.space.apply(vectors, actions)
            for s in range(2):
                keep = valid & (have[s] > 0) & (photos.photo_counts(nxt, s) > 0)
                rows = keep.nonzero().squeeze(1)
                self._candidates[(a, s)] = (rows, value_weight[rows] * have[s][rows])

    def _sample_stored(
        self, actions: torch.Tensor, split: int, generator: torch.Generator
    ) -> torch.Tensor:
        values = torch.empty(actions.shape[0], self.space.num_factors, dtype=torch.long)
        for a in actions.unique().tolist():
            where = (actions == a).nonzero().squeeze(1)
            rows, weight = self._candidates[(a, split)]
            if rows.numel() == 0:
                name = self.space.action_names[a]
                raise DataError(
                    f"{self.source.name}: no {SPLITS[split]} image can take action '{name}'"
                )
            pick = torch.multinomial(weight, where.numel(), replacement=True, generator=generator)
            values[where] = self._stored[rows[pick]]
        return values

    # ---- full-grid sources ----------------------------------------------------------------
    def _sample_grid(
        self, actions: torch.Tensor, split: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Rejection-sample grid points of the split from which each action stays valid."""
        n = actions.shape[0]
        values = torch.empty(n, self.space.num_factors, dtype=torch.long)
        todo = torch.arange(n)
        for _ in range(1000):
            cand = self.space.sample_values(todo.numel(), generator, self.value_weights)
            nxt, valid = self.space.apply(cand, actions[todo])
            ok = valid & (self.split_of(cand) == split)
            if split == 0:
                ok &= self.split_of(nxt) == 0
            values[todo[ok]] = cand[ok]
            todo = todo[~ok]
            if todo.numel() == 0:
                return values
        raise DataError(
            f"{self.source.name}: could not draw {SPLITS[split]} pairs; check the split"
        )

    # ---- one action held at k training pairs ----------------------------------------------
    @property
    def rare_values(self) -> torch.Tensor | None:
        """(k, K) source factor vectors of the k rare training pairs (None: mode off)."""
        return None if self.rare_pairs is None else self.rare_pairs.values

    def _prepare_rare(self) -> None:
        """Draw the fixed set of ``rare_examples`` distinct training pairs of ``rare_action``.

        Drawn with the ordinary train-split sampler (so value imbalance and the split apply)
        from a generator seeded by ``seed`` and the action alone: the set does not depend on
        how many batches were drawn before, and it is the same in every process. A pair is
        its source image: a grid point, or for photos the two photos.
        """
        names = list(self.space.action_names)
        name, k = self.config.rare_action, self.config.rare_examples
        if name not in names:
            raise DataError(
                f"{self.source.name}: unknown rare_action '{name}'; choose from {', '.join(names)}"
            )
        a = names.index(name)
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + 7907 * (a + 1))
        chunk = max(4 * k, 256)
        found: dict[tuple[int, ...], Transitions] = {}  # pair -> it, in order of discovery
        stale = 0
        while len(found) < k and stale < 20:
            t = self._draw(torch.full((chunk,), a, dtype=torch.long), 0, generator)
            before = len(found)
            keys = self.space.ravel(t.values).tolist()
            if t.rows is not None and t.rows_next is not None:
                keys = list(zip(t.rows.tolist(), t.rows_next.tolist(), strict=True))
            for i, key in enumerate(keys):
                key = key if isinstance(key, tuple) else (key,)
                if key not in found:
                    found[key] = t[i : i + 1]
                    if len(found) == k:
                        break
            stale = stale + 1 if len(found) == before else 0
        if len(found) < k:
            raise DataError(
                f"{self.source.name}: action '{name}' has only {len(found)} distinct training "
                f"pairs, fewer than rare_examples = {k}"
            )
        self.rare_action = a
        pairs = list(found.values())
        self.rare_pairs = Transitions.gather(
            [(torch.tensor([i]), p) for i, p in enumerate(pairs)], len(pairs)
        )

    # ---- public -----------------------------------------------------------------------
    def _draw(self, actions: torch.Tensor, split: int, generator: torch.Generator) -> Transitions:
        """Pairs of a split for the given actions (the rare action's fixed set aside)."""
        if self._stored is not None:
            values = self._sample_stored(actions, split, generator)
        else:
            values = self._sample_grid(actions, split, generator)
        values_next, valid = self.space.apply(values, actions)
        assert bool(valid.all()), "sampler produced an invalid move"
        if self._photos is None:
            return Transitions(values, actions, values_next)
        rows = self._photos.photos_of(values, split, generator)
        rows_next = self._photos.photos_of(values_next, split, generator)
        assert bool((rows >= 0).all() and (rows_next >= 0).all()), "a vector without photos"
        return Transitions(values, actions, values_next, rows, rows_next)

    def sample(
        self,
        n: int,
        split: str = "train",
        generator: torch.Generator | None = None,
        actions: torch.Tensor | None = None,
    ) -> Transitions:
        """n transitions of a split; actions follow ``action_probs`` unless given (test pairs:
        uniform over actions when ``balanced_test``)."""
        if split not in SPLITS:
            raise DataError(f"unknown split '{split}'; choose from {', '.join(SPLITS)}")
        s = SPLITS.index(split)
        if generator is None:
            generator = torch.Generator().manual_seed(self.config.seed)
        if actions is None:
            probs = self.action_probs
            if s == 1 and self.config.balanced_test:
                probs = torch.full_like(probs, 1.0 / len(probs))
            actions = torch.multinomial(probs, n, replacement=True, generator=generator)
        actions = actions.long()
        if s == 1 or self.rare_pairs is None:
            return self._draw(actions, s, generator)
        # training pairs: the rare action's from its fixed set, every other action's as usual
        rare = actions == self.rare_action
        others, chosen = (~rare).nonzero().squeeze(1), rare.nonzero().squeeze(1)
        parts = []
        if others.numel():
            parts.append((others, self._draw(actions[others], 0, generator)))
        if chosen.numel():
            pick = torch.randint(len(self.rare_pairs), (chosen.numel(),), generator=generator)
            parts.append((chosen, self.rare_pairs[pick]))
        return Transitions.gather(parts, len(actions))

    def images(self, transitions: Transitions) -> tuple[torch.Tensor, torch.Tensor]:
        """Render (x, x') for a batch of transitions as uint8 (B, C, H, W); a photo
        collection's are the photos the sampler drew."""
        if transitions.rows is not None and transitions.rows_next is not None:
            assert self._photos is not None
            imgs = self._photos.load_rows(torch.cat([transitions.rows, transitions.rows_next]))
        else:
            imgs = self.source.render(torch.cat([transitions.values, transitions.values_next]))
        return imgs[: len(transitions)], imgs[len(transitions) :]

    def batch(
        self, n: int, split: str = "train", generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """A training batch: x, x_next (uint8), action, values, values_next."""
        t = self.sample(n, split, generator)
        x, x_next = self.images(t)
        return {
            "x": x,
            "x_next": x_next,
            "action": t.actions,
            "values": t.values,
            "values_next": t.values_next,
        }


def action_concept_steps(
    sampler: TransitionSampler, scaler: ConceptScaler, pairs: int = 4096, seed: int = 0
) -> tuple[list[int], list[float]]:
    """Which concept each action moves (-1: none; matched by factor name) and its typical
    signed change in normalised label units (the median: a cyclic factor's wrap-around jump
    would skew a mean), measured on training pairs: what an ``scm`` intervention should move,
    and by how much (one pendulum step is ~0.12 std, not 1)."""
    concept_names = scaler.source.concept_names
    factor_names = sampler.space.names
    num_actions = len(sampler.space.action_names)
    targets = [
        concept_names.index(factor_names[a // 2]) if factor_names[a // 2] in concept_names else -1
        for a in range(num_actions)
    ]
    t = sampler.sample(pairs, "train", torch.Generator().manual_seed(seed))
    change = scaler.normalise(t.values_next) - scaler.normalise(t.values)
    steps = []
    for a, target in enumerate(targets):
        rows = t.actions == a
        steps.append(float(change[rows, target].median()) if target >= 0 and rows.any() else 0.0)
    return targets, steps
