"""Factors, ground-truth sources (procedural and on-disk) and transition pairs.

Build a source from a config with :func:`vqcausal.data.registry.load_source`.
"""

from vqcausal.data.factors import Factor, FactorSpace
from vqcausal.data.source import GroundTruthSource, IndexedSource
from vqcausal.data.transitions import TransitionConfig, Transitions, TransitionSampler

__all__ = [
    "Factor",
    "FactorSpace",
    "GroundTruthSource",
    "IndexedSource",
    "TransitionConfig",
    "TransitionSampler",
    "Transitions",
]
