"""Learning to write: meta-training a backbone and its writer through the WRITE loop."""
