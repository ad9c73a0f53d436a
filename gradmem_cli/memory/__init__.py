"""Memory files and their inputs: the ``.gmem`` format, safe file writes, input documents."""
