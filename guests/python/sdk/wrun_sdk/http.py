"""A small blocking HTTP client over ``wasi:http/outgoing-handler``, shaped like ``requests``.

::

    from wrun_sdk import http, secrets

    slack = secrets.get("slack")
    response = http.post(
        "https://slack.com/api/chat.postMessage",
        json={"channel": "#ops", "text": "deployed"},
        auth=slack,
    ).raise_for_status()
    answer = response.json()

The host checks every request before it leaves: HTTPS only, to a host the
step's ``net`` grant names, with any secret placeholder exactly where the
connection allows it. A refused request raises :class:`wrun_sdk.Error` with
the host's reason in the message, for example ``request to
https://evil.example/ failed: wrun egress refused: ...``. Redirects are not
followed. The whole response is read into memory (at most
:data:`MAX_RESPONSE_BYTES`).
"""

import json as _json
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

from componentize_py_types import Err, Ok
try:
    from wit_world.imports import outgoing_handler, streams, types
except ImportError:  # built for a step that makes no request
    outgoing_handler = streams = types = None

from wrun_sdk import _prepare
from wrun_sdk.errors import Error, HTTPError, not_built_with
from wrun_sdk.secrets import Secret

#: The most a response body may hold; a longer one fails the request.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024

# The most ``blocking-write-and-flush`` accepts in one call.
_WRITE_CHUNK = 4096

# How much to ask for per read of the response body.
_READ_CHUNK = 64 * 1024

# How many characters of an error response's body an error message quotes.
_EXCERPT_CHARS = 200

Auth = Union[Secret, Sequence[Secret], None]


