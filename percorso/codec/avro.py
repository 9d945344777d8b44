"""Avro with Confluent framing: byte 0 = 0, bytes 1-4 = schema id (big-endian), Avro binary."""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping
from typing import Any

import fastavro
from fastavro.types import Schema as FastSchema

from percorso.codec.errors import SchemaNotFoundError, SerializationError
from percorso.codec.registry import SchemaRegistry

MAGIC_BYTE = 0
_HEADER = struct.Struct(">bI")


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

    def encode(self, record: Mapping[str, Any]) -> bytes:
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
