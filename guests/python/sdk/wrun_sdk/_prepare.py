"""Pure request preparation: URLs, secret placements, body encoding.

Nothing here touches the component bindings, so it runs (and is unit
tested) on an ordinary CPython. It mirrors the Rust SDK's ``http.rs``.
"""

import json as _json
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple, Union

from wrun_sdk.errors import Error

Headers = List[Tuple[str, str]]

# The body of a request before it is encoded: raw bytes, a JSON value, or
# form fields.
_EMPTY = object()


@dataclass
class Body:
    """A request body before encoding: ``kind`` is empty, raw, json or form."""

    kind: str = "empty"
    raw: bytes = b""
    json: Any = None
    form: List[Tuple[str, str]] = field(default_factory=list)


@dataclass
class Prepared:
    """A request ready for the wire."""

    method: str
    scheme: str
    authority: str
    path_with_query: str
    headers: Headers
    body: Optional[bytes]
    # The URL without its query, for messages.
    display_url: str


@dataclass
class Placement:
    """Where a secret's placeholder goes: ``kind`` is header, basic, query or body."""

    kind: str
    name: str = ""
    template: str = "{}"


def parse_placement(placement: str) -> Placement:
    """Parses ``header:NAME=TEMPLATE``, ``header:NAME``, ``basic``, ``query:P``, ``body:F``."""
    invalid = Error(f"unsupported secret placement `{placement}`")
    if placement == "basic":
        return Placement("basic")
    kind, sep, rest = placement.partition(":")
    if not sep or not rest:
        raise invalid
    if kind == "header":
        name, eq, template = rest.partition("=")
        if not eq:
            return Placement("header", rest, "{}")
        if not name or "{}" not in template:
            raise invalid
        return Placement("header", name, template)
    if kind in ("query", "body"):
        return Placement(kind, rest)
    raise invalid


def strip_fragment(url: str) -> str:
    """Drops a ``#fragment``, which is never sent."""
    return url.split("#", 1)[0]


@dataclass
class UrlParts:
    """The parts of an absolute URL that ``wasi:http`` wants."""

    scheme: str
    authority: str
    # The path alone, for messages.
    path: str
    # The path and query, starting with ``/``.
    path_with_query: str


def split_url(url: str) -> UrlParts:
    """Splits ``scheme://authority/path?query`` (without a fragment)."""

    def invalid(why: str) -> Error:
        return Error(f"invalid URL `{url}`: {why}")

    scheme, sep, rest = url.partition("://")
    if not sep:
        raise invalid("expected an absolute URL such as https://host/path")
    if not scheme or not scheme[0].isascii() or not scheme[0].isalpha() or not all(
        c.isascii() and (c.isalnum() or c in "+-.") for c in scheme
    ):
        raise invalid("bad scheme")
    end = len(rest)
    for i, c in enumerate(rest):
        if c in "/?":
            end = i
            break
    authority, tail = rest[:end], rest[end:]
    if not authority:
        raise invalid("no host")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in tail):
        raise invalid("whitespace or control characters in the path")
    path = tail.split("?", 1)[0] or "/"
    path_with_query = tail if tail.startswith("/") else "/" + tail
    return UrlParts(scheme, authority, path, path_with_query)


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _encode(text: str, keep: bytes = b"") -> str:
    out = []
    for byte in text.encode("utf-8"):
        if byte in _UNRESERVED or byte in keep:
            out.append(chr(byte))
        elif byte == 0x20:
            out.append("+")
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def encode_component(text: str) -> str:
    """Percent-encodes all but unreserved characters, a space as ``+``."""
    return _encode(text)


def encode_key(text: str) -> str:
    """Like :func:`encode_component`, but keeps ``[`` and ``]`` (``client[secret]``)."""
    return _encode(text, b"[]")


def encode_form(fields: List[Tuple[str, str]]) -> str:
    """Encodes fields as ``application/x-www-form-urlencoded``."""
    return "&".join(f"{encode_key(k)}={encode_component(v)}" for k, v in fields)


