"""Outbound HTTP from a handler, over ``wasi:http``: a small ``requests``-like API.

::

    from warren_guest import http

    @warren.json_handler
    def enrich(line: Line) -> dict:
        price = http.get(f"https://prices.example.com/price/{line.sku}").raise_for_status().json()
        return {"sku": line.sku, "unit_price": price["price"]}

The plugin must be built against the world that imports ``wasi:http`` — set ``http = true``
under ``[tool.warren]`` in its ``pyproject.toml`` — and the host's config must grant the
origin: ``[plugin.<name>] http = ["https://prices.example.com"]``. Any other origin fails
with :class:`HttpError` whose ``code`` is ``HTTP-request-denied``. Each request counts
against the call's deadline (``timeout_ms``), and the host caps a response body
(``http_max_response_kib``).

Calls block until the answer is read (a handler is one synchronous call). An uncaught
:class:`HttpError` refuses the message with the outcome that fits: denied, a bad URL, an
answer over the cap or a 4xx → ``failed``; unreachable, timed out, 5xx or 429 → ``retry``.
"""

from __future__ import annotations

import json as _json
import re
from typing import Any, Optional

__all__ = ["HttpError", "Response", "request", "get", "post", "put", "delete"]

_READ = 64 * 1024
_WRITE = 4096


