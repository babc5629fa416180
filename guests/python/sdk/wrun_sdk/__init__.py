"""The guest SDK for wrun recipe steps written in Python.

A step is a WebAssembly component, built with componentize-py, that exports
one or more *actions*: JSON in, JSON out. Register each action with
:func:`action` and re-export :class:`Actions` from the step module, which
componentize-py binds to the world's ``actions`` export::

    from dataclasses import dataclass

    from wrun_sdk import Actions, action, http, properties, secrets


    @dataclass
    class In:
        owner: str
        repo: str
        number: int


    @action("get-issue", input=In)
    def get_issue(data: In) -> dict:
        base = properties.require("github_api")          # `env` grant
        github = secrets.get("github")                    # `secrets` grant
        issue = http.get(
            f"{base}/repos/{data.owner}/{data.repo}/issues/{data.number}",
            headers={"Accept": "application/vnd.github+json"},
            auth=github,                                  # placeholder where the connection says
        ).raise_for_status().json()                       # `net` grant; HTTPS only
        return {"title": issue["title"]}

What a step may do is what its grants allow: :mod:`wrun_sdk.http` needs a
``net`` grant (HTTPS to the listed hosts only), :mod:`wrun_sdk.secrets` a
``secrets`` grant, :mod:`wrun_sdk.properties` an ``env`` grant;
:mod:`wrun_sdk.log` and :mod:`wrun_sdk.mask` are always available. There is
no filesystem, environment variable, argument or socket; stdout and stderr
go to the job log.

An :class:`Error` raised by an action becomes ``failed(message)``; an
:class:`InvalidInput` (also raised when the input does not fit the input
dataclass) becomes ``invalid-input``; an unknown action name becomes
``unknown-action``. Any other exception becomes ``failed("Type: message")``
with the traceback in the job log.
"""

from wrun_sdk.errors import Error, HTTPError, InvalidInput, SecretError
from wrun_sdk._actions import Actions, action
from wrun_sdk import http, log, mask, properties, secrets

__all__ = [
    "Actions",
    "Error",
    "HTTPError",
    "InvalidInput",
    "SecretError",
    "action",
    "http",
    "log",
    "mask",
    "properties",
    "secrets",
]
