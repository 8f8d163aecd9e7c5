"""Postgres from a handler, over Spin's ``spin:postgres/postgres@4.0.0``::

    from warren_guest import pg

    @warren.json_handler
    def store(order: Order) -> dict:
        db = pg.Connection.open("orders")
        db.execute("INSERT INTO orders (id, amount) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
                   [order.id, order.amount])
        rows = db.query("SELECT amount FROM orders WHERE id = $1", [order.id])
        return {"amount": rows[0][0]}

``open`` takes the NAME of a database the host's config grants (``[plugin.<name>] databases =
["orders"]``), never a URL. Parameters are always bound (``$1``, ``$2``, …), never spliced into
the statement; each is a plain value: ``None``, ``bool``, ``int``, ``float``, ``str`` (also for
``numeric``, ``uuid`` and ``json`` columns), ``bytes``, ``datetime``/``date``/``time``,
``timedelta`` (an interval), ``Decimal``, ``UUID``, a ``dict`` (JSON) or a list of ints, of
strings or of Decimals (an array). Values read back the same way; ``numeric`` as ``Decimal``,
``json``/``jsonb`` parsed, timestamps as naive ``datetime`` in UTC, an interval as
:class:`Interval`, a type the interface lacks as its raw ``bytes``.

A failure raises :class:`DatabaseError` (``sqlstate`` is Postgres's code, ``"23505"`` for a
unique violation). Left uncaught it refuses the message as Warren's Rust SDK does: what may
pass (the database unreachable, a serialization failure or deadlock, the deadline near) is
``retry``; a statement or value that can never succeed, or a database not granted, is
``failed``. With ``transaction = true`` the call's statements commit only if the handler
answers.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import json
import uuid
from typing import Any, Iterable, Optional

__all__ = ["Connection", "DatabaseError", "Interval", "Rows"]

# Imported when the module loads: componentize-py snapshots the interpreter after loading
# the plugin, and a component has no files to import from later.
try:
    from componentize_py_types import Err as _Err
    from wit_world.imports import postgres as _pg
except ImportError:
    # Natively (unit tests): no host to reach.
    _pg = None

_UTC = datetime.timezone.utc
_EPOCH = datetime.datetime(1970, 1, 1)
# SQLSTATE classes of failures that may pass: 08 connection, 40 rollback (serialization,
# deadlock), 53 resources, 57 operator intervention (shutdown, cancel); and 55P03 (lock).
_PASSING = ("08", "40", "53", "57", "55P03")


class DatabaseError(Exception):
    """A database call that did not succeed. ``kind`` is the interface's case
    (``connection-failed``, ``bad-parameter``, ``query-failed``, ``value-conversion-failed``,
    ``other``); ``sqlstate`` is Postgres's code when the server sent an error."""

    def __init__(self, message: str, kind: str, sqlstate: Optional[str] = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.sqlstate = sqlstate

    @property
    def retryable(self) -> bool:
        """Whether the same call may pass later (what an uncaught one becomes: ``retry``)."""
        if self.kind == "connection-failed":
            return "may not open database" not in str(self)
        if self.sqlstate is not None:
            return self.sqlstate.startswith(_PASSING)
        if self.kind == "query-failed":
            return "deadline" in str(self)
        return self.kind == "other"


def _error(what: str, error: Any) -> DatabaseError:
    kind = {
        "ConnectionFailed": "connection-failed",
        "BadParameter": "bad-parameter",
        "QueryFailed": "query-failed",
        "ValueConversionFailed": "value-conversion-failed",
    }.get(type(error).__name__.split("_", 1)[-1], "other")
    detail = error.value
    if isinstance(detail, _pg.QueryError_DbError):
        db = detail.value
        return DatabaseError(f"{what}: {db.message} (SQLSTATE {db.code})", kind, db.code)
    return DatabaseError(f"{what}: {getattr(detail, 'value', detail)}", kind)


def _call(what: str, call: Any, *args: Any) -> Any:
    if _pg is None:
        raise RuntimeError(f"{what} needs the Warren host: natively there is none (pass a fake in tests)")
    try:
        return call(*args)
    except _Err as e:
        raise _error(what, e.value) from None


@dataclasses.dataclass
class Interval:
    """A Postgres ``interval``: months, days and microseconds, kept apart as Postgres does."""

    months: int = 0
    days: int = 0
    micros: int = 0


class Rows(list):
    """A query's rows, each a tuple of values in column order; ``columns`` are their names."""

    def __init__(self, columns: list, rows: Iterable[tuple]) -> None:
        super().__init__(rows)
        self.columns = columns

    def dicts(self) -> list:
        """The rows as dicts keyed by column name."""
        return [dict(zip(self.columns, row)) for row in self]


def _array(values: list) -> Any:
    present = [v for v in values if v is not None]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present) and present:
        return _pg.ParameterValue_ArrayInt64(list(values))
    if all(isinstance(v, decimal.Decimal) for v in present) and present:
        return _pg.ParameterValue_ArrayDecimal([None if v is None else str(v) for v in values])
    if all(isinstance(v, str) for v in present):
        return _pg.ParameterValue_ArrayStr(list(values))
    raise DatabaseError(
        "an array parameter holds ints, strings or Decimals (and None): pass other lists as JSON text "
        "(json.dumps(value))",
        "bad-parameter",
    )


