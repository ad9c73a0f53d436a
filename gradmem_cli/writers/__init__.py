"""Writers turn token segments into memory vectors (:mod:`~gradmem_cli.writers.base` is the
interface, :func:`~gradmem_cli.writers.base.writer_for` picks one), under settings from
:mod:`~gradmem_cli.writers.config`."""
