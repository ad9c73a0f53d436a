"""Writers turn token segments into memory vectors: the interface (:mod:`~gradmem_cli.writers.base`),
the test-time optimiser and the trained write rule, and the settings they run under
(:mod:`~gradmem_cli.writers.config`)."""
