"""Write Warren message handlers in Python.

A Warren plugin is a WebAssembly component that exports the ``warren:plugin/handler``
world (``wit/handler.wit``). componentize-py turns a Python module into such a component;
this package hides the generated bindings, so a plugin is one function and one export line::

    # app.py
    from dataclasses import dataclass
    import warren_guest as warren

    @dataclass
    class Greet:
        name: str

    @warren.json_handler
    def greet(request: Greet) -> dict:
        return {"greeting": f"Hello, {request.name}!"}

    WitWorld = warren.WitWorld  # the export componentize-py looks for

A JSON handler gets the parsed body (built into the dataclass its first parameter names,
when it names one; unknown keys are ignored, as serde does); a body that does not parse, or
lacks a field of the dataclass, is a ``bad-request``: the host rejects it and never retries it. The return value is serialised
as the JSON response body. For full control, ``@warren.handler`` gets the whole
:class:`Message` and returns bytes, a string or a :class:`Response`.

Raise :class:`BadRequest`, :class:`Retry` or :class:`Failed` to refuse a message (the host
maps each to its AMQP outcome). Any other exception traps: the host discards the instance
and rejects the message, exactly as for a Rust panic.

The host's imports — :func:`publish_event`, :func:`send_request`, :func:`send_to_queue`,
:func:`publish_response`, :func:`log` — are granted per plugin in the host's config; a
refused or unconfirmed send raises :class:`SendError`, which, left uncaught, refuses the
message (``denied`` → ``failed``, ``failed`` → ``retry``).

:mod:`warren_guest.http` calls HTTP services (``http.get(url).raise_for_status().json()``)
when the plugin is built with ``http = true`` under ``[tool.warren]`` and the host grants
the origin (``[plugin.<name>] http = [...]``); an uncaught :class:`HttpError` refuses the
message (``failed``, or ``retry`` for what may pass later).

Config values (``[plugin.<name>.config]``, and ``config_files`` for secrets) come from
:func:`config_get` and :func:`config_require` (the standard ``wasi:config/store``). Buckets
of keys and values that outlive a message (``[plugin.<name>] keyvalue = ["counters"]``) are
:class:`Bucket`: ``Bucket.open("counters").increment("hits")``; a failure raises
:class:`KeyValueError`, which, left uncaught, refuses the message (not granted → ``failed``,
otherwise ``retry``).

:mod:`warren_guest.pg` reaches the Postgres databases the host grants (``[plugin.<name>]
databases = ["orders"]``): ``pg.Connection.open("orders").query("SELECT … WHERE id = $1",
[order_id])``; an uncaught :class:`DatabaseError` refuses the message (``retry`` when the
database is unreachable or the failure may pass, else ``failed``; its ``sqlstate`` is
Postgres's code).

``warren build`` builds every ``plugins/<name>/pyproject.toml`` with componentize-py and
this package on the module path.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import inspect
import json
from typing import Any, Callable, Optional, Union

from . import http, pg
from .http import HttpError
from .pg import DatabaseError

try:
    from componentize_py_types import Err
    import wit_world
    from wit_world.imports import host as _host

    try:
        from wit_world.imports import types as _types
    except ImportError:
        # The `handler-http` world also imports wasi:http/types: componentize-py then names
        # each `types` interface by its package.
        from wit_world.imports import warren_plugin_types as _types

    def _interface(*names: str) -> Any:
        """The first of the bindings modules ``names`` componentize-py generated, or None."""
        for name in names:
            try:
                return importlib.import_module(f"wit_world.imports.{name}")
            except ImportError:
                pass
        return None

    # wasi:config/store and wasi:keyvalue/store share the name `store`: componentize-py then
    # names each by its package.
    _config = _interface("wasi_config_store", "store")
    _kv = _interface("wasi_keyvalue_store")
    _atomics = _interface("atomics", "wasi_keyvalue_atomics")
    _cas = _interface("keyvalue_cas", "warren_plugin_keyvalue_cas")
except ImportError:
    # Running natively (a plugin's unit tests): no component bindings. Handlers are plain
    # functions and can be called directly; the host's imports are not there.
    wit_world = None

__all__ = [
    "BadRequest",
    "Failed",
    "HandlerError",
    "HttpError",
    "DatabaseError",
    "Bucket",
    "ConfigError",
    "KeyValueError",
    "config_get",
    "config_get_all",
    "config_require",
    "Message",
    "Response",
    "Retry",
    "SendError",
    "WitWorld",
    "handler",
    "http",
    "pg",
    "json_handler",
    "log",
    "debug",
    "info",
    "warn",
    "error",
    "publish_event",
    "publish_json",
    "send_request",
    "send_request_json",
    "send_to_queue",
    "publish_response",
    "publish_response_json",
]


# --- refusing a message ------------------------------------------------------------------


class HandlerError(Exception):
    """Why a handler did not answer. Raise one of the subclasses."""


class BadRequest(HandlerError):
    """The message can never be handled (bad JSON, a missing field): rejected, not retried."""


class Retry(HandlerError):
    """A passing failure: requeued and retried a bounded number of times."""


class Failed(HandlerError):
    """The handler failed for good: rejected, not retried."""


class SendError(Exception):
    """A send the host did not do. ``denied`` is permanent (not granted in the config);
    otherwise the broker did not take it and a retry may pass."""

    def __init__(self, message: str, denied: bool) -> None:
        super().__init__(message)
        self.denied = denied


# --- messages ----------------------------------------------------------------------------

HeaderValue = Union[str, int, float, bool, bytes, dict, list, datetime.datetime, None]


@dataclasses.dataclass
class Message:
    """One delivery: its routing key, body, content type and headers (AMQP types kept:
    ``str``, ``int``, ``float``, ``bool``, ``bytes``, ``dict``, ``list``, ``datetime``, ``None``)."""

    routing_key: str
    body: bytes
    content_type: Optional[str] = None
    headers: dict = dataclasses.field(default_factory=dict)

    def json(self) -> Any:
        """The body parsed as JSON; raises :class:`BadRequest` when it is not JSON."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"the body is not JSON: {e}") from None


