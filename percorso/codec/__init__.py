"""Avro codec with Confluent framing, schema registries and compatibility checks."""

from percorso.codec.avro import MAGIC_BYTE, AvroCodec, schema_id_of
from percorso.codec.compat import backward_transitive_problems, reader_problems
from percorso.codec.errors import IncompatibleSchemaError, SchemaNotFoundError, SerializationError
from percorso.codec.registry import (
    ConfluentSchemaRegistry,
    LocalSchemaRegistry,
    SchemaRegistry,
    SchemaVersion,
    registry_from_env,
)

__all__ = [
    "MAGIC_BYTE",
    "AvroCodec",
    "ConfluentSchemaRegistry",
    "IncompatibleSchemaError",
    "LocalSchemaRegistry",
    "SchemaNotFoundError",
    "SchemaRegistry",
    "SchemaVersion",
    "SerializationError",
    "backward_transitive_problems",
    "reader_problems",
    "registry_from_env",
    "schema_id_of",
]
