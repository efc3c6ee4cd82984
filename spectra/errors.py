"""The one exception type for bad user input.

The CLI turns a `SpectraError` into a single line on stderr and exit status 2; Python users catch
it like any ValueError.
"""


class SpectraError(ValueError):
    """Bad input: a missing file, a malformed spec, a value out of range, a model that misbehaves."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (for one-line errors about user code)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def os_error(exc: OSError) -> str:
    """A file-system error as one line: what failed and on which path."""
    what = exc.strerror or type(exc).__name__
    where = ", ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    return f"{what}: {where}" if where else first_line(exc) or what
