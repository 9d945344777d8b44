"""The worker's decisions without Kafka: decoding, dead letters, the stored value, the
deadline index, quarantine."""

from __future__ import annotations

import struct
from dataclasses import replace
from typing import Any

import msgspec
import pytest

from agents import stored
from agents.processor import (
    CORRUPT_STATE,
    ENGINE_ERROR,
    MAX_KEPT_HEADER_BYTES,
    MAX_KEPT_KEY_BYTES,
    Outgoing,
    Position,
    Processor,
    Quarantined,
    Rejected,
    fit,
    index_key,
    index_range,
    parse_index_key,
    record_size,
)
from agents.stored import Customer, stages_of
from journeys.engine import Engine, Tick
from journeys.loader import load_catalog
from journeys.serde import encode_state
from journeys.state import CustomerState
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


def version_1(state: dict, due: int | None, outbox: bytes = b"\x00\x00") -> bytes:
    """A stored value as workers wrote it before the batch runtime: Avro state, then an
    outbox (here: empty, or whatever bytes are given)."""
    encoded = encode_state(state)  # type: ignore[arg-type]
    stages = stored.stage_summary(state)  # type: ignore[arg-type]
    header = struct.pack(">bqII", 1, -1 if due is None else due, len(stages), len(encoded))
    return header + stages + encoded + outbox


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


def test_index_entries_only_when_the_next_due_moves_earlier() -> None:
    cart = PROCESSOR.apply(None, tp("a", "cart_add", ms(T0)), 0, 2)
    due = ms(T0) + 30 * MINUTE
    assert cart.index_add == index_key(2, due, "c1")
    assert cart.customer.indexed_due == due
    view = PROCESSOR.apply(cart.customer, tp("b", "page_view", ms(T0) + MINUTE), 0, 2)
    assert view.index_add is None  # lifecycle re-armed later: the earlier entry still wakes us
    fired = PROCESSOR.apply(view.customer, Tick(due), 0, 2)
    assert [a["action"] for a in fired.step.actions] == ["send_cart_reminder"]
    _, next_due, _ = parse_index_key(fired.index_add or b"d:x|0|y")
    assert next_due == fired.customer.indexed_due == fired.step.next_due


def test_a_duplicate_sends_nothing() -> None:
    survey = tp("s1", "survey_response", ms(T0), survey="nps", score="2")
    first = PROCESSOR.apply(None, survey, 0, 1)
    assert [o for o in first.outgoing if o.topic.startswith("percorso.actions.")]
    again = PROCESSOR.apply(first.customer, survey, 0, 1)
    assert again.step.outcome == "duplicate" and again.outgoing == []


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


def test_stored_value_round_trip_and_header() -> None:
    step = PROCESSOR.apply(None, tp("a", "cart_add", ms(T0)), 0, 0)
    step.customer.applied[:] = [41, 7]
    value = stored.encode(step.customer)
    assert value[:1] == b"\x02" and struct.unpack(">q", value[1:9])[0] == step.customer.indexed_due
    back = stored.decode(value)
    assert back == step.customer and back.applied == [41, 7]
    assert stored.encode(back) == value
    assert stages_of(value) == [("cart_recovery", "carted"), ("lifecycle", "consideration")]
    step.customer.applied[:] = [-1, -1]
    unknown = stored.encode(step.customer)
    assert b"#" not in unknown[: unknown.index(b"consideration") + 14]  # nothing known: none
    assert stored.decode(unknown).applied == [-1, -1]


def _decode_before_offsets(value: bytes) -> tuple[Any, list[tuple[str, str]]]:
    """How a worker written before the applied offsets read a value: the envelope, the state
    and the census (copied from agents/stored.py as it was)."""
    version, _due, stages_size, size = struct.unpack_from(">bqII", value)
    start = 17 + stages_size
    assert version == 2 and start + size == len(value)
    state = msgspec.msgpack.Decoder(CustomerState).decode(value[start:])
    blob = value[17:start].decode()
    pairs = [item.split("=", 1) for item in blob.split("\x1f") if item]
    return state, [(p[0], p[1]) for p in pairs if len(p) == 2]