def _param(value: Any) -> Any:
    """A plain value as the interface's parameter."""
    P = _pg
    if value is None:
        return P.ParameterValue_DbNull()
    if isinstance(value, bool):  # before int: True is an int in Python
        return P.ParameterValue_Boolean(value)
    if isinstance(value, int):
        return P.ParameterValue_Int64(value)
    if isinstance(value, float):
        return P.ParameterValue_Floating64(value)
    if isinstance(value, str):
        return P.ParameterValue_Str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return P.ParameterValue_Binary(bytes(value))
    if isinstance(value, datetime.datetime):  # before date: a datetime is a date
        if value.tzinfo is not None:
            value = value.astimezone(_UTC)
        fields = (value.year, value.month, value.day, value.hour, value.minute, value.second)
        return P.ParameterValue_Datetime((*fields, value.microsecond * 1000))
    if isinstance(value, datetime.date):
        return P.ParameterValue_Date((value.year, value.month, value.day))
    if isinstance(value, datetime.time):
        return P.ParameterValue_Time((value.hour, value.minute, value.second, value.microsecond * 1000))
    if isinstance(value, datetime.timedelta):
        return P.ParameterValue_Interval(P.Interval(value.seconds * 10**6 + value.microseconds, value.days, 0))
    if isinstance(value, Interval):
        return P.ParameterValue_Interval(P.Interval(value.micros, value.days, value.months))
    if isinstance(value, decimal.Decimal):
        return P.ParameterValue_Decimal(str(value))
    if isinstance(value, uuid.UUID):
        return P.ParameterValue_Uuid(str(value))
    if isinstance(value, dict):
        return P.ParameterValue_Jsonb(json.dumps(value).encode())
    if isinstance(value, (list, tuple)):
        return _array(list(value))
    raise DatabaseError(f"a parameter cannot be a {type(value).__name__}", "bad-parameter")


def _value(value: Any) -> Any:
    """The interface's value as a plain one."""
    P = _pg
    if isinstance(value, P.DbValue_DbNull):
        return None
    inner = value.value
    if isinstance(value, P.DbValue_Binary):
        return bytes(inner)
    if isinstance(value, P.DbValue_Date):
        return datetime.date(*inner)
    if isinstance(value, P.DbValue_Time):
        hour, minute, second, nanos = inner
        return datetime.time(hour, minute, second, nanos // 1000)
    if isinstance(value, P.DbValue_Datetime):
        *fields, nanos = inner
        return datetime.datetime(*fields, nanos // 1000)
    if isinstance(value, P.DbValue_Timestamp):
        return _EPOCH + datetime.timedelta(seconds=inner)
    if isinstance(value, P.DbValue_Uuid):
        return uuid.UUID(inner)
    if isinstance(value, P.DbValue_Jsonb):
        return json.loads(bytes(inner))
    if isinstance(value, P.DbValue_Decimal):
        return decimal.Decimal(inner)
    if isinstance(value, P.DbValue_ArrayDecimal):
        return [None if v is None else decimal.Decimal(v) for v in inner]
    if isinstance(value, P.DbValue_Interval):
        return Interval(inner.months, inner.days, inner.micros)
    if isinstance(value, P.DbValue_Unsupported):
        return bytes(inner)
    return list(inner) if isinstance(inner, list) else inner


class Connection:
    """A connection to a database the host grants this plugin."""

    def __init__(self, name: str, inner: Any) -> None:
        self.name = name
        self._inner = inner

    @staticmethod
    def open(name: str) -> "Connection":
        """Opens the granted database ``name`` (not a URL)."""
        return Connection(name, _call(f"open database '{name}'", lambda: _pg.Connection.open(name)))

    def execute(self, statement: str, params: Iterable[Any] = ()) -> int:
        """Runs a statement that returns no rows; the number of rows it affected."""
        bound = [_param(p) for p in params]
        return int(_call(f"database '{self.name}'", self._inner.execute, statement, bound))

    def query(self, statement: str, params: Iterable[Any] = ()) -> Rows:
        """Runs a query; its rows (tuples in column order) with their column names."""
        bound = [_param(p) for p in params]
        result = _call(f"database '{self.name}'", self._inner.query, statement, bound)
        return Rows([c.name for c in result.columns], (tuple(_value(v) for v in row) for row in result.rows))