def pairs(value: Any, what: str) -> List[Tuple[str, str]]:
    """Turns a mapping or a list of pairs into a list of string pairs."""
    if value is None:
        return []
    items = value.items() if hasattr(value, "items") else value
    out = []
    for item in items:
        try:
            key, val = item
        except (TypeError, ValueError):
            raise Error(f"{what} must be a mapping or a list of pairs") from None
        out.append((str(key), _text(val)))
    return out


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def has_header(headers: Headers, name: str) -> bool:
    """Whether a header called ``name`` (ignoring case) is present."""
    lower = name.lower()
    return any(k.lower() == lower for k, _ in headers)


def set_header(headers: Headers, name: str, value: str) -> None:
    """Replaces every header called ``name`` (ignoring case) with one value."""
    lower = name.lower()
    headers[:] = [(k, v) for k, v in headers if k.lower() != lower]
    headers.append((name, value))


def make_body(data: Any, json: Any) -> Body:
    """Builds the body from requests-style ``data=`` and ``json=`` arguments.

    ``json`` (anything but the sentinel ``_EMPTY``) is a JSON body. ``data``
    as ``bytes`` or ``str`` is raw; as a mapping or a list of pairs it is a
    form.
    """
    if json is not _EMPTY and data is not None:
        raise Error("give a request either data= or json=, not both")
    if json is not _EMPTY:
        return Body("json", json=json)
    if data is None:
        return Body()
    if isinstance(data, str):
        return Body("raw", raw=data.encode("utf-8"))
    if isinstance(data, (bytes, bytearray, memoryview)):
        return Body("raw", raw=bytes(data))
    return Body("form", form=pairs(data, "data"))


def apply_auth(
    placement: str, placeholder: str, url: str, headers: Headers, body: Body
) -> str:
    """Puts one secret's placeholder where its placement says; returns the URL."""
    where = parse_placement(placement)
    if where.kind == "header":
        set_header(headers, where.name, where.template.replace("{}", placeholder))
    elif where.kind == "basic":
        set_header(headers, "authorization", f"Basic {placeholder}")
    elif where.kind == "query":
        separator = "&" if "?" in url else "?"
        url = f"{url}{separator}{encode_key(where.name)}={encode_component(placeholder)}"
    elif body.kind == "json":
        if not isinstance(body.json, dict):
            raise Error(f"secret placement `{placement}` needs a JSON object body")
        body.json = dict(body.json)
        body.json[where.name] = placeholder
    elif body.kind == "form":
        body.form = [(k, v) for k, v in body.form if k != where.name]
        body.form.append((where.name, placeholder))
    else:
        raise Error(
            f"secret placement `{placement}` needs a json= or a form data= body"
        )
    return url


def prepare(
    method: str,
    url: str,
    headers: Headers,
    params: List[Tuple[str, str]],
    body: Body,
    auth: List[Tuple[str, str]],
) -> Prepared:
    """Applies query parameters and secrets, encodes the body, splits the URL.

    ``auth`` holds ``(placement, placeholder)`` pairs.
    """
    url = strip_fragment(url)
    headers = list(headers)
    if params:
        separator = "&" if "?" in url else "?"
        url = url + separator + encode_form(params)
    for placement, placeholder in auth:
        url = apply_auth(placement, placeholder, url, headers, body)
    parts = split_url(url)
    content_type = {"json": "application/json", "form": "application/x-www-form-urlencoded"}.get(
        body.kind
    )
    if content_type and not has_header(headers, "content-type"):
        headers.append(("content-type", content_type))
    encoded: Optional[bytes]
    if body.kind == "raw":
        encoded = body.raw
    elif body.kind == "json":
        try:
            encoded = _json.dumps(body.json, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        except (TypeError, ValueError) as error:
            raise Error(f"request body: JSON error: {error}") from None
    elif body.kind == "form":
        encoded = encode_form(body.form).encode("ascii")
    else:
        encoded = None
    if encoded is not None and not has_header(headers, "content-length"):
        headers.append(("content-length", str(len(encoded))))
    return Prepared(
        method=method.upper() if method.lower() in _STANDARD else method,
        scheme=parts.scheme,
        authority=parts.authority,
        path_with_query=parts.path_with_query,
        headers=headers,
        body=encoded,
        display_url=f"{parts.scheme}://{parts.authority}{parts.path}",
    )


_STANDARD = frozenset(["get", "head", "post", "put", "delete", "connect", "options", "trace", "patch"])