class HttpError(Exception):
    """A request with no usable answer. ``code`` is the ``wasi:http`` error code
    (``HTTP-request-denied``, ``connection-timeout``, ``HTTP-response-body-size``, …) when the
    host gave one; ``status`` the HTTP status for :meth:`Response.raise_for_status`."""

    def __init__(self, message: str, code: Optional[str] = None, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status

    @property
    def denied(self) -> bool:
        """The host does not grant this origin (permanent)."""
        return self.code == "HTTP-request-denied"

    @property
    def too_large(self) -> bool:
        """The answer is over the host's cap (``http_max_response_kib``)."""
        return self.code == "HTTP-response-body-size"

    @property
    def retryable(self) -> bool:
        """Whether the same request may pass later."""
        if self.status is not None:
            return self.status >= 500 or self.status == 429
        return self.code is not None and not (self.denied or self.too_large or self.code == "HTTP-request-URI-invalid")


class Response:
    """An answer: ``status`` (also ``status_code``), ``headers`` (lowercase names), ``content``."""

    def __init__(self, url: str, status: int, headers: dict, content: bytes) -> None:
        self.url = url
        self.status = status
        self.headers = headers
        self.content = content

    @property
    def status_code(self) -> int:
        return self.status

    @property
    def ok(self) -> bool:
        return self.status < 400

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON; :class:`HttpError` when it is not JSON."""
        try:
            return _json.loads(self.content)
        except ValueError as e:
            raise HttpError(f"{self.url} did not answer JSON: {e}") from None

    def raise_for_status(self) -> "Response":
        """The response itself when its status is below 400, else :class:`HttpError`."""
        if self.status >= 400:
            raise HttpError(f"{self.url} answered {self.status}: {self.text[:200]}", status=self.status)
        return self


def _code_name(code: Any) -> str:
    """``ErrorCode_HttpRequestDenied`` → ``HTTP-request-denied``, as WIT spells it."""
    name = type(code).__name__.split("_", 1)[-1]
    words = re.findall(r"[A-Z][a-z0-9]*", name)
    upper = {"Http": "HTTP", "Dns": "DNS", "Tls": "TLS", "Ip": "IP", "Uri": "URI"}
    return "-".join(upper.get(w, w.lower()) for w in words)


def _error(what: str, code: Any) -> HttpError:
    name = _code_name(code)
    value = getattr(code, "value", None)
    detail = f" ({value})" if value is not None and not hasattr(value, "__dict__") else ""
    hint = {
        "HTTP-request-denied": ": the host does not grant this origin",
        "HTTP-response-body-size": ": over the host's cap (http_max_response_kib)",
    }.get(name, "")
    return HttpError(f"{what}: {name}{detail}{hint}", code=name)


# Imported when the module loads: componentize-py snapshots the interpreter after loading
# the plugin, and a component has no files to import from later.
try:
    from componentize_py_types import Err as _Err
    from wit_world.imports import outgoing_handler as _outgoing_handler
    from wit_world.imports import streams as _streams
    from wit_world.imports import wasi_http_types as _types
except ImportError:
    # Natively (unit tests), or built against the plain `handler` world.
    _outgoing_handler = None


def _bindings():
    if _outgoing_handler is None:
        raise HttpError(
            "this plugin is not built with outbound HTTP: set `http = true` under [tool.warren] in its pyproject.toml"
        )
    return _Err, _outgoing_handler, _streams, _types


def _split(url: str) -> tuple:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise HttpError(f"cannot request '{url}': write it like https://host/path", code="HTTP-request-URI-invalid")
    rest = rest.split("#", 1)[0]
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:end], rest[end:] or "/"
    if not authority:
        raise HttpError(f"cannot request '{url}': no host", code="HTTP-request-URI-invalid")
    return scheme.lower(), authority, path


def request(
    method: str,
    url: str,
    *,
    headers: Optional[dict] = None,
    data: Optional[bytes | str] = None,
    json: Any = None,
) -> Response:
    """Sends ``method url`` (with ``data``, or ``json`` serialised) and reads the whole answer."""
    Err, outgoing_handler, streams, types = _bindings()
    scheme, authority, path = _split(url)
    method = method.upper()
    what = f"{method} {url}"
    headers = {k.lower(): str(v) for k, v in (headers or {}).items()}
    if json is not None:
        data = _json.dumps(json, separators=(",", ":"))
        headers.setdefault("content-type", "application/json")
    body = data.encode() if isinstance(data, str) else bytes(data or b"")

    methods = {
        "GET": types.Method_Get,
        "HEAD": types.Method_Head,
        "POST": types.Method_Post,
        "PUT": types.Method_Put,
        "DELETE": types.Method_Delete,
        "OPTIONS": types.Method_Options,
        "PATCH": types.Method_Patch,
    }
    try:
        fields = types.Fields.from_list([(k, v.encode()) for k, v in headers.items()])
    except Err as e:
        raise HttpError(f"{what}: a header is not allowed ({type(e.value).__name__})") from None
    outgoing = types.OutgoingRequest(fields)
    outgoing.set_method(methods[method]() if method in methods else types.Method_Other(method))
    outgoing.set_scheme(types.Scheme_Https() if scheme == "https" else types.Scheme_Http())
    outgoing.set_authority(authority)
    outgoing.set_path_with_query(path)
    outgoing_body = outgoing.body()
    try:
        future = outgoing_handler.handle(outgoing, None)
    except Err as e:
        raise _error(what, e.value) from None

    def answer():
        while True:
            result = future.get()
            if result is None:
                with future.subscribe() as ready:
                    ready.block()
                continue
            if isinstance(result, Err):
                raise HttpError(f"{what}: the response was already taken")
            if isinstance(result.value, Err):
                raise _error(what, result.value.value)
            return result.value.value

    with future:
        try:
            with outgoing_body.write() as stream:
                for start in range(0, len(body), _WRITE):
                    stream.blocking_write_and_flush(body[start : start + _WRITE])
        except Err:
            # A request the host refused stops reading its body: say why, not the broken pipe.
            outgoing_body.__exit__(None, None, None)
            answer()
            raise HttpError(f"{what}: the request body could not be sent") from None
        types.OutgoingBody.finish(outgoing_body, None)
        with answer() as incoming:
            status = incoming.status()
            with incoming.headers() as fields:
                response_headers = {k.lower(): v.decode("utf-8", errors="replace") for k, v in fields.entries()}
            content = bytearray()
            with incoming.consume() as incoming_body:
                with incoming_body.stream() as stream:
                    while True:
                        try:
                            content += stream.blocking_read(_READ)
                        except Err as e:
                            if isinstance(e.value, streams.StreamError_Closed):
                                break
                            code = types.http_error_code(e.value.value)
                            if code is not None:
                                raise _error(what, code) from None
                            raise HttpError(f"{what}: reading the answer: {e.value.value.to_debug_string()}") from None
    return Response(url, status, response_headers, bytes(content))


def get(url: str, **kwargs: Any) -> Response:
    """``GET url``."""
    return request("GET", url, **kwargs)


def post(url: str, **kwargs: Any) -> Response:
    """``POST url`` (``data=`` bytes or ``json=`` a value)."""
    return request("POST", url, **kwargs)


def put(url: str, **kwargs: Any) -> Response:
    """``PUT url``."""
    return request("PUT", url, **kwargs)


def delete(url: str, **kwargs: Any) -> Response:
    """``DELETE url``."""
    return request("DELETE", url, **kwargs)
