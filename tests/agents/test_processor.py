"""The worker's decisions without Kafka: decoding, dead letters, outbox, deadline index."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.outbox import Entry, Outgoing, Position, decode, encode, outputs_for, prune
from agents.processor import (
    CORRUPT_STATE,
    ENGINE_ERROR,
    Processor,
    Quarantined,
    Rejected,
    index_key,
    index_range,
    pack,
    parse_index_key,
    stages_of,
    unpack,
)
from journeys.engine import Engine, Tick
from journeys.loader import load_catalog
from percorso.clients import Codecs
from percorso.codec import LocalSchemaRegistry
from percorso.config import Settings
from tests.journeys.harness import CATALOG_DIR, T0, ms

SETTINGS = Settings()
CODECS = Codecs(LocalSchemaRegistry())
PROCESSOR = Processor(SETTINGS, Engine(load_catalog(CATALOG_DIR)), CODECS)
MINUTE = 60_000


def tp(event_id: str, type_: str, at: int, **attributes: str) -> dict:
    return {
        "event_id": event_id,
        "customer_id": "c1",
        "channel": "web",
        "type": type_,
        "occurred_at": at,
        "attributes": attributes,
        "source": None,
    }


def at(partition: int, offset: int, topic: str = "touchpoints") -> Position:
    return Position(topic, partition, offset)


def test_decode_rejections_carry_their_class() -> None:
    with pytest.raises(Rejected) as garbage:
        PROCESSOR.decode(b"nope")
    assert garbage.value.error_class == "SerializationError"
    empty_customer = CODECS.touchpoint.encode({**tp("e", "page_view", ms(T0)), "customer_id": " "})
    with pytest.raises(Rejected) as invalid:
        PROCESSOR.decode(empty_customer)
    assert invalid.value.error_class == "InvalidTouchpoint"
    good = tp("e", "page_view", ms(T0))
    assert PROCESSOR.decode(CODECS.touchpoint.encode(good)) == good


def test_dead_letter_keeps_the_bytes_and_says_why() -> None:
    out = PROCESSOR.dead_letter(b"k", b"\x01\x02", "SerializationError", "bad", at(3, 42))
    assert (out.topic, out.key, out.value) == ("percorso.touchpoints.dlq", b"k", b"\x01\x02")
    assert dict(out.headers) == {
        "percorso.error.class": b"SerializationError",
        "percorso.error.message": b"bad",
        "percorso.source.topic": b"touchpoints",
        "percorso.source.partition": b"3",
        "percorso.source.offset": b"42",
    }


def test_reprocessing_after_a_crash_resends_what_was_lost() -> None:
    """The state reached the changelog, its outputs did not: the same message again must send
    them again (same action ids), not treat it as a harmless duplicate."""
    survey = tp("s1", "survey_response", ms(T0), survey="nps", score="2")
    first = PROCESSOR.apply(None, survey, 0, at(1, 7))
    actions = [o for o in first.outgoing if o.topic.startswith("percorso.actions.")]
    assert actions and first.resend == []
    again = PROCESSOR.apply(first.stored, survey, 0, at(1, 7))
    assert again.step.outcome == "duplicate" and again.outgoing == []
    assert again.resend == first.outgoing
    # a genuine duplicate (a producer retry at another offset) sends nothing
    retry = PROCESSOR.apply(first.stored, survey, 0, at(1, 9))
    assert retry.resend == [] and retry.outgoing == []


def test_outbox_is_pruned_once_its_source_is_committed() -> None:
    first = PROCESSOR.apply(None, tp("a", "cart_add", ms(T0)), 0, at(0, 5))
    assert unpack(first.stored)[2]
    later = PROCESSOR.apply(
        first.stored,
        tp("b", "page_view", ms(T0) + 1),
        0,
        at(0, 6),
        committed={("touchpoints", 0): 6},
    )
    sources = [e.source for e in unpack(later.stored)[2]]
    assert sources == ([at(0, 6)] if later.outgoing else [])  # offset 5 pruned


def test_index_entries_only_when_the_next_due_moves_earlier() -> None:
    cart = PROCESSOR.apply(None, tp("a", "cart_add", ms(T0)), 0, at(2, 1))
    due = ms(T0) + 30 * MINUTE
    assert cart.index_add == index_key(2, due, "c1")
    assert unpack(cart.stored)[1] == due
    view = PROCESSOR.apply(cart.stored, tp("b", "page_view", ms(T0) + MINUTE), 0, at(2, 2))
    assert view.index_add is None  # lifecycle re-armed later: the earlier entry still wakes us
    fired = PROCESSOR.apply(view.stored, Tick(due), 0, at(2, 0, "percorso-ticks"))
    assert [a["action"] for a in fired.step.actions] == ["send_cart_reminder"]
    _, next_due, _ = parse_index_key(fired.index_add or b"d:x|0|y")
    assert next_due == unpack(fired.stored)[1] == fired.step.next_due


def test_index_keys_sort_by_partition_then_due() -> None:
    keys = sorted(
        [
            index_key(1, 50, "z"),
            index_key(0, 99, "a"),
            index_key(1, 7, "b"),
            index_key(1, 1000, "a"),
        ]
    )
    assert [parse_index_key(k)[:2] for k in keys] == [(0, 99), (1, 7), (1, 50), (1, 1000)]
    low, high = index_range(1, 50)
    assert [k for k in keys if low <= k < high] == keys[1:3]


def test_envelope_round_trip() -> None:
    step = PROCESSOR.apply(None, tp("a", "cart_add", ms(T0)), 0, at(0, 1))
    state, due, outbox = unpack(step.stored)
    assert pack(state, due, outbox) == step.stored
    assert step.stored[:1] == b"\x01" and struct.unpack(">q", step.stored[1:9])[0] == due
    assert stages_of(step.stored) == [("cart_recovery", "carted"), ("lifecycle", "consideration")]


blobs = st.binary(max_size=40)
outgoing = st.builds(
    Outgoing,
    st.text(min_size=1, max_size=12),
    st.none() | blobs,
    blobs,
    st.lists(st.tuples(st.text(max_size=8), blobs), max_size=3),
)
entries = st.lists(
    st.builds(
        Entry.of,
        st.builds(Position, st.text(max_size=10), st.integers(0, 2**31 - 1), st.integers(0, 2**62)),
        st.lists(outgoing, max_size=3).map(tuple),
    ),
    max_size=4,
)


@given(entries)
def test_outbox_round_trip(items: list[Entry]) -> None:
    assert decode(encode(items)) == items


@given(entries, st.integers(0, 2**62))
def test_prune_keeps_exactly_the_uncommitted(items: list[Entry], committed: int) -> None:
    table = {(e.source.topic, e.source.partition): committed for e in items}
    kept = prune(items, table)
    assert all(e.source.offset >= committed for e in kept)
    assert len(kept) == sum(1 for e in items if e.source.offset >= committed)
    for e in kept:
        assert all(o in outputs_for(kept, e.source) for o in e.outputs)


def test_truncated_outbox_is_an_error() -> None:
    data = encode([Entry.of(Position("t", 0, 1), [Outgoing("x", b"k", b"v")])])
    with pytest.raises((ValueError, struct.error)):
        decode(data[:-2])


def test_a_stored_value_that_does_not_decode_is_quarantined_with_its_bytes() -> None:
    good = PROCESSOR.apply(None, tp("e1", "cart_add", ms(T0), sku="S"), 0, at(0, 1)).stored
    for corrupt in (b"garbage", good[:20], b"\x07" + good[1:], good[:-40]):
        with pytest.raises(Quarantined) as info:
            PROCESSOR.apply(corrupt, tp("e2", "page_view", ms(T0) + 1), 0, at(0, 2))
        assert info.value.error_class == CORRUPT_STATE
        assert info.value.stored == corrupt
    assert stages_of(b"garbage") == []


class FailingEngine(Engine):
    """An engine with a bug that one customer's input triggers."""

    def advance(self, state, item, now=None):  # type: ignore[no-untyped-def]
        if not isinstance(item, Tick) and item["customer_id"] == "c1":
            raise ZeroDivisionError("a bug")
        return super().advance(state, item, now)


def test_an_engine_exception_is_quarantined_and_the_state_kept() -> None:
    stored = PROCESSOR.apply(None, tp("e1", "cart_add", ms(T0), sku="S"), 0, at(0, 1)).stored
    failing = Processor(SETTINGS, FailingEngine(load_catalog(CATALOG_DIR)), CODECS)
    with pytest.raises(Quarantined) as info:
        failing.apply(stored, tp("e2", "page_view", ms(T0) + 1), 0, at(0, 2))
    assert info.value.error_class == ENGINE_ERROR
    assert "ZeroDivisionError" in str(info.value)
    assert info.value.stored == stored
    other = dict(tp("e3", "page_view", ms(T0) + 2), customer_id="c2")
    assert failing.apply(None, other, T0, at(0, 3)).step.state["customer_id"] == "c2"
