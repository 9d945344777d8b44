"""Fuzzing the touchpoint decoder and validator, the two steps every record of the input topic
takes before the engine sees it (``AvroCodec.decode``, then ``validate_touchpoint``).

Random bytes, random Confluent-framed payloads under every schema id of the registry, and
mutations of valid encoded touchpoints: the only exceptions allowed are SerializationError and
InvalidTouchpoint, and whatever passes both is a touchpoint the engine can take, within every
limit of ``percorso.limits`` (also checked with small limits, so that inputs reach them).
``make test`` runs a few hundred examples; ``make fuzz`` runs many more (PERCORSO_FUZZ_EXAMPLES).
"""

from __future__ import annotations

import os
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from percorso.codec import MAGIC_BYTE, AvroCodec, LocalSchemaRegistry, SerializationError
from percorso.limits import DEFAULT, Limits
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
    assert_within(touchpoint, DEFAULT)
    return "accepted", touchpoint


def utf8(text: str) -> int:
    return len(text.encode())


def assert_within(
    touchpoint: dict[str, Any], limits: Limits, correlated: frozenset = frozenset()
) -> None:
    """An accepted touchpoint breaks no limit."""
    for name in ("event_id", "customer_id", "channel", "type"):
        assert utf8(touchpoint[name]) <= limits.max_id_bytes
        assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in touchpoint[name])
    if touchpoint["source"] is not None:
        assert utf8(touchpoint["source"]) <= limits.max_id_bytes
    attributes = touchpoint["attributes"]
    assert len(attributes) <= limits.max_attributes
    for k, v in attributes.items():
        assert utf8(k) <= limits.max_attribute_key_bytes
        bound = (
            limits.max_correlation_value_bytes
            if k in correlated
            else limits.max_attribute_value_bytes
        )
        assert utf8(v) <= bound


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


SMALL = Limits(
    max_id_bytes=6,
    max_attributes=3,
    max_attribute_key_bytes=4,
    max_attribute_value_bytes=8,
    max_correlation_value_bytes=3,
)
CORRELATED = frozenset({"t", "topic"})
# values around the small bounds (multi-byte characters, key separators), and now and then one
# field replaced by something hostile (control characters, longer text), so that both outcomes
# are common
around = st.text(alphabet="ab|:é€", min_size=1, max_size=3) | st.sampled_from(["a|b:é", "€€"])
hostile = st.text(alphabet="a\n\x00\x85\x7f€", max_size=8) | st.text(max_size=10)
FIELDS = ("event_id", "customer_id", "channel", "type", "source", "key", "value", "count")


@st.composite
def records_near_small_limits(draw: st.DrawFn) -> dict[str, Any]:
    record: dict[str, Any] = {name: draw(around) for name in FIELDS[:4]}
    record["occurred_at"] = 1_800_000_000_000
    record["source"] = draw(st.none() | around)
    names = st.sampled_from(["t", "topic", "a", "sku"]) | around
    record["attributes"] = draw(st.dictionaries(names, around, max_size=3))
    spoiled = draw(st.none() | st.sampled_from(FIELDS))
    if spoiled in ("key", "value"):
        k, v = draw(names), draw(around)
        record["attributes"][draw(hostile) if spoiled == "key" else k] = (
            draw(hostile) if spoiled == "value" else v
        )
    elif spoiled == "count":
        record["attributes"].update({f"x{n}": "v" for n in range(draw(st.integers(0, 4)))})
    elif spoiled is not None:
        record[spoiled] = draw(hostile)
    return record


@FUZZ
@given(records_near_small_limits())
def test_an_accepted_touchpoint_never_breaks_a_limit(record: dict[str, Any]) -> None:
    try:
        touchpoint = validate_touchpoint(record, SMALL, CORRELATED)
    except InvalidTouchpoint as exc:
        assert exc.field
        event("invalid")
        return
    event("accepted")
    assert_within(touchpoint, SMALL, CORRELATED)
