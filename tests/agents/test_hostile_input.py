"""Hostile input against a running worker: every class of record a careless or hostile producer
can send goes to the dead-letter topic with its reason, stops nothing, and leaves nothing in
the state; the next good touchpoint is processed as usual."""

from __future__ import annotations

import time
from typing import Any

from percorso import clients
from percorso.config import Settings
from tests.agents.conftest import Cluster, Collect, produce, tp
from tests.agents.oracle import changelog_states

DAY = 86_400_000
Y2099 = 4_070_908_800_000  # 2099-01-01T00:00:00Z


def _raw_producer(settings: Settings) -> Any:
    """A producer that sends what the broker takes: records over 1 MB, uncompressed."""
    return clients.producer(
        settings, **{"message.max.bytes": 2_000_000, "compression.type": "none", "linger.ms": 0}
    )


def _send(
    producer: Any,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes]] | None = None,
) -> str | None:
    """Produce one record and wait for it; the broker's error, if it refused it."""
    outcome: list[Any] = []
    producer.produce(
        topic,
        key=key,
        value=value,
        headers=headers,
        on_delivery=lambda err, _m: outcome.append(err),
    )
    producer.flush(30)
    assert outcome, "no delivery report"
    return None if outcome[0] is None else str(outcome[0])


def _same_value(dead: dict[str, Any], value: bytes | None) -> bool:
    """The dead letter of this value: the same bytes, or cut from a value of its size."""
    if value is None or dead["value"] is None:
        return value is dead["value"]
    original = dead["headers"].get("percorso.error.original_size")
    if original is not None:
        return int(original) == len(value) and value.startswith(dead["value"])
    return bool(dead["value"] == value)


def test_hostile_records_are_dead_lettered_and_stop_nothing(
    cluster: Cluster, collect: Collect
) -> None:
    settings = cluster.settings
    limits = settings.limits
    codec = clients.Codecs.from_settings(settings).touchpoint
    worker = cluster.worker("w1").start()
    worker.wait_ready()
    now = int(time.time() * 1000)
    base = now - DAY

    def encoded(event_id: str, customer: str, at: int = base, **attributes: str) -> bytes:
        return codec.encode(dict(tp(event_id, customer, "cart_add", at, **attributes), source=None))

    over_1mb = "x" * 1_040_000  # a record a little over 1 MB, under the broker's 1,048,588
    many = {f"a{n}": "v" for n in range(limits.max_attributes + 1)}
    cases: dict[str, tuple[bytes | None, bytes | None, str, str]] = {
        # name: (key, value, expected class, expected in the message)
        "oversized": (
            b"hx-big",
            encoded("hx-big-1", "hx-big", blob=over_1mb),
            "InvalidTouchpoint",
            "PERCORSO_MAX_TOUCHPOINT_BYTES",
        ),
        "null key, oversized": (
            None,
            encoded("hx-nokey-1", "hx-nokey", blob=over_1mb),
            "InvalidTouchpoint",
            "PERCORSO_MAX_TOUCHPOINT_BYTES",
        ),
        "huge event id": (
            b"hx-id",
            codec.encode(dict(tp("e" * 300_000, "hx-id", "cart_add", base), source=None)),
            "InvalidTouchpoint",
            "event_id: longer than",
        ),
        "too many attributes": (
            b"hx-attrs",
            encoded("hx-attrs-1", "hx-attrs", **many),
            "InvalidTouchpoint",
            "PERCORSO_MAX_ATTRIBUTES",
        ),
        "future-dated": (
            b"hx-future",
            encoded("hx-future-1", "hx-future", Y2099, sku="F"),
            "FutureEvent",
            "PERCORSO_MAX_EVENT_SKEW_MS",
        ),
        "headers over the limit": (
            None,  # a null key: accepted, it would be re-keyed with its headers
            encoded("hx-headers-1", "hx-headers"),
            "InvalidTouchpoint",
            "bytes of value and headers",
        ),
        "null value": (b"hx-null", None, "SerializationError", ""),
        "empty value": (b"hx-empty", b"", "SerializationError", ""),
        "customer id with a newline": (
            b"hx\nnl",
            encoded("hx-nl-1", "hx\nnl"),
            "InvalidTouchpoint",
            "customer_id: must not contain control characters",
        ),
    }
    headers = {"headers over the limit": [("trace", b"t" * (limits.max_touchpoint_bytes + 1))]}
    producer = _raw_producer(settings)
    refused_by_broker = {}
    for name, (key, value, _, _) in cases.items():
        error = _send(producer, settings.topics.touchpoints, key, value, headers.get(name))
        if error is not None:  # e.g. an embedded broker with a smaller record limit
            refused_by_broker[name] = error
    if cluster.broker.kind != "embedded":  # Apache Kafka takes every one of them
        assert refused_by_broker == {}
    expected = {name: case for name, case in cases.items() if name not in refused_by_broker}
    assert {"huge event id", "future-dated", "null value", "empty value"} <= set(expected), (
        refused_by_broker
    )

    # the same customers' next good touchpoints, and another customer's
    good = [
        dict(tp("hx-future-2", "hx-future", "cart_add", base + 1000, sku="G"), source=None),
        dict(tp("hx-good-1", "hx-good", "cart_add", base + 1000, sku="G"), source=None),
    ]
    produce(settings, good)
    col = collect(settings, [settings.topics.dlq, settings.topics.transitions])
    col.until(
        lambda: (
            len(col.records[settings.topics.dlq]) >= len(expected)
            and {"hx-future-2", "hx-good-1"}
            <= {t["cause"] for t in col.records[settings.topics.transitions]}
        ),
        90,
        f"{len(expected)} dead letters and the transitions of the good touchpoints",
        lambda: f"dead letters {[d['headers'] for d in col.records[settings.topics.dlq]]}",
    )
    col.poll(1)
    dead = col.records[settings.topics.dlq]
    assert len(dead) == len(expected), [d["headers"] for d in dead]
    for name, (key, value, error_class, message) in expected.items():
        [d] = [d for d in dead if d["key"] == key and _same_value(d, value)]
        headers = d["headers"]
        assert headers["percorso.error.class"] == error_class.encode(), name
        assert message in headers["percorso.error.message"].decode(), name
        assert headers["percorso.source.topic"] == settings.topics.touchpoints.encode(), name
        if value is None:
            assert d["value"] is None, name  # null stays null
        elif len(value) > limits.max_dead_letter_bytes:
            assert headers["percorso.error.truncated"] == b"true", name
            assert int(headers["percorso.error.original_size"]) == len(value), name
            assert value.startswith(d["value"]) and len(d["value"]) > len(value) // 2, name
        else:
            assert d["value"] == value, name  # unchanged: empty stays empty
            assert "percorso.error.truncated" not in headers, name

    # the worker never stopped, and is ready
    assert worker.alive() and worker.starts == 1
    worker.wait_ready(timeout=10)
    assert worker.metric("percorso_dead_letters_total") == len(expected)

    # nothing of the bad records reached the state; the future date did not move a clock
    states = changelog_states(settings)
    assert {"hx-future", "hx-good"} <= set(states)
    for customer in ("hx-big", "hx-nokey", "hx-id", "hx-attrs", "hx-headers", "hx\nnl"):
        assert customer not in states
    future = states["hx-future"]
    assert future["watermark"] == base + 1000
    assert future["seen"] == ["hx-future-2"]
