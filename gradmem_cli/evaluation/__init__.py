"""Evaluation: the harness that runs a task under every condition, and the answer metrics."""
