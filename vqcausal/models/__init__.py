"""Models: encoder/decoder, quantizer, causal transition, retrieval and baselines."""