@pytest.mark.parametrize("stages", [True, False])
def test_values_with_applied_offsets_are_read_by_workers_written_before_them(
    stages: bool,
) -> None:
    """The offsets ride in the stage summary, which earlier workers skip: a rolling upgrade or
    a rollback reads every value, and loses only the offsets (a replay then relies on event
    ids, as before)."""
    customer = PROCESSOR.apply(None, tp("a", "cart_add", ms(T0), sku="S"), 0, 0).customer
    if not stages:  # the offsets alone in the summary
        customer.state["journeys"] = {}
    customer.applied[:] = [123456789012, -1]
    value = stored.encode(customer)
    state, census = _decode_before_offsets(value)
    assert state == customer.state
    assert census == stages_of(value)
    assert bool(census) == stages
    assert stored.decode(value).applied == [123456789012, -1]


def test_values_written_before_the_batch_runtime_still_load() -> None:
    """Version 1 (Avro and an outbox): the state and due time come back, the outbox is
    ignored, and the next write is version 2."""
    step = PROCESSOR.apply(None, tp("a", "cart_add", ms(T0), sku="S"), 0, 0)
    state = step.customer.state
    some_outbox = b"\x00\x01" + b"\x00\x00\x00\x01t" + b"\x00" * 12 + b"\x00\x00\x00\x00"
    for outbox in (b"", b"\x00\x00", some_outbox):
        old = version_1(state, 1234, outbox)
        loaded = PROCESSOR.load(old)
        assert loaded == Customer(state, 1234)
        assert stages_of(old) == stages_of(stored.encode(loaded))
    later = PROCESSOR.apply(
        PROCESSOR.load(version_1(state, None)), tp("b", "page_view", ms(T0) + 1), 0, 0
    )
    assert later.step.outcome == "processed"
    assert stored.encode(later.customer)[:1] == b"\x02"


def test_a_stored_value_that_does_not_decode_is_quarantined_with_its_bytes() -> None:
    good = stored.encode(
        PROCESSOR.apply(None, tp("e1", "cart_add", ms(T0), sku="S"), 0, 0).customer
    )
    other = msgspec.msgpack.encode({"customer_id": 7})  # MessagePack, not a CustomerState
    wrong_shape = struct.pack(">bqII", 2, -1, 0, len(other)) + other
    for corrupt in (
        b"garbage",
        good[:20],
        b"\x07" + good[1:],
        good[:-40],
        good + b"x",
        wrong_shape,
    ):
        with pytest.raises(Quarantined) as info:
            PROCESSOR.load(corrupt)
        assert info.value.error_class == CORRUPT_STATE
        assert info.value.stored == corrupt
    assert stages_of(b"garbage") == []


class FailingEngine(Engine):
    """An engine with a bug that one customer's input triggers."""

    def advance(self, state, item, now=None):  # type: ignore[no-untyped-def]
        if not isinstance(item, Tick) and item["customer_id"] == "c1":
            raise ZeroDivisionError("a bug")
        return super().advance(state, item, now)


def test_an_engine_exception_is_quarantined_with_the_stored_bytes() -> None:
    customer = PROCESSOR.apply(None, tp("e1", "cart_add", ms(T0), sku="S"), 0, 0).customer
    before = stored.encode(customer)
    failing = Processor(SETTINGS, FailingEngine(load_catalog(CATALOG_DIR)), CODECS)
    with pytest.raises(Quarantined) as info:
        failing.apply(customer, tp("e2", "page_view", ms(T0) + 1), 0, 0)
    assert info.value.error_class == ENGINE_ERROR
    assert "ZeroDivisionError" in str(info.value)
    assert info.value.stored == before
    other = dict(tp("e3", "page_view", ms(T0) + 2), customer_id="c2")
    assert failing.apply(None, other, T0, 0).step.state["customer_id"] == "c2"


