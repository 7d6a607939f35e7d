"""vqcausal: causal representation learning on images with discrete (VQ) causal variables."""

__version__ = "0.1.0"
