"""Secret handles.

A step never sees a secret value. It asks for a handle by the step-local
alias its ``secrets`` grant names, and puts the handle's placeholder where
the connection says the credential belongs. The usual way is
``http.get(url, auth=secret)``, which reads the placement and does the right
thing. The host replaces the placeholder with the value at send time, after
checking the request.
"""

from componentize_py_types import Err

try:
    from wit_world.imports import secrets as _raw
except ImportError:  # built for a step that does not use secrets
    _raw = None

from wrun_sdk.errors import SecretError, not_built_with


class Secret:
    """A handle to one connection, valid for the current job."""

    __slots__ = ("_handle",)

    def __init__(self, handle: "_raw.Secret") -> None:
        self._handle = handle

    @property
    def alias(self) -> str:
        """The step-local alias this handle was obtained with."""
        return self._handle.alias()

    @property
    def placeholder(self) -> str:
        """The placeholder to put where the credential belongs.

        It is fresh for every job and means nothing outside the host. Put
        anywhere but the connection's placement, it makes the host refuse
        the whole request.
        """
        return self._handle.placeholder()

    @property
    def placement(self) -> str:
        """Where the connection allows the credential.

        ``header:NAME=TEMPLATE`` (``{}`` marks the credential, as in
        ``header:Authorization=Bearer {}``), ``basic``, ``query:PARAM`` or
        ``body:FIELD``.
        """
        return self._handle.placement()

    def __repr__(self) -> str:
        return f"Secret(alias={self.alias!r})"


def get(alias: str) -> Secret:
    """Gets the handle for a step-local alias.

    Raises :class:`wrun_sdk.errors.SecretError` if the step has no
    ``secrets`` grant for ``alias`` or no connection is bound to it.
    """
    if _raw is None:
        raise not_built_with("wrun:recipe/secrets", "secrets")
    try:
        return Secret(_raw.get(alias))
    except Err as error:
        reason = error.value
        if isinstance(reason, _raw.SecretError_NotGranted):
            raise SecretError(f"secret not granted: {reason.value}") from None
        raise SecretError(f"secret unavailable: {reason.value}") from None
