"""Non-secret properties of the environment the job runs in.

Properties are things like a base URL that differ between dev, test and
prod. A step sees only the names its ``env`` grant lists.
"""

from typing import Optional

try:
    from wit_world.imports import properties as _raw
except ImportError:  # built for a step that does not use properties
    _raw = None

from wrun_sdk.errors import Error, not_built_with


def _properties():
    if _raw is None:
        raise not_built_with("wrun:recipe/properties", "env")
    return _raw


def get(name: str, default: Optional[str] = None) -> Optional[str]:
    """Gets a property, or ``default`` if it is not granted or has no value."""
    value = _properties().get(name)
    return default if value is None else value


def require(name: str) -> str:
    """Gets a property the step cannot do without; raises :class:`Error` if unset."""
    value = _properties().get(name)
    if value is None:
        raise Error(
            f"property `{name}` is not set (is it in the step's `env` grant "
            "and defined for this environment?)"
        )
    return value
