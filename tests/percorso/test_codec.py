from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from percorso.codec import AvroCodec, LocalSchemaRegistry, SerializationError, schema_id_of
from percorso.topics import ACTION_SUBJECT, TOUCHPOINT_SUBJECT, TRANSITION_SUBJECT

REGISTRY = LocalSchemaRegistry()
TP = AvroCodec(REGISTRY, TOUCHPOINT_SUBJECT)
ACTION = AvroCodec(REGISTRY, ACTION_SUBJECT)
TRANSITION = AvroCodec(REGISTRY, TRANSITION_SUBJECT)

text = st.text(max_size=30)
millis = st.integers(min_value=0, max_value=2**53)
str_map = st.dictionaries(text, text, max_size=5)

touchpoints = st.fixed_dictionaries(
    {
        "event_id": text,
        "customer_id": text,
        "channel": text,
        "type": text,
        "occurred_at": millis,
        "attributes": str_map,
        "source": st.none() | text,
    }
)
recent = st.fixed_dictionaries(
    {"event_id": text, "channel": text, "type": text, "occurred_at": millis, "attributes": str_map}
)
actions = st.fixed_dictionaries(
    {
        "action_id": text,
        "customer_id": text,
        "journey_id": text,
        "action": text,
        "channel": text,
        "priority": st.integers(-(2**31), 2**31 - 1),
        "created_at": millis,
        "trigger": text,
        "trigger_kind": st.sampled_from(["event", "window", "unknown"]),
        "stage": st.none() | text,
        "parameters": str_map,
        "context": st.fixed_dictionaries(
            {"stages": str_map, "recent": st.lists(recent, max_size=3)}
        ),
        "expires_at": st.none() | millis,
        "category": text,
        "variant": st.none() | text,
        "not_before": st.none() | millis,
        "version": st.none() | st.integers(1, 2**31 - 1),
        "instance_key": st.none() | text,
    }
)
transitions = st.fixed_dictionaries(
    {
        "customer_id": text,
        "journey_id": text,
        "from_stage": st.none() | text,
        "to_stage": text,
        "at": millis,
        "cause": text,
        "reason": st.sampled_from(
            [
                "event",
                "window",
                "exit",
                "inactivity",
                "goal",
                "unknown",
                "stopped",
                "version_removed",
                "migrated",
            ]
        ),
        "time_in_stage_ms": st.none() | millis,
        "instance": st.integers(0, 2**31 - 1),
        "score": st.none() | st.floats(0, 1),
        "touchpoints": st.integers(0, 2**31 - 1),
        "channel_switches": st.integers(0, 2**31 - 1),
        "version": st.none() | st.integers(1, 2**31 - 1),
        "instance_key": st.none() | text,
        "variant": st.none() | text,
        "from_version": st.none() | st.integers(1, 2**31 - 1),
    }
)


@settings(max_examples=200)
@given(touchpoints)
def test_touchpoint_round_trip(record: dict) -> None:
    data = TP.encode(record)
    assert data[0] == 0
    assert schema_id_of(data) == REGISTRY.latest(TOUCHPOINT_SUBJECT).schema_id
    assert TP.decode(data) == record


@settings(max_examples=100)
@given(actions)
def test_action_round_trip(record: dict) -> None:
    assert ACTION.decode(ACTION.encode(record)) == record


@settings(max_examples=100)
@given(transitions)
def test_transition_round_trip(record: dict) -> None:
    assert TRANSITION.decode(TRANSITION.encode(record)) == record


def test_framing_is_confluent() -> None:
    record = {
        "event_id": "e1",
        "customer_id": "c1",
        "channel": "web",
        "type": "page_view",
        "occurred_at": 1_700_000_000_000,
        "attributes": {},
        "source": None,
    }
    data = TP.encode(record)
    magic, schema_id = struct.unpack(">bI", data[:5])
    assert (magic, schema_id) == (0, 1001)
    # the payload after the header is plain Avro binary of the registered schema
    import io

    raw = fastavro.schemaless_reader(
        io.BytesIO(data[5:]), fastavro.parse_schema(REGISTRY.latest(TOUCHPOINT_SUBJECT).schema)
    )
    assert raw["event_id"] == "e1"