def test_conversions_go_to_their_topic_with_the_version(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from journeys.lifecycle import LifecycleEngine

    journey = (CATALOG_DIR / "cart_recovery.yaml").read_text()
    text = journey.replace(
        "priority: 60",
        "priority: 60\nversion: 3\nconversion: {when: {type: purchase}, within: 7d, "
        'value: "${attributes.amount}"}',
    )
    (tmp_path / "cart.yaml").write_text(text)
    processor = Processor(SETTINGS, LifecycleEngine(load_catalog(tmp_path)), CODECS)
    first = processor.apply(None, tp("a", "cart_add", ms(T0), sku="S"), 0, 0)
    then = processor.apply(first.customer, tp("b", "purchase", ms(T0) + MINUTE, amount="9"), 0, 0)
    (out,) = [o for o in then.outgoing if o.topic == SETTINGS.topics.conversions]
    assert out.key == b"c1"
    conversion = CODECS.conversion.decode(out.value)
    assert conversion["journey_id"] == "cart_recovery" and conversion["version"] == 3
    assert conversion["value"] == "9" and conversion["entered_at"] == ms(T0)
    transitions = [
        CODECS.transition.decode(o.value)
        for o in then.outgoing
        if o.topic == SETTINGS.topics.transitions
    ]
    assert [(t["reason"], t["version"]) for t in transitions] == [("goal", 3)]
    from prometheus_client import CollectorRegistry

    from agents.metrics import Metrics

    metrics = Metrics(CollectorRegistry())
    metrics.observe_step(then.step, 0, None)
    labels = {"journey": "cart_recovery", "variant": "none"}
    assert metrics.registry.get_sample_value("percorso_conversions_total", labels) == 1


# -- hostile input: limits, skew, dead letters that always fit -------------------------------


def test_an_oversized_record_is_refused_before_it_is_decoded() -> None:
    limit = SETTINGS.limits.max_touchpoint_bytes
    encoded = CODECS.touchpoint.encode(tp("e", "page_view", ms(T0), note="x" * 4000))
    small = Processor(
        replace(SETTINGS, limits=replace(SETTINGS.limits, max_touchpoint_bytes=len(encoded))),
        PROCESSOR.engine,
        CODECS,
    )
    assert small.decode(encoded)["event_id"] == "e"
    with pytest.raises(Rejected) as info:
        small.decode(encoded + b"\x00")
    assert info.value.error_class == "InvalidTouchpoint"
    assert "PERCORSO_MAX_TOUCHPOINT_BYTES" in str(info.value)
    with pytest.raises(Rejected, match=str(limit)):
        PROCESSOR.decode(b"\x00" * (limit + 1))


def test_decode_refuses_a_long_correlation_value_of_the_catalog() -> None:
    """The escalation journey correlates its windows on ``topic``: the Processor knows it
    from the catalog and holds that attribute to the correlation bound, others not."""
    assert PROCESSOR.correlated == {"topic"}
    long = "T" * (SETTINGS.limits.max_correlation_value_bytes + 1)
    with pytest.raises(Rejected, match="PERCORSO_MAX_CORRELATION_VALUE_BYTES"):
        PROCESSOR.decode(CODECS.touchpoint.encode(tp("e", "chat_started", ms(T0), topic=long)))
    assert PROCESSOR.decode(CODECS.touchpoint.encode(tp("e", "cart_add", ms(T0), sku=long)))


def test_a_touchpoint_from_the_future_is_refused_with_its_own_class() -> None:
    skew = SETTINGS.limits.max_event_skew_ms
    now = ms(T0)
    on_time = CODECS.touchpoint.encode(tp("e", "page_view", now + skew))
    assert PROCESSOR.decode(on_time, now)["occurred_at"] == now + skew
    ahead = CODECS.touchpoint.encode(tp("e", "page_view", now + skew + 1))
    with pytest.raises(Rejected) as info:
        PROCESSOR.decode(ahead, now)
    assert info.value.error_class == "FutureEvent"
    assert PROCESSOR.decode(ahead)["event_id"] == "e"  # without a clock: no skew check


def test_null_and_empty_values_stay_distinguishable_in_the_dead_letter_topic() -> None:
    null = PROCESSOR.dead_letter(None, None, "SerializationError", "null", at(0, 1))
    empty = PROCESSOR.dead_letter(b"", b"", "SerializationError", "empty", at(0, 2))
    assert (null.key, null.value) == (None, None)
    assert (empty.key, empty.value) == (b"", b"")


def test_an_oversized_dead_letter_is_cut_to_fit_and_says_so() -> None:
    limit = SETTINGS.limits.max_dead_letter_bytes
    value = bytes(range(256)) * 5000  # 1,280,000 bytes
    out = PROCESSOR.dead_letter(b"k" * 5000, value, "InvalidTouchpoint", "too big", at(1, 9))
    headers = dict(out.headers)
    assert record_size(out) <= limit
    assert out.value is not None and value.startswith(out.value) and len(out.value) > limit // 2
    assert headers["percorso.error.truncated"] == b"true"
    assert headers["percorso.error.original_size"] == b"1280000"
    assert headers["percorso.error.original_key_size"] == b"5000"
    assert out.key == b"k" * MAX_KEPT_KEY_BYTES
    assert headers["percorso.error.class"] == b"InvalidTouchpoint"
    assert headers["percorso.source.offset"] == b"9"
    # a null value stays null even when the rest must be cut
    null = fit(Outgoing("dlq", b"k", None, [("h", b"x" * 200_000)]), 100_000)
    assert null.value is None and record_size(null) <= 100_000


def test_a_large_header_is_cut_when_cutting_the_value_is_not_enough() -> None:
    stored = b"s" * 900_000  # the stored state a quarantine puts in a header
    out = fit(
        Outgoing("dlq", b"c1", b"v" * 1000, [("percorso.error.stored_state", stored)]),
        SETTINGS.limits.max_dead_letter_bytes,
    )
    headers = dict(out.headers)
    assert record_size(out) <= SETTINGS.limits.max_dead_letter_bytes
    assert headers["percorso.error.stored_state"] == stored[:MAX_KEPT_HEADER_BYTES]
    assert headers["percorso.error.stored_state.original_size"] == b"900000"
    assert out.value == b"v" * 1000  # room was left for the value itself


def test_a_record_within_the_limit_is_left_alone() -> None:
    out = Outgoing("dlq", b"k", b"v", [("h", b"x")])
    assert fit(out, record_size(out)) is out


@pytest.mark.parametrize("customer", ["a|b", "|", "x|0000000000099|y", "a:b=c", "ünï|cødé"])
def test_index_keys_parse_back_any_legal_customer_id(customer: str) -> None:
    """Partition and due time are fixed-width and come first: the customer id is the rest of
    the key, whatever separators it contains."""
    key = index_key(7, 1_800_000_000_000, customer)
    assert parse_index_key(key) == (7, 1_800_000_000_000, customer)
    low, high = index_range(7, 1_800_000_000_000)
    assert low <= key < high


def test_every_dead_letter_class_is_documented() -> None:
    """The contract: every ``percorso.error.class`` value is in docs/operations.md."""
    from pathlib import Path

    import agents.processor as processor

    docs = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    table = docs.split("## Dead-letter reasons", 1)[1].split("\n## ", 1)[0]
    classes = [
        processor.UNDECODABLE,
        processor.INVALID,
        processor.FUTURE,
        processor.LATE,
        processor.STATE_TOO_LARGE,
        processor.CORRUPT_STATE,
        processor.ENGINE_ERROR,
        processor.OUTPUT_TOO_LARGE,
    ]
    for error_class in classes:
        assert f"| `{error_class}` |" in table, error_class
    assert table.count("\n| `") == len(classes) + 1  # the header row, and nothing else


def test_headers_count_towards_the_size_of_a_touchpoint() -> None:
    """A re-keyed touchpoint carries its headers: a small value under a megabyte of headers
    would make that send fail."""
    value = CODECS.touchpoint.encode(tp("e", "page_view", ms(T0)))
    limit = SETTINGS.limits.max_touchpoint_bytes
    fits = [("h", b"x" * (limit - len(value) - 1))]
    assert PROCESSOR.decode(value, None, fits)["event_id"] == "e"
    assert PROCESSOR.decode(value, None, {"h": None})["event_id"] == "e"
    with pytest.raises(Rejected, match="bytes of value and headers"):
        PROCESSOR.decode(value, None, [("h", b"x" * (limit - len(value)))])


def test_an_instance_key_is_held_to_the_correlation_bound(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Its values become part of the customer's state keys, like correlation values."""
    from journeys.lifecycle import LifecycleEngine

    journey = (CATALOG_DIR / "cart_recovery.yaml").read_text()
    keyed = journey.replace("priority: 60", 'priority: 60\ninstance_key: "${attributes.cart_id}"')
    (tmp_path / "cart.yaml").write_text(keyed)
    processor = Processor(SETTINGS, LifecycleEngine(load_catalog(tmp_path)), CODECS)
    assert processor.correlated == {"cart_id"}
    long = "C" * (SETTINGS.limits.max_correlation_value_bytes + 1)
    encoded = CODECS.touchpoint.encode(tp("e", "cart_add", ms(T0), cart_id=long))
    with pytest.raises(Rejected, match="PERCORSO_MAX_CORRELATION_VALUE_BYTES"):
        processor.decode(encoded)
