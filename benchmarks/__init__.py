"""Benchmarks of the scoring service and its peers (``python -m benchmarks.run``)."""