GOOD = TP.encode(
    {
        "event_id": "e1",
        "customer_id": "c1",
        "channel": "web",
        "type": "page_view",
        "occurred_at": 1_700_000_000_000,
        "attributes": {"a": "b"},
        "source": None,
    }
)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"", "truncated payload of 0 bytes"),
        (b"\x00\x00\x00", "truncated payload of 3 bytes"),
        (None, "null"),
        (b'{"event_id": "e1"}', "wrong magic byte 0x7b"),
        (b"\x01" + GOOD[1:], "wrong magic byte 0x01"),
        (b"\x00\x00\x00\x00\x07" + GOOD[5:], "unknown schema id 7"),
        (GOOD[:-3], "writer schema id 1001"),
        (GOOD[:8], "writer schema id 1001"),
        (GOOD + b"\x00\x01", "2 bytes left over"),
        (b"\x00" + struct.pack(">I", 2001) + GOOD[5:], "writer schema id 2001"),
    ],
)
def test_malformed_payloads_raise_one_typed_error(payload: bytes | None, fragment: str) -> None:
    with pytest.raises(SerializationError) as info:
        TP.decode(payload)
    assert fragment in str(info.value)
    assert "Touchpoint" in str(info.value)


@given(st.binary(max_size=64))
def test_garbage_never_escapes_as_another_exception(data: bytes) -> None:
    with contextlib.suppress(SerializationError):
        TP.decode(data)


def test_encode_errors_are_typed() -> None:
    with pytest.raises(SerializationError, match=r"cannot encode io\.percorso\.Touchpoint"):
        TP.encode({"event_id": "e1"})
    with pytest.raises(SerializationError):
        TP.encode(
            {
                "event_id": 5,
                "customer_id": "c",
                "channel": "w",
                "type": "t",
                "occurred_at": "yesterday",
                "attributes": {},
            }
        )


def _registry_with(tmp_path: Path, versions: list[dict]) -> LocalSchemaRegistry:
    subject = "io.percorso.Touchpoint"
    entries = []
    for n, schema in enumerate(versions, start=1):
        name = f"touchpoint.v{n}.avsc"
        (tmp_path / name).write_text(json.dumps(schema))
        entries.append({"version": n, "id": 1000 + n, "file": name})
    (tmp_path / "registry.json").write_text(json.dumps({"subjects": {subject: entries}}))
    return LocalSchemaRegistry(tmp_path)


def test_reader_resolves_every_registered_version(tmp_path: Path) -> None:
    """Bytes written with v1 are read with the v2 schema: new field gets its default."""
    v1 = REGISTRY.latest(TOUCHPOINT_SUBJECT).schema
    v2 = json.loads(json.dumps(v1))
    v2["fields"].append(
        {
            "name": "consent_basis",
            "type": "string",
            "default": "legitimate",
            "doc": "why we may process it",
        }
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    old_reader = AvroCodec(_registry_with(tmp_path / "a", [v1]), TOUCHPOINT_SUBJECT)
    new_registry = _registry_with(tmp_path / "b", [v1, v2])
    new_codec = AvroCodec(new_registry, TOUCHPOINT_SUBJECT)
    old_bytes = old_reader.encode(
        {
            "event_id": "e1",
            "customer_id": "c1",
            "channel": "web",
            "type": "t",
            "occurred_at": 1,
            "attributes": {},
            "source": None,
        }
    )
    decoded = new_codec.decode(old_bytes)
    assert decoded["consent_basis"] == "legitimate"
    assert new_codec.schema_id == 1002
    assert new_codec.decode(new_codec.encode(decoded)) == decoded
