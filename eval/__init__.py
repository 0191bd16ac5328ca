"""Evaluation: sample-quality metrics, consistency probes, speed, sanity samplers and the `compare` harness."""
