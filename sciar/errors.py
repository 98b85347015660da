"""Errors a user can act on. The CLI prints them as one line and exits with code 2."""


class SciarError(Exception):
    """A problem with the user's input, files or options (not a bug in sciar)."""


class CheckpointError(SciarError):
    """A checkpoint directory is missing, truncated, foreign or inconsistent."""


class DataError(SciarError):
    """Input data that cannot be used: empty, malformed, wrong type."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-blank line of ``exc``'s message (at most ``limit`` characters), or its type's name when it
    has none: library errors carry tracebacks of their own, tables of values or nothing at all, and a user
    reads one line."""
    line = next((s.strip() for s in str(exc).splitlines() if s.strip()), "")
    if len(line) > limit:
        line = line[: limit - 3].rstrip() + "..."
    return line or type(exc).__name__


def describe(exc: BaseException, limit: int = 300) -> str:
    """:func:`one_line` for a user: a :class:`SciarError` speaks for itself; any other exception (a bug, or a
    library's failure) is named by its type too, e.g. ``ValueError: math domain error``."""
    if isinstance(exc, SciarError):
        return one_line(exc, limit)
    msg = one_line(exc, limit)
    return msg if msg == type(exc).__name__ else f"{type(exc).__name__}: {msg}"
