"""Touchpoint limits: each is enforced at its bound (one byte more is refused, naming the limit
and its setting), declared once, and settable from the environment."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest

from percorso.config import Settings
from percorso.limits import DEFAULT, ENV, Limits
from percorso.records import (
    FutureEvent,
    InvalidTouchpoint,
    check_event_time,
    touchpoint_from_json,
    validate_touchpoint,
)

AT = 1_800_000_000_000


def record(**changes: Any) -> dict[str, Any]:
    base = {
        "event_id": "e-1",
        "customer_id": "c-1",
        "channel": "web",
        "type": "cart_add",
        "occurred_at": AT,
        "attributes": {"sku": "S-1"},
        "source": None,
    }
    return {**base, **changes}


def refused(rec: dict[str, Any], limits: Limits = DEFAULT, **kw: Any) -> InvalidTouchpoint:
    with pytest.raises(InvalidTouchpoint) as info:
        validate_touchpoint(rec, limits, **kw)
    return info.value


@pytest.mark.parametrize("name", ["event_id", "customer_id", "channel", "type", "source"])
def test_ids_and_names_are_bounded_in_utf8_bytes(name: str) -> None:
    limit = DEFAULT.max_id_bytes
    assert validate_touchpoint(record(**{name: "x" * limit}))[name] == "x" * limit
    error = refused(record(**{name: "x" * (limit + 1)}))
    assert error.field == name
    assert "max_id_bytes" in str(error) and "PERCORSO_MAX_ID_BYTES" in str(error)
    # bytes, not characters: 129 two-byte characters are 258 bytes
    assert refused(record(**{name: "é" * (limit // 2 + 1)})).field == name


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "nul\x00", "tab\there", "del\x7f", "c1\x85"])
@pytest.mark.parametrize("name", ["event_id", "customer_id", "channel", "type"])
def test_control_characters_are_refused_in_ids_and_names(name: str, bad: str) -> None:
    error = refused(record(**{name: bad}))
    assert error.field == name and "control characters" in str(error)


def test_key_separators_are_legal_in_a_customer_id() -> None:
    """'|', ':' and '=' are ordinary characters of ids; the keys they appear in are parsed
    from the left with fixed-width fields (tests/agents/test_processor.py)."""
    assert validate_touchpoint(record(customer_id="a|b:c=d"))["customer_id"] == "a|b:c=d"


def test_a_lone_surrogate_is_refused_not_raised() -> None:
    assert refused(record(customer_id="c\ud800")).field == "customer_id"
    assert refused(record(attributes={"k": "\udfff"})).field == "attributes.k"


def test_attribute_count_and_sizes_are_bounded() -> None:
    n = DEFAULT.max_attributes
    many = {f"a{i}": "v" for i in range(n)}
    assert len(validate_touchpoint(record(attributes=many))["attributes"]) == n
    error = refused(record(attributes={**many, "one_more": "v"}))
    assert error.field == "attributes" and "PERCORSO_MAX_ATTRIBUTES" in str(error)

    key = DEFAULT.max_attribute_key_bytes
    validate_touchpoint(record(attributes={"k" * key: "v"}))
    assert "PERCORSO_MAX_ATTRIBUTE_KEY_BYTES" in str(
        refused(record(attributes={"k" * (key + 1): "v"}))
    )

    value = DEFAULT.max_attribute_value_bytes
    validate_touchpoint(record(attributes={"comment": "v" * value}))
    error = refused(record(attributes={"comment": "v" * (value + 1)}))
    assert error.field == "attributes.comment"
    assert "PERCORSO_MAX_ATTRIBUTE_VALUE_BYTES" in str(error)


def test_correlated_attributes_have_the_smaller_correlation_bound() -> None:
    size = DEFAULT.max_correlation_value_bytes
    long = "s" * (size + 1)
    assert validate_touchpoint(record(attributes={"sku": long}))  # not correlated: fine
    validate_touchpoint(record(attributes={"sku": "s" * size}), correlated={"sku"})
    error = refused(record(attributes={"sku": long}), correlated={"sku"})
    assert error.field == "attributes.sku"
    assert "PERCORSO_MAX_CORRELATION_VALUE_BYTES" in str(error)


def test_json_lines_are_held_to_the_same_limits() -> None:
    line = record(occurred_at="2027-01-15T10:00:00Z", customer_id="c\n2")
    with pytest.raises(InvalidTouchpoint, match="control characters"):
        touchpoint_from_json(line)
    small = Limits(max_attributes=1)
    with pytest.raises(InvalidTouchpoint, match="PERCORSO_MAX_ATTRIBUTES"):
        touchpoint_from_json(record(attributes={"a": "1", "b": "2"}), small)


def test_event_time_skew() -> None:
    now = AT
    skew = DEFAULT.max_event_skew_ms
    check_event_time(now + skew, now)  # at the bound: accepted
    check_event_time(now - 365 * 86_400_000, now)  # the past is for lateness to judge
    with pytest.raises(FutureEvent, match="PERCORSO_MAX_EVENT_SKEW_MS"):
        check_event_time(now + skew + 1, now)
    check_event_time(now + 10 * skew, now, Limits(max_event_skew_ms=10 * skew))


def test_every_limit_has_a_setting_and_a_documented_default() -> None:
    names = {f.name for f in fields(Limits)}
    assert set(ENV) == names
    env = {variable: str(getattr(DEFAULT, name) + 7) for name, variable in ENV.items()}
    limits = Settings.from_env(env).limits
    assert all(getattr(limits, name) == getattr(DEFAULT, name) + 7 for name in names)
    assert Settings.from_env({}).limits == DEFAULT
    with pytest.raises(ValueError, match="PERCORSO_MAX_STATE_BYTES"):
        Settings.from_env({"PERCORSO_MAX_STATE_BYTES": "lots"})
    with pytest.raises(ValueError, match="negative"):
        Limits(max_id_bytes=-1)


def test_the_bounds_fit_a_kafka_record() -> None:
    """A touchpoint within every field bound encodes well under the record bound, and the
    record, state and dead-letter bounds stay under librdkafka's 1,000,000-byte default."""
    from percorso.codec import AvroCodec, LocalSchemaRegistry
    from percorso.topics import TOUCHPOINT_SUBJECT

    d = DEFAULT
    biggest = record(
        **{name: "x" * d.max_id_bytes for name in ("event_id", "customer_id", "channel", "type")},
        source="s" * d.max_id_bytes,
        attributes={
            f"{i:0{d.max_attribute_key_bytes}d}": "v" * d.max_attribute_value_bytes
            for i in range(d.max_attributes)
        },
    )
    encoded = AvroCodec(LocalSchemaRegistry(), TOUCHPOINT_SUBJECT).encode(
        validate_touchpoint(biggest)
    )
    assert len(encoded) < d.max_touchpoint_bytes
    assert d.max_touchpoint_bytes < d.max_dead_letter_bytes < 1_000_000
    assert d.max_state_bytes < 1_000_000


def test_every_limit_is_documented_with_its_default() -> None:
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    for name, variable in ENV.items():
        assert f"| `{variable}` |" in docs, variable
        row = docs.split(f"| `{variable}` |", 1)[1].split("\n", 1)[0]
        assert f"`{getattr(DEFAULT, name)}`" in row, (variable, row)
