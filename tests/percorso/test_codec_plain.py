"""The touchpoint's plain reader (``percorso.codec.avro.read_plain``) against fastavro.

``AvroCodec.decode`` reads bytes written with the newest Touchpoint schema itself and leaves
everything else to fastavro. Whatever it returns must be exactly what fastavro returns for the
same bytes, and where it gives up (an exception of its own, or a truncated payload) fastavro
decides: on valid touchpoints of every shape, and on random and mutated payloads.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from percorso.codec import AvroCodec, LocalSchemaRegistry, SerializationError
from percorso.codec.avro import (
    LONG,
    OPTIONAL_STRING,
    STRING,
    STRING_MAP,
    _Unplain,
    _without_logical_types,
    plain_fields,
    read_plain,
)
from percorso.topics import ACTION_SUBJECT, TOUCHPOINT_SUBJECT

REGISTRY = LocalSchemaRegistry()
CODEC = AvroCodec(REGISTRY, TOUCHPOINT_SUBJECT)
SCHEMA = _without_logical_types(dict(REGISTRY.latest(TOUCHPOINT_SUBJECT).schema))
FIELDS = plain_fields(SCHEMA)
PARSED = fastavro.parse_schema(SCHEMA)
GAVE_UP = (_Unplain, IndexError, UnicodeDecodeError)

# short and long strings (lengths of one and of several varint bytes), any code point
text = st.text(max_size=8) | st.text(min_size=60, max_size=300)
longs = st.integers(-(2**63), 2**63 - 1) | st.integers(-100, 100)
touchpoints = st.fixed_dictionaries(
    {
        "event_id": text,
        "customer_id": text,
        "channel": text,
        "type": text,
        "occurred_at": longs,
        "attributes": st.dictionaries(text, text, max_size=3)
        | st.dictionaries(st.text(max_size=4), st.text(max_size=2), min_size=64, max_size=80),
        "source": st.none() | text,
    }
)


def with_fastavro(body: bytes) -> tuple[Any, bool]:
    """fastavro's record for ``body`` and whether it read every byte (or the error raised)."""
    buf = io.BytesIO(body)
    try:
        record = fastavro.schemaless_reader(buf, PARSED, None)
    except Exception as exc:
        return exc, False
    return record, buf.tell() == len(body)


def test_the_touchpoint_is_plain() -> None:
    assert FIELDS == (
        ("event_id", STRING),
        ("customer_id", STRING),
        ("channel", STRING),
        ("type", STRING),
        ("occurred_at", LONG),
        ("attributes", STRING_MAP),
        ("source", OPTIONAL_STRING),
    )
    assert plain_fields(dict(REGISTRY.latest(ACTION_SUBJECT).schema)) is None  # nested records


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(touchpoints)
def test_valid_touchpoints_decode_as_fastavro_does(record: dict[str, Any]) -> None:
    data = CODEC.encode(record)
    assert FIELDS is not None
    try:
        plain = read_plain(data, 5, FIELDS)
    except _Unplain:  # varints of 10 bytes: only the extremes of a long
        assert abs(record["occurred_at"]) >= 2**62
        plain = None
    fast, whole = with_fastavro(data[5:])
    assert whole and fast == record
    if plain is not None:
        assert plain == fast
        assert list(plain) == list(fast) and list(plain["attributes"]) == list(record["attributes"])
    assert CODEC.decode(data) == record


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(CODEC.encode(draw(touchpoints))[5:])
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        if op == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(
                st.binary(min_size=1, max_size=6) | st.sampled_from([b"\x80\x00", b"\x01", b"\x03"])
            )
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 6))]
    return bytes(data)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mutated() | st.binary(max_size=80))
def test_what_it_decodes_of_any_bytes_is_what_fastavro_decodes(body: bytes) -> None:
    assert FIELDS is not None
    fast, whole = with_fastavro(body)
    try:
        plain = read_plain(body, 0, FIELDS)
    except GAVE_UP:
        plain = None
    if plain is not None:
        assert whole and plain == fast
    framed = struct.pack(">bI", 0, CODEC.schema_id) + body
    if whole:
        assert CODEC.decode(framed) == fast
    else:
        with pytest.raises(SerializationError):
            CODEC.decode(framed)


@pytest.mark.parametrize(
    "body",
    [
        b"\x02a\x02b\x02c\x02d\x00\x00\x00",  # a valid minimal touchpoint
        b"\x02a\x02b\x02c\x02d\x00\x03\x02\x02k\x02v\x00\x00",  # a map block with its byte size
        b"\x02a\x02b\x02c\x02d\x00\x00\x80\x00",  # the null branch in two bytes
        b"\x02a\x02b\x02c\x02d\x80\x80\x00\x00\x00",  # a long in three bytes
        b"\x02a\x02b\x02c\x02d\x00\x00\x04",  # no such union branch
    ],
)
def test_odd_but_valid_encodings_are_left_to_fastavro(body: bytes) -> None:
    fast, whole = with_fastavro(body)
    framed = struct.pack(">bI", 0, CODEC.schema_id) + body
    if whole:
        assert CODEC.decode(framed) == fast
    else:
        with pytest.raises(SerializationError):
            CODEC.decode(framed)
