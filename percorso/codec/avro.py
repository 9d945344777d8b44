"""Avro with Confluent framing: byte 0 = 0, bytes 1-4 = schema id (big-endian), Avro binary."""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping
from typing import Any

import fastavro
from fastavro.types import Schema as FastSchema

from percorso.codec.errors import SchemaNotFoundError, SerializationError
from percorso.codec.plainwrite import Unwritable, write_plan
from percorso.codec.registry import SchemaRegistry

MAGIC_BYTE = 0
_HEADER = struct.Struct(">bI")

# field kinds the plain reader decodes itself (``plain_fields``)
STRING, LONG, STRING_MAP, OPTIONAL_STRING = range(4)
PlainFields = tuple[tuple[str, int], ...]


class _Unplain(Exception):
    """What the plain reader leaves to fastavro: it decides, and words any error."""


def _without_logical_types(schema: Any) -> Any:
    """Percorso keeps timestamps as epoch milliseconds (int) in memory: drop the logical types
    for the in-process codec so fastavro neither builds nor expects datetime objects."""
    if isinstance(schema, list):
        return [_without_logical_types(s) for s in schema]
    if isinstance(schema, dict):
        return {k: _without_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    return schema


def _parse(schema: Mapping[str, Any]) -> FastSchema:
    return fastavro.parse_schema(_without_logical_types(dict(schema)), _force=True)


def plain_fields(schema: Mapping[str, Any]) -> PlainFields | None:
    """The fields of a record made only of strings, longs (logical types dropped), maps of
    strings and optional strings (``["null", "string"]``), as (name, kind); None for any other
    schema. The Touchpoint is such a record: ``read_plain`` decodes it without fastavro."""
    if schema.get("type") != "record":
        return None
    fields = []
    for f in schema["fields"]:
        t = f["type"]
        if isinstance(t, dict) and t.get("type") in ("string", "long"):
            t = t["type"]
        if t == "string":
            kind = STRING
        elif t == "long":
            kind = LONG
        elif t == ["null", "string"]:
            kind = OPTIONAL_STRING
        elif isinstance(t, dict) and t.get("type") == "map" and t.get("values") == "string":
            kind = STRING_MAP
        else:
            return None
        fields.append((f["name"], kind))
    return tuple(fields)


def _long_tail(data: bytes, pos: int, first: int) -> tuple[int, int]:
    """A zig-zag varint of more than one byte, ``first`` already read; at most 9 bytes (63
    bits): longer ones (a value near the 64-bit limits, or garbage) are left to fastavro."""
    n = first & 0x7F
    shift = 7
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return (n >> 1) ^ -(n & 1), pos
        shift += 7
        if shift > 56:
            raise _Unplain


def read_plain(data: bytes, pos: int, fields: PlainFields) -> dict[str, Any]:
    """The record of ``plain_fields`` encoded in ``data`` from ``pos`` to its very end, as
    ``fastavro.schemaless_reader`` decodes it with the same schema, without its per-call set-up
    and per-field schema look-ups. Raises ``_Unplain``, ``IndexError`` (truncated) or
    ``UnicodeDecodeError`` where it does not decode exactly that: negative lengths, map blocks
    with a byte size, a union branch not written as 0 or 1, bytes left over, varints of more
    than 9 bytes; the caller then decodes with fastavro."""
    size = len(data)
    record: dict[str, Any] = {}
    for name, kind in fields:
        if kind == OPTIONAL_STRING:
            branch = data[pos]
            pos += 1
            if branch == 0:
                record[name] = None
                continue
            if branch != 2:  # the zig-zag of 1, in its one canonical byte
                raise _Unplain
            kind = STRING
        if kind == STRING:
            n = data[pos]
            pos += 1
            if n < 0x80:
                n = (n >> 1) ^ -(n & 1)
            else:
                n, pos = _long_tail(data, pos, n)
            end = pos + n
            if n < 0 or end > size:
                raise _Unplain
            record[name] = data[pos:end].decode()
            pos = end
        elif kind == LONG:
            n = data[pos]
            pos += 1
            if n < 0x80:
                n = (n >> 1) ^ -(n & 1)
            else:
                n, pos = _long_tail(data, pos, n)
            record[name] = n
        else:  # STRING_MAP: blocks of key/value pairs, ending with an empty block
            items: dict[str, str] = {}
            while True:
                count = data[pos]
                pos += 1
                if count < 0x80:
                    count = (count >> 1) ^ -(count & 1)
                else:
                    count, pos = _long_tail(data, pos, count)
                if count == 0:
                    break
                if count < 0:  # a block that gives its size in bytes
                    raise _Unplain
                for _ in range(count):
                    n = data[pos]
                    pos += 1
                    if n < 0x80:
                        n = (n >> 1) ^ -(n & 1)
                    else:
                        n, pos = _long_tail(data, pos, n)
                    end = pos + n
                    if n < 0 or end > size:
                        raise _Unplain
                    key = data[pos:end].decode()
                    pos = end
                    n = data[pos]
                    pos += 1
                    if n < 0x80:
                        n = (n >> 1) ^ -(n & 1)
                    else:
                        n, pos = _long_tail(data, pos, n)
                    end = pos + n
                    if n < 0 or end > size:
                        raise _Unplain
                    items[key] = data[pos:end].decode()
                    pos = end
            record[name] = items
    if pos != size:
        raise _Unplain
    return record


class AvroCodec:
    """Encodes and decodes one record type (a registry subject) with Confluent framing.

    Writes with the subject's newest version; reads bytes written with any version the registry
    knows, resolving the writer's schema into the newest (reader) schema.
    """

    def __init__(self, registry: SchemaRegistry, subject: str) -> None:
        self.registry = registry
        self.subject = subject
        latest = registry.latest(subject)
        self.schema_id = latest.schema_id
        self.reader_schema = _parse(latest.schema)
        self._header = _HEADER.pack(MAGIC_BYTE, self.schema_id)
        self._writers: dict[int, FastSchema] = {self.schema_id: self.reader_schema}
        # bytes written with the newest schema, when it is plain enough, skip fastavro
        plain_schema = _without_logical_types(dict(latest.schema))
        self._plain = plain_fields(plain_schema)
        # and so do records written with it (percorso.codec.plainwrite)
        self._write = write_plan(plain_schema)

    def encode(self, record: Mapping[str, Any]) -> bytes:
        if self._write is not None:
            out = bytearray(self._header)
            try:
                self._write(out, record)
                return bytes(out)
            except (Unwritable, UnicodeEncodeError):
                pass  # fastavro decides, and words the error
        buf = io.BytesIO()
        buf.write(self._header)
        try:
            fastavro.schemaless_writer(buf, self.reader_schema, record)
        except Exception as exc:  # fastavro raises ValueError, TypeError, struct.error, ...
            raise SerializationError(
                f"cannot encode {self.subject}: {type(exc).__name__}: {exc}"
            ) from exc
        return buf.getvalue()

    def decode(self, data: bytes | None) -> dict[str, Any]:
        if data is None:
            raise SerializationError(
                f"cannot decode {self.subject}: the value is null (a tombstone?)"
            )
        if len(data) < _HEADER.size:
            raise SerializationError(
                f"cannot decode {self.subject}: truncated payload of {len(data)} bytes; "
                f"Confluent framing needs at least {_HEADER.size}"
            )
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC_BYTE:
            raise SerializationError(
                f"cannot decode {self.subject}: wrong magic byte 0x{data[0]:02x} (expected 0x00); "
                f"the payload is not Confluent-framed Avro"
            )
        if schema_id == self.schema_id and self._plain is not None and type(data) is bytes:
            try:
                return read_plain(data, _HEADER.size, self._plain)
            except (_Unplain, IndexError, UnicodeDecodeError):
                pass  # fastavro decides, and words the error
        writer = self._writer(schema_id)
        buf = io.BytesIO(data)
        buf.seek(_HEADER.size)
        reader = None if schema_id == self.schema_id else self.reader_schema
        try:
            record = fastavro.schemaless_reader(buf, writer, reader)
        except Exception as exc:  # EOFError, SchemaResolutionError, UnicodeDecodeError, ...
            raise SerializationError(
                f"cannot decode {self.subject} with writer schema id {schema_id}: "
                f"{type(exc).__name__}: {exc or 'payload ended early (truncated)'}"
            ) from exc
        if buf.tell() != len(data):
            raise SerializationError(
                f"cannot decode {self.subject} with writer schema id {schema_id}: "
                f"{len(data) - buf.tell()} bytes left over after the record"
            )
        if not isinstance(record, dict):
            raise SerializationError(f"cannot decode {self.subject}: not a record")
        return record

    def _writer(self, schema_id: int) -> FastSchema:
        writer = self._writers.get(schema_id)
        if writer is None:
            try:
                raw = self.registry.schema_by_id(schema_id)
            except SchemaNotFoundError as exc:
                raise SerializationError(f"cannot decode {self.subject}: {exc}") from exc
            writer = _parse(raw)
            self._writers[schema_id] = writer
        return writer


def schema_id_of(data: bytes) -> int | None:
    """The schema id in Confluent-framed bytes, or None if the framing is absent."""
    if len(data) < _HEADER.size or data[0] != MAGIC_BYTE:
        return None
    return int(_HEADER.unpack_from(data)[1])
