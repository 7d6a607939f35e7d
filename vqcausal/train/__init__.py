"""Training: the accelerate loop, its stages and checkpoints."""
