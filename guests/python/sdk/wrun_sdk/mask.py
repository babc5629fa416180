"""Marking values the step computed as sensitive."""

from wit_world.imports import mask as _raw


def mark(value: str) -> None:
    """Marks ``value`` as sensitive for the rest of the job.

    Use it for credentials the step obtained itself, such as an access token
    from a token endpoint: from then on the host masks the value in logs,
    outputs, errors and history. The host ignores values shorter than four
    bytes.
    """
    _raw.mark(str(value))