@dataclasses.dataclass
class Response:
    """A handler's answer: the body and headers to add (the host sets ``service`` itself)."""

    body: bytes
    headers: dict = dataclasses.field(default_factory=dict)

    @staticmethod
    def json(value: Any, headers: Optional[dict] = None) -> "Response":
        """A response whose body is ``value`` serialised as JSON."""
        return Response(_to_json(value), dict(headers or {}))


def _to_json(value: Any) -> bytes:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.dumps(value, separators=(",", ":")).encode()


def _from_wit_value(value: Any) -> HeaderValue:
    if isinstance(value, (_types.HeaderValue_Table, _types.HeaderValue_Array)):
        return json.loads(value.value)
    if isinstance(value, _types.HeaderValue_Timestamp):
        return datetime.datetime.fromtimestamp(value.value, tz=datetime.timezone.utc)
    if isinstance(value, _types.HeaderValue_Void):
        return None
    return value.value


def _to_wit_value(value: HeaderValue) -> Any:
    # bool before int: True is an int in Python.
    if isinstance(value, bool):
        return _types.HeaderValue_Boolean(value)
    if isinstance(value, int):
        return _types.HeaderValue_Integer(value)
    if isinstance(value, float):
        return _types.HeaderValue_Float(value)
    if isinstance(value, str):
        return _types.HeaderValue_Text(value)
    if isinstance(value, (bytes, bytearray)):
        return _types.HeaderValue_Bytes(bytes(value))
    if isinstance(value, dict):
        return _types.HeaderValue_Table(json.dumps(value))
    if isinstance(value, (list, tuple)):
        return _types.HeaderValue_Array(json.dumps(list(value)))
    if isinstance(value, datetime.datetime):
        return _types.HeaderValue_Timestamp(int(value.timestamp()))
    if value is None:
        return _types.HeaderValue_Void()
    raise TypeError(f"a header value cannot be a {type(value).__name__}")


