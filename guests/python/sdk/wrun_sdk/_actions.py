"""The action registry and the ``actions`` export componentize-py calls.

An action is a function from one JSON value to a JSON-serialisable value,
registered with :func:`action`. The step module re-exports :class:`Actions`
(``from wrun_sdk import Actions``), which componentize-py binds to the
world's ``actions`` export.
"""

import dataclasses
import json
import sys
import traceback
import types
import typing
from typing import Any, Callable, Dict, List, Optional

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.actions import (
    ActionError_Failed,
    ActionError_InvalidInput,
    ActionError_UnknownAction,
)

from wrun_sdk.errors import Error, InvalidInput

# The registered actions, in the order they were registered.
_ACTIONS: Dict[str, Callable[[Any], Any]] = {}


def action(name: str, input: Optional[type] = None) -> Callable[[Callable], Callable]:
    """Registers a function as the action ``name``.

    The function takes one argument: the input JSON as Python values, or,
    if ``input`` is a dataclass, an instance of it built from the input
    object (a missing field, or a field of the wrong type, is an
    ``invalid-input`` error, like serde in the Rust SDK). It returns any
    JSON-serialisable value (dataclasses included); raising
    :class:`wrun_sdk.Error` fails the action with its message::

        @action("greet")
        def greet(data):
            return {"hello": data["name"]}
    """
    if not isinstance(name, str) or not name:
        raise ValueError("an action name must be a non-empty string")
    if input is not None and not dataclasses.is_dataclass(input):
        raise TypeError("action input must be a dataclass type")

    def register(function: Callable) -> Callable:
        if name in _ACTIONS:
            raise ValueError(f"action {name!r} is registered twice")
        if input is None:
            _ACTIONS[name] = function
        else:
            _ACTIONS[name] = lambda value: function(_convert(value, input, "input"))
        return function

    return register


def names() -> List[str]:
    """The registered action names, in registration order."""
    return list(_ACTIONS)


def run(name: str, input_json: str) -> str:
    """Runs a registered action on a JSON document; returns a JSON document.

    Raises :class:`KeyError` for an unknown action, :class:`InvalidInput`
    and :class:`Error` as the action does. Any other exception becomes an
    :class:`Error` whose message names its type, with the traceback written
    to stderr (which the host puts, masked, in the job log).
    """
    function = _ACTIONS[name]
    try:
        value = json.loads(input_json)
    except ValueError as error:
        raise InvalidInput(f"the input is not JSON: {error}") from None
    try:
        output = function(value)
    except Error:
        raise
    except Exception as error:
        traceback.print_exc(file=sys.stderr)
        raise Error(f"{type(error).__name__}: {error}") from None
    try:
        return json.dumps(output, default=_to_json, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as error:
        raise Error(f"the action's output cannot be serialised: {error}") from None


class Actions(exports.Actions):
    """The ``wrun:recipe/actions`` export: names and call."""

    def names(self) -> List[str]:
        """Names of the registered actions."""
        return names()

    def call(self, action: str, input: str) -> str:
        """Runs an action, mapping SDK errors onto the WIT ``action-error``."""
        if action not in _ACTIONS:
            raise Err(ActionError_UnknownAction(action))
        try:
            return run(action, input)
        except InvalidInput as error:
            raise Err(ActionError_InvalidInput(error.message)) from None
        except Error as error:
            raise Err(ActionError_Failed(error.message)) from None


def _to_json(value: Any) -> Any:
    """``json.dumps`` fallback: dataclasses become objects, tuples lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", None) or str(kind)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _convert(value: Any, kind: Any, path: str) -> Any:
    """Checks a JSON value against a type annotation and builds dataclasses.

    Supports ``Any``, ``str``, ``int``, ``float``, ``bool``, ``Optional`` and
    unions, ``list[T]``, ``tuple[...]``, ``dict[str, T]`` and nested
    dataclasses; other annotations are taken as they are.
    """
    if kind is Any or kind is object:
        return value
    origin = typing.get_origin(kind)
    arguments = typing.get_args(kind)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in arguments:
            return None
        errors = []
        for option in arguments:
            if option is type(None):
                continue
            try:
                return _convert(value, option, path)
            except InvalidInput as error:
                errors.append(error.message)
        raise InvalidInput(errors[0] if len(errors) == 1 else f"{path}: no variant matched {_json_type(value)}")
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise InvalidInput(f"{path}: expected an object, got {_json_type(value)}")
        hints = typing.get_type_hints(kind)
        fields = {}
        for field in dataclasses.fields(kind):
            hint = hints.get(field.name, Any)
            if field.name in value:
                fields[field.name] = _convert(value[field.name], hint, f"{path}.{field.name}")
            elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                if _allows_none(hint):
                    fields[field.name] = None
                else:
                    raise InvalidInput(f"{path}: missing field `{field.name}`")
        return kind(**fields)
    if origin in (list, List):
        if not isinstance(value, list):
            raise InvalidInput(f"{path}: expected an array, got {_json_type(value)}")
        item = arguments[0] if arguments else Any
        return [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list):
            raise InvalidInput(f"{path}: expected an array, got {_json_type(value)}")
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return tuple(_convert(v, arguments[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(arguments):
            raise InvalidInput(f"{path}: expected an array of {len(arguments)}, got {len(value)}")
        return tuple(_convert(v, t, f"{path}[{i}]") for i, (v, t) in enumerate(zip(value, arguments)))
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise InvalidInput(f"{path}: expected an object, got {_json_type(value)}")
        item = arguments[1] if len(arguments) == 2 else Any
        return {k: _convert(v, item, f"{path}.{k}") for k, v in value.items()}
    if kind is bool:
        if not isinstance(value, bool):
            raise InvalidInput(f"{path}: expected a boolean, got {_json_type(value)}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"{path}: expected an integer, got {_json_type(value)}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidInput(f"{path}: expected a number, got {_json_type(value)}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise InvalidInput(f"{path}: expected a string, got {_json_type(value)}")
        return value
    if kind in (list, dict):
        if not isinstance(value, kind):
            raise InvalidInput(f"{path}: expected {_type_name(kind)}, got {_json_type(value)}")
        return value
    return value


def _allows_none(kind: Any) -> bool:
    origin = typing.get_origin(kind)
    if origin is typing.Union or origin is types.UnionType:
        return type(None) in typing.get_args(kind)
    return kind is Any
