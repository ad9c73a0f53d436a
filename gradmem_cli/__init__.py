"""gradmem: write a document into a few memory vectors by test-time gradient descent."""

__version__ = "0.1.0"
