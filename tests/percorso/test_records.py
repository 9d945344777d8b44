from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from percorso.records import InvalidTouchpoint, iso, parse_time_ms, touchpoint_from_json

BASE = {
    "event_id": "e1",
    "customer_id": "c1",
    "channel": "web",
    "type": "page_view",
    "occurred_at": "2026-01-01T10:00:00Z",
}


def test_iso_and_epoch_ms_are_the_same_instant() -> None:
    a = touchpoint_from_json(BASE)
    b = touchpoint_from_json({**BASE, "occurred_at": 1767261600000})
    c = touchpoint_from_json({**BASE, "occurred_at": "2026-01-01T11:00:00+01:00"})
    assert a["occurred_at"] == b["occurred_at"] == c["occurred_at"] == 1767261600000
    assert a["attributes"] == {} and a["source"] is None


def test_attributes_scalars_become_strings() -> None:
    tp = touchpoint_from_json({**BASE, "attributes": {"score": 9, "vip": True, "x": "y"}})
    assert tp["attributes"] == {"score": "9", "vip": "true", "x": "y"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"customerId": "c1"}, "customerId"),
        ({"customer_id": ""}, "customer_id"),
        ({"event_id": None}, "event_id"),
        ({"occurred_at": "yesterday"}, "occurred_at"),
        ({"occurred_at": 1767261600}, "occurred_at"),  # seconds, not ms
        ({"attributes": {"nested": {"a": 1}}}, "attributes.nested"),
        ({"attributes": ["a"]}, "attributes"),
    ],
)
def test_invalid_touchpoints_name_the_field(change: dict, field: str) -> None:
    with pytest.raises(InvalidTouchpoint) as info:
        touchpoint_from_json({**BASE, **change})
    assert info.value.field == field


def test_missing_occurred_at() -> None:
    record = dict(BASE)
    del record["occurred_at"]
    with pytest.raises(InvalidTouchpoint, match="occurred_at: required"):
        touchpoint_from_json(record)


@given(st.integers(min_value=946_684_800_000, max_value=4_102_444_799_000))
def test_iso_round_trip(ms: int) -> None:
    assert parse_time_ms(iso(ms)) == ms
