"""Encode the records Percorso writes (transitions, actions, conversions) without fastavro's
per-call set-up: the write-side twin of ``read_plain`` (``percorso.codec.avro``).

``write_plan`` turns a record schema (logical types dropped) made of strings, longs, ints,
doubles, enums, unions of null and one other type, maps, arrays and nested records into a
writer: a function generated for that schema, one straight run of statements per field, that
appends to a ``bytearray`` the bytes ``fastavro.schemaless_writer`` writes for the same record
(a field absent from the record gets its default, as fastavro gives it). Anything it does not
write exactly so raises ``Unwritable`` and the caller leaves the record to fastavro, which
decides and words any error: a value of another Python type than the plain one (a bool for a
long, an int for a double, a tuple for an array, a dict subclass), an absent field without a
default, an int out of its range; a lone surrogate raises ``UnicodeEncodeError`` the same way.
``tests/percorso/test_codec_plainwrite.py`` compares both on records drawn from the schemas,
valid and not. Measured in docs/performance.md.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

STR, LONG, INT, DOUBLE, ENUM, NULLABLE, MAP, ARRAY, RECORD = range(9)
LONG_RANGE = (-(2**63), 2**63 - 1)
INT_RANGE = (-(2**31), 2**31 - 1)

Writer = Callable[[bytearray, Any], None]


class Unwritable(Exception):
    """A record the generated writer does not write itself: fastavro decides."""


class _Unknown(Exception):
    """A part of a schema the writer does not know."""


def write_plan(schema: Any) -> Writer | None:
    """The writer of a record schema (logical types dropped), or None if any part of it is of
    a kind this module does not know (fastavro then writes every record)."""
    try:
        kind, arg = _compile(schema, {}, set())
    except _Unknown:
        return None
    if kind != RECORD:
        return None
    source = _Source()
    source.line(1, "if type(record) is not dict: raise Unwritable")
    source.record(1, "record", arg, 0)
    code = "def write(out, record):\n" + "\n".join(source.lines) + "\n"
    scope: dict[str, Any] = {
        "Unwritable": Unwritable,
        "_long": _long,
        "_double": struct.Struct("<d").pack,
        **source.constants,
    }
    exec(compile(code, f"<avro writer of {schema.get('name')}>", "exec"), scope)
    writer: Writer = scope["write"]
    writer.source = code  # type: ignore[attr-defined]  # for reading, and for the tests
    return writer


def _compile(t: Any, named: dict[str, tuple[int, Any]], open_: set[str]) -> tuple[int, Any]:
    """(kind, argument) of an Avro type: a record's argument is its fields as (name, kind,
    argument, default or ``_NO_DEFAULT``)."""
    if isinstance(t, str):
        simple = {"string": STR, "long": LONG, "int": INT, "double": DOUBLE}
        if t in simple:
            return simple[t], None
        if t in open_:  # a recursive record: left to fastavro
            raise _Unknown(t)
        if t in named:
            return named[t]
        raise _Unknown(t)
    if isinstance(t, list):
        if len(t) != 2 or "null" not in t:
            raise _Unknown(t)
        null_index = t.index("null")
        kind, arg = _compile(t[1 - null_index], named, open_)
        return NULLABLE, (null_index, kind, arg)
    if not isinstance(t, Mapping):
        raise _Unknown(t)
    name = t.get("type")
    if name in ("string", "long", "int", "double") and set(t) <= {"type", "logicalType"}:
        return _compile(name, named, open_)
    if name == "enum":
        if len(t["symbols"]) > 64:  # an index of more than one varint byte
            raise _Unknown(t)
        result: tuple[int, Any] = (ENUM, tuple(t["symbols"]))
    elif name == "map":
        result = (MAP, _compile(t["values"], named, open_))
    elif name == "array":
        result = (ARRAY, _compile(t["items"], named, open_))
    elif name == "record":
        open_.add(t["name"])
        fields = tuple(
            (f["name"], *_compile(f["type"], named, open_), f.get("default", _NO_DEFAULT))
            for f in t["fields"]
        )
        open_.discard(t["name"])
        result = (RECORD, fields)
    else:
        raise _Unknown(t)
    if name in ("enum", "record"):
        named[t["name"]] = result
    return result


_NO_DEFAULT = object()
_ABSENT = object()


class _Source:
    """The statements of a generated writer; values it needs are bound as constants."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {"_ABSENT": _ABSENT}

    def line(self, depth: int, text: str) -> None:
        self.lines.append("    " * depth + text)

    def constant(self, value: Any) -> str:
        name = f"_c{len(self.constants)}"
        self.constants[name] = value
        return name

    def record(self, d: int, v: str, fields: Any, level: int) -> None:
        for n, (field, kind, arg, default) in enumerate(fields):
            f = f"f{level}_{n}"
            if default is _NO_DEFAULT:
                self.line(d, f"try: {f} = {v}[{field!r}]")
                self.line(d, "except KeyError: raise Unwritable from None")
            else:
                self.line(d, f"{f} = {v}.get({field!r}, _ABSENT)")
                self.line(d, f"if {f} is _ABSENT: {f} = {self.constant(default)}")
            self.value(d, f, kind, arg, level + 1)

    def value(self, d: int, v: str, kind: int, arg: Any, level: int) -> None:
        line = self.line
        if kind == STR:
            line(d, f"if type({v}) is not str: raise Unwritable")
            line(d, f"b = {v}.encode()")
            line(d, "n = len(b)")
            line(d, "if n < 64: out.append(n << 1)")
            line(d, "else: _long(out, n)")
            line(d, "out += b")
        elif kind in (LONG, INT):
            low, high = LONG_RANGE if kind == LONG else INT_RANGE
            line(d, f"if type({v}) is not int: raise Unwritable")
            line(d, f"if 0 <= {v} < 64: out.append({v} << 1)")
            line(d, f"elif {low} <= {v} <= {high}: _long(out, {v})")
            line(d, "else: raise Unwritable")
        elif kind == DOUBLE:
            line(d, f"if type({v}) is not float: raise Unwritable")
            line(d, f"out += _double({v})")
        elif kind == ENUM:
            indexes = self.constant({s: bytes([2 * i]) for i, s in enumerate(arg)})
            line(d, f"if type({v}) is not str or {v} not in {indexes}: raise Unwritable")
            line(d, f"out += {indexes}[{v}]")
        elif kind == NULLABLE:
            null_index, inner, inner_arg = arg
            line(d, f"if {v} is None: out.append({2 * null_index})")
            line(d, "else:")
            line(d + 1, f"out.append({2 * (1 - null_index)})")
            self.value(d + 1, v, inner, inner_arg, level)
        elif kind == RECORD:
            line(d, f"if type({v}) is not dict: raise Unwritable")
            self.record(d, v, arg, level)
        else:  # MAP or ARRAY: one block of every item, then the empty block
            items, item_arg = arg
            line(d, f"if type({v}) is not {'dict' if kind == MAP else 'list'}: raise Unwritable")
            line(d, f"if {v}:")
            line(d + 1, f"_long(out, len({v}))")
            if kind == MAP:
                key, item = f"k{level}", f"x{level}"
                line(d + 1, f"for {key}, {item} in {v}.items():")
                self.value(d + 2, key, STR, None, level + 1)
            else:
                item = f"x{level}"
                line(d + 1, f"for {item} in {v}:")
            self.value(d + 2, item, items, item_arg, level + 1)
            line(d, "out.append(0)")


def _long(out: bytearray, n: int) -> None:
    """Append the zig-zag varint of a long, as Avro writes it."""
    n = (n << 1) ^ (n >> 63)
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
