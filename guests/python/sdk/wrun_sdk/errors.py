"""The errors an action raises, and the SDK raises to an action.

An action fails by raising :class:`Error` (or a subclass): the host records
its message as the step's ``failed`` reason, masked like everything else the
guest says. :class:`InvalidInput` becomes ``invalid-input`` instead.
"""


class Error(Exception):
    """An error an action raises, or gets from the SDK.

    It is a message, plus the HTTP status when it came from
    :meth:`wrun_sdk.http.Response.raise_for_status`.
    """

    def __init__(self, message: str, status: "int | None" = None) -> None:
        super().__init__(message)
        self.message = str(message)
        self.status = status

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def context(self, context: str) -> "Error":
        """Prefixes the message with some context, as in ``context: message``."""
        self.message = f"{context}: {self.message}"
        self.args = (self.message,)
        return self


class InvalidInput(Error):
    """The action's input does not have the shape the action needs.

    The SDK raises it when the input JSON does not parse or does not fit the
    action's input dataclass; an action may raise it too. The host reports
    it as ``invalid-input``.
    """


class HTTPError(Error):
    """An HTTP response with status 400 or above, from ``raise_for_status``."""


class SecretError(Error):
    """A secret handle could not be had: not granted, or no connection bound."""


def not_built_with(interface: str, grant: str) -> Error:
    """The error of a call into an interface the component was built without.

    ``wrun build`` trims a step's world to what the step imports from
    ``wrun_sdk``; a step that reaches an interface another way gets this.
    """
    return Error(
        f"this component was built without {interface} (no use of it was found "
        f"in the step: import it from wrun_sdk, and give the step a `{grant}` grant)"
    )
