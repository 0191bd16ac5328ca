"""Evaluation: metrics, consistency probes, likelihood, speed, compare harness (in progress)."""
