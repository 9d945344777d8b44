"""Errors of the codec: library errors become these, with a message that says what was wrong."""


class SerializationError(Exception):
    """A value could not be encoded, or bytes could not be decoded, as a Percorso record."""


class SchemaNotFoundError(SerializationError):
    """The schema id in the framing is not known to the registry."""


class IncompatibleSchemaError(Exception):
    """A schema version breaks the compatibility rule of its subject."""
