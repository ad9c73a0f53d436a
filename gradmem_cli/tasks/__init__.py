"""Evaluation and training tasks: data generators and loaders, one module per task."""