class Headers:
    """Response headers: case-insensitive lookup, every value kept in order.

    ``headers["content-type"]`` and ``headers.get(name)`` give the first
    value; ``get_all(name)`` all of them; iterating gives ``(name, value)``
    pairs with lower-case names, as received.
    """

    __slots__ = ("_items",)

    def __init__(self, items: List[Tuple[str, str]]) -> None:
        self._items = items

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """The first value of a header, or ``default``."""
        lower = name.lower()
        for key, value in self._items:
            if key.lower() == lower:
                return value
        return default

    def get_all(self, name: str) -> List[str]:
        """Every value of a header, in the order received."""
        lower = name.lower()
        return [value for key, value in self._items if key.lower() == lower]

    def items(self) -> List[Tuple[str, str]]:
        """Every ``(name, value)`` pair, in the order received."""
        return list(self._items)

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[Tuple[str, str]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({[key for key, _ in self._items]!r})"


class Response:
    """An HTTP response, read into memory."""

    __slots__ = ("status", "headers", "content", "url")

    def __init__(self, status: int, headers: Headers, content: bytes, url: str) -> None:
        #: The status code.
        self.status = status
        #: The headers, names in lower case (see :class:`Headers`).
        self.headers = headers
        #: The body as bytes.
        self.content = content
        #: The URL without its query, for messages.
        self.url = url

    @property
    def status_code(self) -> int:
        """The status code (the ``requests`` name)."""
        return self.status

    @property
    def ok(self) -> bool:
        """Whether the status is below 400."""
        return self.status < 400

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (invalid bytes replaced)."""
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON; raises :class:`wrun_sdk.Error` if it is not."""
        try:
            return _json.loads(self.content)
        except ValueError as error:
            raise Error(f"response from {self.url}: JSON error: {error}") from None

    def raise_for_status(self) -> "Response":
        """Raises :class:`HTTPError` for status 400 and above; returns ``self`` otherwise.

        The message has the status, the URL (without its query) and the start
        of the body; the error's ``status`` is the status.
        """
        if self.status < 400:
            return self
        message = f"HTTP {self.status} from {self.url}"
        text = self.text.strip()
        if text:
            excerpt = text[:_EXCERPT_CHARS]
            message += f": {excerpt}{'...' if len(excerpt) < len(text) else ''}"
        raise HTTPError(message, status=self.status)

    def __repr__(self) -> str:
        return f"<Response [{self.status}] {self.url}>"


def request(
    method: str,
    url: str,
    *,
    headers: Any = None,
    params: Any = None,
    data: Any = None,
    json: Any = _prepare._EMPTY,
    auth: Auth = None,
) -> Response:
    """Sends a request and reads the whole response.

    - ``headers``: a mapping or a list of ``(name, value)`` pairs (a list may
      repeat a name);
    - ``params``: query parameters to append, a mapping or a list of pairs;
    - ``data``: ``bytes``/``str`` for a raw body, or a mapping / list of
      pairs for a form body (``application/x-www-form-urlencoded``);
    - ``json``: a JSON body (``application/json``);
    - ``auth``: a :class:`wrun_sdk.secrets.Secret` (or several), applied
      where its connection's placement says: ``header:NAME=TEMPLATE`` sets
      that header, ``basic`` sets ``Authorization: Basic <placeholder>``,
      ``query:PARAM`` appends a parameter, ``body:FIELD`` sets a field of
      the ``json=`` object or the form ``data=``.

    An error status is *not* an error here: see :meth:`Response.raise_for_status`.
    Raises :class:`wrun_sdk.Error` if the request cannot be built, the host
    refuses it (with the host's reason), the connection fails, or the body
    is longer than :data:`MAX_RESPONSE_BYTES`.
    """
    secrets = [] if auth is None else [auth] if isinstance(auth, Secret) else list(auth)
    for secret in secrets:
        if not isinstance(secret, Secret):
            raise Error("auth= takes a secret from wrun_sdk.secrets.get()")
    prepared = _prepare.prepare(
        method,
        url,
        _prepare.pairs(headers, "headers"),
        _prepare.pairs(params, "params"),
        _prepare.make_body(data, json),
        [(secret.placement, secret.placeholder) for secret in secrets],
    )
    return _transport(prepared)


def get(url: str, **kwargs: Any) -> Response:
    """Sends a ``GET``; keyword arguments as for :func:`request`."""
    return request("GET", url, **kwargs)


def head(url: str, **kwargs: Any) -> Response:
    """Sends a ``HEAD``; keyword arguments as for :func:`request`."""
    return request("HEAD", url, **kwargs)


def post(url: str, **kwargs: Any) -> Response:
    """Sends a ``POST``; keyword arguments as for :func:`request`."""
    return request("POST", url, **kwargs)


def put(url: str, **kwargs: Any) -> Response:
    """Sends a ``PUT``; keyword arguments as for :func:`request`."""
    return request("PUT", url, **kwargs)


def patch(url: str, **kwargs: Any) -> Response:
    """Sends a ``PATCH``; keyword arguments as for :func:`request`."""
    return request("PATCH", url, **kwargs)


def delete(url: str, **kwargs: Any) -> Response:
    """Sends a ``DELETE``; keyword arguments as for :func:`request`."""
    return request("DELETE", url, **kwargs)


def describe_error_code(code: Any) -> str:
    """Describes a ``wasi:http`` error code.

    ``internal-error`` with a message carries the host's refusal reason and
    is shown verbatim; anything else as ``ErrorCode::Name`` (plus payload).
    """
    if isinstance(code, types.ErrorCode_InternalError) and code.value is not None:
        return code.value
    name = type(code).__name__.replace("ErrorCode_", "ErrorCode::", 1)
    payload = getattr(code, "value", None)
    return name if payload is None else f"{name}({payload!r})"


_METHODS = (
    {
        "GET": types.Method_Get,
        "HEAD": types.Method_Head,
        "POST": types.Method_Post,
        "PUT": types.Method_Put,
        "DELETE": types.Method_Delete,
        "CONNECT": types.Method_Connect,
        "OPTIONS": types.Method_Options,
        "TRACE": types.Method_Trace,
        "PATCH": types.Method_Patch,
    }
    if types is not None
    else {}
)


def _method(method: str) -> Any:
    standard = _METHODS.get(method)
    return standard() if standard is not None else types.Method_Other(method)


def _scheme(scheme: str) -> Any:
    lower = scheme.lower()
    if lower == "https":
        return types.Scheme_Https()
    if lower == "http":
        return types.Scheme_Http()
    return types.Scheme_Other(scheme)


def _describe_header_error(name: str, error: Any) -> str:
    if isinstance(error, types.HeaderError_Forbidden):
        return f"header `{name}` is forbidden by the host"
    if isinstance(error, types.HeaderError_InvalidSyntax):
        return f"header `{name}` has an invalid name or value"
    return f"header `{name}` cannot be set"


def _describe_stream_error(error: Any, doing: str) -> str:
    if isinstance(error, streams.StreamError_LastOperationFailed):
        with error.value as io_error:
            code = types.http_error_code(io_error)
            if code is not None:
                return describe_error_code(code)
            return f"{doing}: {io_error.to_debug_string()}"
    return f"{doing}: the stream was closed"


def _drop(resource: Any) -> None:
    """Drops a resource handle now (children must go before their parents)."""
    resource.__exit__(None, None, None)


def _transport(request: "_prepare.Prepared") -> Response:
    """Sends a prepared request and reads the response."""
    url = request.display_url

    def fail(reason: str) -> Error:
        return Error(f"request to {url} failed: {reason}")

    if types is None:
        raise not_built_with("wasi:http", "net")

    fields = types.Fields()
    for name, value in request.headers:
        try:
            fields.append(name, value.encode("utf-8"))
        except Err as error:
            _drop(fields)
            raise fail(_describe_header_error(name, error.value)) from None
    # The request takes ownership of the fields.
    outgoing = types.OutgoingRequest(fields)
    problem = None
    for setter, value, what in (
        (outgoing.set_method, _method(request.method), f"invalid method `{request.method}`"),
        (outgoing.set_scheme, _scheme(request.scheme), f"invalid scheme `{request.scheme}`"),
        (outgoing.set_authority, request.authority, f"invalid authority `{request.authority}`"),
        (outgoing.set_path_with_query, request.path_with_query, "invalid path or query"),
    ):
        try:
            setter(value)
        except Err:
            problem = what
            break
    if problem is None:
        try:
            body = outgoing.body()
        except Err:
            problem = "the request body is unavailable"
    if problem is not None:
        _drop(outgoing)
        raise fail(problem)

    # `handle` takes ownership of the request; the body stays ours.
    try:
        future = outgoing_handler.handle(outgoing, None)
    except Err as error:
        _drop(body)
        raise fail(describe_error_code(error.value)) from None
    # Write the body after `handle`: the host reads it while it sends, so a
    # large body written before would block forever.
    written = _write_body(body, request.body)
    outcome = _wait_for_response(future)
    _drop(future)
    # The response's error wins: on a refusal the write usually fails too,
    # and the response carries the host's reason.
    if isinstance(outcome, str):
        raise fail(outcome)
    try:
        if written is not None:
            raise fail(written)
        result = _read_response(outcome, url)
    finally:
        _drop(outcome)
    if isinstance(result, str):
        raise fail(result)
    return result


def _write_body(body: "types.OutgoingBody", content: Optional[bytes]) -> Optional[str]:
    """Writes the body in chunks the stream accepts, then finishes it.

    Returns ``None``, or why it failed. The body is gone either way.
    """
    if content:
        try:
            stream = body.write()
        except Err:
            _drop(body)
            return "the request body stream is unavailable"
        problem = None
        view = memoryview(content)
        for start in range(0, len(content), _WRITE_CHUNK):
            try:
                stream.blocking_write_and_flush(bytes(view[start : start + _WRITE_CHUNK]))
            except Err as error:
                problem = _describe_stream_error(error.value, "writing the request body")
                break
        # The stream is a child of the body: it must go before `finish`.
        _drop(stream)
        if problem is not None:
            _drop(body)
            return problem
    try:
        # `finish` takes ownership of the body.
        types.OutgoingBody.finish(body, None)
    except Err as error:
        return describe_error_code(error.value)
    return None


def _wait_for_response(future: "types.FutureIncomingResponse") -> Any:
    """Blocks until the response head arrives: the response, or why not."""
    while True:
        ready = future.get()
        if ready is None:
            pollable = future.subscribe()
            pollable.block()
            _drop(pollable)
            continue
        if isinstance(ready, Err):
            return "the response was already taken"
        inner = ready.value
        if isinstance(inner, Ok):
            return inner.value
        return describe_error_code(inner.value)


def _read_response(response: "types.IncomingResponse", url: str) -> Union[Response, str]:
    """Reads the status, headers and whole body of a response, or says why not."""
    status = response.status()
    fields = response.headers()
    headers = [(name, value.decode("utf-8", errors="replace")) for name, value in fields.entries()]
    _drop(fields)
    try:
        incoming = response.consume()
    except Err:
        return "the response body is unavailable"
    try:
        stream = incoming.stream()
    except Err:
        _drop(incoming)
        return "the response body stream is unavailable"
    chunks: List[bytes] = []
    size = 0
    problem = None
    while True:
        try:
            chunk = stream.blocking_read(_READ_CHUNK)
        except Err as error:
            if not isinstance(error.value, streams.StreamError_Closed):
                problem = _describe_stream_error(error.value, "reading the response body")
            break
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            problem = f"the response body exceeds {MAX_RESPONSE_BYTES // (1024 * 1024)} MiB"
            break
        chunks.append(chunk)
    # The stream is a child of the body: it must go before the body.
    _drop(stream)
    if problem is not None:
        _drop(incoming)
        return problem
    # `finish` takes ownership of the body; the trailers are not needed.
    _drop(types.IncomingBody.finish(incoming))
    return Response(status, Headers(headers), b"".join(chunks), url)
