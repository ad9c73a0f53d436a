"""One exception type for every expected failure, so the CLI can print one line and exit 1."""


class GradmemError(Exception):
    """A user-facing error: bad input, a bad file, a model that cannot be loaded.

    The CLI prints ``error: <message>`` on stderr and exits with code 1; the traceback is
    shown only when ``GRADMEM_DEBUG=1``.
    """


class UsageError(GradmemError):
    """An invalid combination of arguments or option values (exit code 2, like click)."""
