"""Errors a user can act on. The CLI prints them as one line and exits with code 2."""


class SciarError(Exception):
    """A problem with the user's input, files or options (not a bug in sciar)."""


class CheckpointError(SciarError):
    """A checkpoint directory is missing, truncated, foreign or inconsistent."""


class DataError(SciarError):
    """Input data that cannot be used: empty, malformed, wrong type."""
