"""Metrics: retrieval, interventions, reconstruction."""
