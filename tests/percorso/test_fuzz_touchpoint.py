"""Fuzzing the touchpoint decoder and validator, the two steps every record of the input topic
takes before the engine sees it (``AvroCodec.decode``, then ``validate_touchpoint``).

Random bytes, random Confluent-framed payloads under every schema id of the registry, and
mutations of valid encoded touchpoints: the only exceptions allowed are SerializationError and
InvalidTouchpoint, and whatever passes both is a touchpoint the engine can take. ``make test``
runs a few hundred examples; ``make fuzz`` runs many more (PERCORSO_FUZZ_EXAMPLES).
"""

from __future__ import annotations

import os
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from percorso.codec import MAGIC_BYTE, AvroCodec, LocalSchemaRegistry, SerializationError
from percorso.records import InvalidTouchpoint, parse_time_ms, validate_touchpoint
from percorso.topics import TOUCHPOINT_SUBJECT

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("PERCORSO_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

REGISTRY = LocalSchemaRegistry()
CODEC = AvroCodec(REGISTRY, TOUCHPOINT_SUBJECT)
SCHEMA_IDS = sorted(v.schema_id for s in REGISTRY.subjects() for v in REGISTRY.versions(s))

text = st.text(max_size=20)
names = st.text(min_size=1, max_size=20) | text
touchpoints = st.fixed_dictionaries(
    {
        "event_id": names,
        "customer_id": names,
        "channel": names,
        "type": names,
        # mostly plausible event times, so mutations also reach the validator's later checks
        "occurred_at": st.integers(946_684_800_000, 4_102_444_799_999)
        | st.integers(-(2**63), 2**63 - 1),
        "attributes": st.dictionaries(text, text, max_size=4),
        "source": st.none() | text,
    }
)
# Avro longs and lengths are zig-zag varints: these make huge, negative or unterminated ones
VARINTS = [b"\xff" * 10 + b"\x01", b"\x80" * 12, b"\xfe\xff\xff\xff\x0f", b"\x01", b"\x7f"]


@st.composite
def mutated_touchpoints(draw: st.DrawFn) -> bytes:
    data = bytearray(CODEC.encode(draw(touchpoints)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "varint", "schema"]))
        if op == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "varint":
            data[at:at] = draw(st.sampled_from(VARINTS))
        elif op == "schema" and len(data) >= 5:
            data[1:5] = struct.pack(">I", draw(st.sampled_from(SCHEMA_IDS)))
    return bytes(data)


framed = st.builds(
    lambda schema_id, body: struct.pack(">bI", MAGIC_BYTE, schema_id) + body,
    st.sampled_from(SCHEMA_IDS) | st.integers(0, 2**32 - 1),
    st.binary(max_size=200),
)


def decode_and_validate(data: bytes | None) -> tuple[str, dict[str, Any] | None]:
    """The two steps a record takes: (outcome, the touchpoint if both steps accept it)."""
    try:
        record = CODEC.decode(data)
    except SerializationError:
        return "undecodable", None
    try:
        touchpoint = validate_touchpoint(record)
    except InvalidTouchpoint as exc:
        assert exc.field, exc
        return "invalid", None
    for name in ("event_id", "customer_id", "channel", "type"):
        assert isinstance(touchpoint[name], str) and touchpoint[name].strip()
    assert parse_time_ms(touchpoint["occurred_at"]) == touchpoint["occurred_at"]
    attributes = touchpoint["attributes"]
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in attributes.items())
    assert touchpoint["source"] is None or isinstance(touchpoint["source"], str)
    return "accepted", touchpoint


def test_a_valid_touchpoint_passes() -> None:
    record = {
        "event_id": "e-1",
        "customer_id": "c-1",
        "channel": "web",
        "type": "cart_add",
        "occurred_at": 1_800_000_000_000,
        "attributes": {"sku": "SKU-0001"},
        "source": None,
    }
    assert decode_and_validate(CODEC.encode(record)) == ("accepted", record)
    assert decode_and_validate(None) == ("undecodable", None)
    assert decode_and_validate(CODEC.encode({**record, "type": " "}))[0] == "invalid"


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    event(decode_and_validate(data)[0])


@FUZZ
@given(framed)
def test_random_framed_payloads(data: bytes) -> None:
    event(decode_and_validate(data)[0])


@FUZZ
@given(mutated_touchpoints())
def test_mutated_touchpoints(data: bytes) -> None:
    event(decode_and_validate(data)[0])