def _to_wit_headers(headers: Optional[dict]) -> list:
    return [_types.Header(name, _to_wit_value(value)) for name, value in (headers or {}).items()]


# --- exporting a handler -----------------------------------------------------------------

_handler: Optional[Callable[[Message], Response]] = None


def _to_response(result: Any) -> Response:
    if isinstance(result, Response):
        return result
    if isinstance(result, str):
        return Response(result.encode())
    if isinstance(result, (bytes, bytearray)):
        return Response(bytes(result))
    raise TypeError(f"a handler returns bytes, str or Response, not {type(result).__name__}")


def handler(function: Callable[[Message], Any]) -> Callable[[Message], Any]:
    """Exports ``function(message)`` as the plugin's handler. It returns bytes, a string
    or a :class:`Response`."""
    global _handler
    _handler = lambda message: _to_response(function(message))
    return function


def json_handler(function: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Exports ``function(value)`` as the plugin's handler, ``value`` being the body parsed
    as JSON — built into the dataclass the first parameter is annotated with, if any. The
    return value (a dataclass, dict, list, …, or a :class:`Response`) is the JSON answer."""
    parameters = list(inspect.signature(function).parameters.values())
    annotation = parameters[0].annotation if parameters else inspect.Parameter.empty
    if isinstance(annotation, str):  # `from __future__ import annotations`
        annotation = function.__globals__.get(annotation, inspect.Parameter.empty)
    typed = dataclasses.is_dataclass(annotation)

    def handle(message: Message) -> Response:
        value = message.json()
        if typed:
            if not isinstance(value, dict):
                raise BadRequest(f"expected a JSON object for {annotation.__name__}")
            # Like serde: fields the dataclass does not have are ignored, missing ones refused.
            known = {field.name for field in dataclasses.fields(annotation)}
            try:
                value = annotation(**{k: v for k, v in value.items() if k in known})
            except TypeError as e:
                raise BadRequest(f"the body does not fit {annotation.__name__}: {e}") from None
        result = function(value)
        return result if isinstance(result, Response) else Response.json(result)

    global _handler
    _handler = handle
    return function


class WitWorld(wit_world.WitWorld if wit_world else object):
    """The component's export: assign it in the plugin module (``WitWorld = warren.WitWorld``)."""

    def handle(self, request: Any, headers: list) -> Any:
        if _handler is None:
            raise Err(_types.HandlerError_Failed("the plugin exports no handler: decorate one with @warren.handler"))
        message = Message(
            routing_key=request.routing_key,
            body=bytes(request.body),
            content_type=request.content_type,
            headers={h.name: _from_wit_value(h.value) for h in headers},
        )
        try:
            response = _handler(message)
        except BadRequest as e:
            raise Err(_types.HandlerError_BadRequest(str(e)))
        except Retry as e:
            raise Err(_types.HandlerError_Retry(str(e)))
        except Failed as e:
            raise Err(_types.HandlerError_Failed(str(e)))
        except SendError as e:
            kind = _types.HandlerError_Failed if e.denied else _types.HandlerError_Retry
            raise Err(kind(str(e)))
        except HttpError as e:
            kind = _types.HandlerError_Retry if e.retryable else _types.HandlerError_Failed
            raise Err(kind(str(e)))
        except KeyValueError as e:
            kind = _types.HandlerError_Failed if e.denied else _types.HandlerError_Retry
            raise Err(kind(str(e)))
        except ConfigError as e:
            raise Err(_types.HandlerError_Retry(str(e)))
        except DatabaseError as e:
            kind = _types.HandlerError_Retry if e.retryable else _types.HandlerError_Failed
            raise Err(kind(str(e)))
        return _types.Response(response.body, _to_wit_headers(response.headers))


# --- the host's imports --------------------------------------------------------------------


def _send(call: Callable[..., None], *args: Any) -> None:
    try:
        call(*args)
    except Err as e:
        denied = isinstance(e.value, _host.SendError_Denied)
        raise SendError(e.value.value, denied) from None


def publish_event(stream: str, routing_key: str, body: bytes, headers: Optional[dict] = None) -> None:
    """Publishes an event to ``<stream>.topic.exchange``, confirmed by the broker."""
    _send(_host.publish_event, stream, routing_key, bytes(body), _to_wit_headers(headers))


def publish_json(stream: str, routing_key: str, value: Any, headers: Optional[dict] = None) -> None:
    """Publishes ``value`` as a JSON event."""
    publish_event(stream, routing_key, _to_json(value), headers)


def send_request(service: str, routing_key: str, body: bytes, headers: Optional[dict] = None) -> None:
    """Sends a request to ``service``; its answer arrives at a ``[[response]]`` handler."""
    _send(_host.send_request, service, routing_key, bytes(body), _to_wit_headers(headers))


def send_request_json(service: str, routing_key: str, value: Any, headers: Optional[dict] = None) -> None:
    """Sends ``value`` as a JSON request to ``service``."""
    send_request(service, routing_key, _to_json(value), headers)


def send_to_queue(queue: str, routing_key: str, body: bytes, headers: Optional[dict] = None) -> None:
    """Publishes to queue ``queue`` through the default exchange, as goamqp's queue publisher."""
    _send(_host.send_to_queue, queue, routing_key, bytes(body), _to_wit_headers(headers))


def publish_response(service: str, routing_key: str, body: bytes, headers: Optional[dict] = None) -> None:
    """Answers ``service`` later, as goamqp's ``PublishServiceResponse``: this service's own
    ``<S>.headers.exchange.response``, header ``service`` = ``service`` (grant ``respond``)."""
    _send(_host.publish_response, service, routing_key, bytes(body), _to_wit_headers(headers))


def publish_response_json(service: str, routing_key: str, value: Any, headers: Optional[dict] = None) -> None:
    """Answers ``service`` later with ``value`` as JSON."""
    publish_response(service, routing_key, _to_json(value), headers)


def log(level: str, message: str) -> None:
    """Writes a line to the host's log: level is trace, debug, info, warn or error."""
    _host.log(_host.LogLevel[level.upper()], message)


def debug(message: str) -> None:
    log("debug", message)


def info(message: str) -> None:
    log("info", message)


def warn(message: str) -> None:
    log("warn", message)


def error(message: str) -> None:
    log("error", message)


# --- config values (wasi:config/store) ------------------------------------------------------


class ConfigError(Exception):
    """The host could not give a config value (never for the values of its own config)."""


def _outside_warren(what: str) -> RuntimeError:
    return RuntimeError(f"{what} needs the Warren host: natively there is none (pass a fake in tests)")


def config_get(key: str) -> Optional[str]:
    """The value of ``key`` in ``[plugin.<name>.config]`` (or ``config_files``), or ``None``."""
    if wit_world is None or _config is None:
        raise _outside_warren("config_get")
    try:
        return _config.get(key)
    except Err as e:
        raise ConfigError(f"config value '{key}': {e.value.value}") from None


def config_get_all() -> dict:
    """Every config key of this plugin with its value."""
    if wit_world is None or _config is None:
        raise _outside_warren("config_get_all")
    try:
        return dict(_config.get_all())
    except Err as e:
        raise ConfigError(f"config values: {e.value.value}") from None


def config_require(key: str) -> str:
    """The value of ``key``; a missing key raises :class:`Failed` naming where to set it."""
    value = config_get(key)
    if value is None:
        raise Failed(f"no config value '{key}': set it under [plugin.<name>.config] in the host's config")
    return value


# --- key-value buckets (wasi:keyvalue) -------------------------------------------------------


class KeyValueError(Exception):
    """A key-value operation the host did not do. ``denied``: the bucket is not granted (or
    the host has no store), permanent; otherwise the store failed or the deadline is near."""

    def __init__(self, message: str, denied: bool) -> None:
        super().__init__(message)
        self.denied = denied


def _kv_call(what: str, call: Callable[..., Any], *args: Any) -> Any:
    if wit_world is None or _kv is None:
        raise _outside_warren(what)
    try:
        return call(*args)
    except Err as e:
        error = e.value
        if isinstance(error, _kv.Error_AccessDenied):
            raise KeyValueError(f"{what}: the bucket is not granted to this plugin", True) from None
        if isinstance(error, _kv.Error_NoSuchStore):
            raise KeyValueError(f"{what}: this host has no key-value store", True) from None
        raise KeyValueError(f"{what}: {getattr(error, 'value', error)}", False) from None


class Bucket:
    """An open bucket of keys and values (``wasi:keyvalue/store``), granted in the host's
    config. Values are bytes; a counter is decimal text (``b"42"``)."""

    def __init__(self, name: str, inner: Any) -> None:
        self.name = name
        self._inner = inner

    @staticmethod
    def open(name: str) -> "Bucket":
        """Opens bucket ``name``; raises :class:`KeyValueError` when it is not granted."""
        return Bucket(name, _kv_call(f"open bucket '{name}'", lambda: _kv.open(name)))

    def get(self, key: str) -> Optional[bytes]:
        """The value of ``key``, or ``None`` when it does not exist."""
        value = _kv_call(f"get '{key}'", self._inner.get, key)
        return None if value is None else bytes(value)

    def set(self, key: str, value: Union[bytes, str]) -> None:
        """Sets ``key`` to ``value`` (a string is stored as UTF-8)."""
        data = value.encode() if isinstance(value, str) else bytes(value)
        _kv_call(f"set '{key}'", self._inner.set, key, data)

    def delete(self, key: str) -> None:
        """Deletes ``key`` (nothing happens when it does not exist)."""
        _kv_call(f"delete '{key}'", self._inner.delete, key)

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""
        return bool(_kv_call(f"exists '{key}'", self._inner.exists, key))

    def keys(self) -> list:
        """Every key of the bucket (read page by page)."""
        keys: list = []
        cursor = None
        while True:
            page = _kv_call("list keys", self._inner.list_keys, cursor)
            keys.extend(page.keys)
            cursor = page.cursor
            if cursor is None:
                return keys

    def increment(self, key: str, delta: int = 1) -> int:
        """Adds ``delta`` to the counter ``key`` (a missing key counts from 0) and returns the
        new value; atomic, also across hosts sharing a Redis."""
        return int(_kv_call(f"increment '{key}'", _atomics.increment, self._inner, key, delta))

    def compare_and_swap(self, key: str, expected: Optional[bytes], value: Union[bytes, str]) -> bool:
        """Sets ``key`` to ``value`` only if its value is ``expected`` (``None``: only if it
        does not exist); whether it did. Atomic."""
        data = value.encode() if isinstance(value, str) else bytes(value)
        old = None if expected is None else bytes(expected)
        return bool(_kv_call(f"compare-and-swap '{key}'", _cas.compare_and_swap, self._inner, key, old, data))

    def get_json(self, key: str) -> Any:
        """The value of ``key`` parsed as JSON, or ``None`` when it does not exist."""
        value = self.get(key)
        if value is None:
            return None
        try:
            return json.loads(value)
        except (ValueError, UnicodeDecodeError) as e:
            raise Failed(f"the value of '{key}' is not JSON: {e}") from None

    def set_json(self, key: str, value: Any) -> None:
        """Sets ``key`` to ``value`` as JSON."""
        self.set(key, _to_json(value))
