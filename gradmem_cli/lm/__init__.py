"""The language-model layer: loading models, the one memory forward step, generation."""
