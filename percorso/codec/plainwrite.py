"""Encode the records Percorso writes (transitions, actions, conversions) without fastavro's
per-call set-up: the write-side twin of ``read_plain`` (``percorso.codec.avro``).

``write_plan`` compiles a record schema (logical types dropped) made of strings, longs, ints,
doubles, enums, unions of null and one other type, maps, arrays and nested records into a
plan; ``write_plain`` writes a record with it and returns the same bytes
``fastavro.schemaless_writer`` writes for it. Anything it does not write exactly so (a value
of another Python type than the plain one: a bool for a long, an int for a double, a tuple
for an array; a missing field; an int out of its range; a string that is not valid UTF-8)
raises ``Unwritable``, and the caller leaves the record to fastavro, which decides and words
any error. ``tests/percorso/test_codec_plainwrite.py`` compares both on random records.

Measured on the outputs of the benchmark traffic (docs/performance.md): fastavro takes about
12 µs for a 70-byte transition and 20 µs for an action with its context; this, about a fifth.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

STR, LONG, INT, DOUBLE, ENUM, NULLABLE, MAP, ARRAY, RECORD, DEFAULTED = range(10)
_ABSENT = object()
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1
INT_MIN, INT_MAX = -(2**31), 2**31 - 1
_DOUBLE = struct.Struct("<d").pack

Plan = tuple[tuple[str, int, Any], ...]


class Unwritable(Exception):
    """A record ``write_plain`` does not write itself: fastavro decides."""


def write_plan(schema: Any) -> Plan | None:
    """The plan of a record schema (parsed or not, logical types dropped), or None if any part
    of it is of a kind this writer does not know."""
    try:
        kind, arg = _compile(schema, {})
    except _Unknown:
        return None
    return arg if kind == RECORD else None


class _Unknown(Exception):
    pass


def _compile(t: Any, named: dict[str, tuple[int, Any]]) -> tuple[int, Any]:
    if isinstance(t, str):
        if t in ("string", "long", "int", "double"):
            return {"string": STR, "long": LONG, "int": INT, "double": DOUBLE}[t], None
        if t in named:
            return named[t]
        raise _Unknown(t)
    if isinstance(t, list):
        if len(t) != 2 or "null" not in t:
            raise _Unknown(t)
        null_index = t.index("null")
        kind, arg = _compile(t[1 - null_index], named)
        # the branch index, zig-zag encoded in one byte: 0 -> 0, 1 -> 2
        return NULLABLE, (bytes([2 * null_index]), bytes([2 * (1 - null_index)]), kind, arg)
    if not isinstance(t, Mapping):
        raise _Unknown(t)
    kind_name = t.get("type")
    if kind_name in ("string", "long", "int", "double") and set(t) <= {"type", "logicalType"}:
        return _compile(kind_name, named)
    if kind_name == "enum":
        symbols = {s: _varint(i) for i, s in enumerate(t["symbols"])}
        result: tuple[int, Any] = (ENUM, symbols)
        named[t["name"]] = result
        return result
    if kind_name == "map":
        return MAP, _compile(t["values"], named)
    if kind_name == "array":
        return ARRAY, _compile(t["items"], named)
    if kind_name == "record":
        fields: list[tuple[str, int, Any]] = []
        result = (RECORD, fields)
        named[t["name"]] = result
        for f in t["fields"]:
            kind, arg = _compile(f["type"], named)
            if "default" in f:  # absent from the record, fastavro writes the default
                arg = (f["default"], kind, arg)
                kind = DEFAULTED
            fields.append((f["name"], kind, arg))
        return RECORD, tuple(fields)
    raise _Unknown(t)


def _varint(n: int) -> bytes:
    """The zig-zag varint of a long, as Avro writes it."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _long(out: bytearray, n: int) -> None:
    n = (n << 1) ^ (n >> 63)
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _string(out: bytearray, v: Any) -> None:
    if type(v) is not str:
        raise Unwritable
    b = v.encode()  # UnicodeEncodeError for lone surrogates: fastavro decides
    n = len(b)
    if n < 64:
        out.append(n << 1)
    else:
        _long(out, n)
    out += b


def _value(out: bytearray, kind: int, arg: Any, v: Any) -> None:
    if kind == STR:
        _string(out, v)
    elif kind == LONG:
        if type(v) is not int or not LONG_MIN <= v <= LONG_MAX:
            raise Unwritable
        if 0 <= v < 64:
            out.append(v << 1)
        else:
            _long(out, v)
    elif kind == INT:
        if type(v) is not int or not INT_MIN <= v <= INT_MAX:
            raise Unwritable
        if 0 <= v < 64:
            out.append(v << 1)
        else:
            _long(out, v)
    elif kind == NULLABLE:
        if v is None:
            out += arg[0]
        else:
            out += arg[1]
            _value(out, arg[2], arg[3], v)
    elif kind == ENUM:
        index = arg.get(v) if type(v) is str else None
        if index is None:
            raise Unwritable
        out += index
    elif kind == DOUBLE:
        if type(v) is not float:
            raise Unwritable
        out += _DOUBLE(v)
    elif kind == RECORD:
        _record(out, arg, v)
    elif kind == MAP:
        if type(v) is not dict:
            raise Unwritable
        if v:
            _long(out, len(v))
            values, sub = arg
            if values == STR:
                for key, item in v.items():
                    _string(out, key)
                    _string(out, item)
            else:
                for key, item in v.items():
                    _string(out, key)
                    _value(out, values, sub, item)
        out.append(0)
    else:  # ARRAY
        if type(v) is not list:
            raise Unwritable
        if v:
            _long(out, len(v))
            items, sub = arg
            for item in v:
                _value(out, items, sub, item)
        out.append(0)


def _record(out: bytearray, plan: Plan, record: Any) -> None:
    if type(record) is not dict:
        raise Unwritable
    for name, kind, arg in plan:
        if kind == DEFAULTED:
            default, kind, arg = arg
            v = record.get(name, _ABSENT)
            if v is _ABSENT:
                v = default
        else:
            try:
                v = record[name]
            except KeyError:  # fastavro refuses
                raise Unwritable from None
        if kind == STR:
            if type(v) is not str:
                raise Unwritable
            b = v.encode()
            n = len(b)
            if n < 64:
                out.append(n << 1)
            else:
                _long(out, n)
            out += b
        elif kind == LONG and type(v) is int and 0 <= v < 64:
            out.append(v << 1)
        elif kind == MAP and arg[0] == STR and type(v) is dict:
            if v:
                _long(out, len(v))
                for key, item in v.items():
                    if type(key) is not str or type(item) is not str:
                        raise Unwritable
                    b = key.encode()
                    n = len(b)
                    if n < 64:
                        out.append(n << 1)
                    else:
                        _long(out, n)
                    out += b
                    b = item.encode()
                    n = len(b)
                    if n < 64:
                        out.append(n << 1)
                    else:
                        _long(out, n)
                    out += b
            out.append(0)
        else:
            _value(out, kind, arg, v)


def write_plain(out: bytearray, plan: Plan, record: Any) -> None:
    """Append ``record`` written with ``plan`` to ``out``; ``Unwritable`` (or
    ``UnicodeEncodeError``) where fastavro should decide. ``out`` is left part-written then."""
    _record(out, plan, record)
