"""Through the real broker and a real worker: journeys, dead letters, re-keying, equivalence."""

from __future__ import annotations

import struct
import time
from collections import Counter
from pathlib import Path
from typing import Any

from journeys.engine import Engine
from journeys.loader import load_catalog
from journeys.simulate import replay
from percorso import clients
from tests.agents.conftest import (
    Cluster,
    Collect,
    Collector,
    action_topics,
    produce,
    produce_raw,
)
from tests.agents.conftest import tp as touchpoint

DAY = 86_400_000
MINUTE = 60_000


def tp(
    event_id: str, customer: str, type_: str, at: int, channel: str = "web", **attributes: str
) -> dict[str, Any]:
    return dict(touchpoint(event_id, customer, type_, at, channel, **attributes), source="test")


def stories(base: int) -> list[dict[str, Any]]:
    """One customer per journey behaviour, far enough in the past that every window is due."""
    return [
        tp("a1", "ann", "email_opened", base, "email"),
        tp("a2", "ann", "cart_add", base + MINUTE, sku="SKU-1"),  # abandoned
        tp("b1", "ben", "cart_add", base, sku="SKU-2"),
        tp("b2", "ben", "purchase", base + 10 * MINUTE, sku="SKU-2"),  # bought in time
        tp("c1", "cai", "page_view", base, "web", topic="billing", page="/help/billing"),
        tp("c2", "cai", "call_started", base + 3 * 60 * MINUTE, "call_center", topic="billing"),
        tp("d1", "dee", "survey_response", base, "email", survey="nps", score="2"),
        tp("e1", "eli", "purchase", base, "store"),  # never activates
    ]


def actions_of(col: Collector) -> list[dict[str, Any]]:
    return [r for t in action_topics(col.settings) for r in col.records[t]]


def test_shipped_journeys_end_to_end(cluster: Cluster, collect: Collect) -> None:
    settings = cluster.settings
    worker = cluster.worker().start()
    worker.wait_ready()
    base = int(time.time() * 1000) - 20 * DAY
    produce(settings, stories(base))
    col = collect(settings, [*action_topics(settings), settings.topics.transitions])
    wanted = {
        ("ann", "send_cart_reminder"),
        ("ann", "send_cart_incentive"),
        ("cai", "route_to_agent"),
        ("dee", "open_callback_ticket"),
        ("eli", "send_onboarding_nudge"),
        ("eli", "schedule_onboarding_call"),
    }
    col.until(
        lambda: wanted <= {(a["customer_id"], a["action"]) for a in actions_of(col)},
        60,
        f"actions {sorted(wanted)}",
    )
    got = actions_of(col)
    assert not [
        a for a in got if a["customer_id"] == "ben" and a["journey_id"] == "cart_recovery"
    ], "ben bought inside the window: no cart action"
    route = next(a for a in got if a["action"] == "route_to_agent")
    assert route["channel"] == "agent" and route["parameters"]["skip_bot"] == "true"
    assert any(
        r["channel"] == "web" and r["attributes"].get("page") == "/help/billing"
        for r in route["context"]["recent"]
    )
    assert route["_headers"]["percorso.action_id"] == route["action_id"].encode()
    reminder = next(a for a in got if a["action"] == "send_cart_reminder")
    assert reminder["channel"] == "email" and reminder["trigger_kind"] == "window"
    ticket = next(a for a in got if a["action"] == "open_callback_ticket")
    assert ticket["stage"] == "detractor" and ticket["priority"] == 100
    transitions = {
        (t["customer_id"], t["journey_id"], t["to_stage"])
        for t in col.records[settings.topics.transitions]
    }
    assert {
        ("ann", "cart_recovery", "abandoned"),
        ("ben", "cart_recovery", "completed"),
        ("cai", "digital_to_voice", "escalated"),
        ("eli", "onboarding", "assisted"),
        ("ann", "lifecycle", "consideration"),  # an email opened, then a cart
        ("ben", "lifecycle", "purchase"),
        ("dee", "lifecycle", "awareness"),
    } <= transitions


def test_window_fires_at_its_deadline_not_before(cluster: Cluster, collect: Collect) -> None:
    """Real time: a 30-minute window compressed to 6 s (time scale 300)."""
    settings = cluster.settings
    worker = cluster.worker(PERCORSO_TIME_SCALE="300").start()
    worker.wait_ready()
    now = int(time.time() * 1000)
    produce(
        settings,
        [
            tp("x1", "zoe", "email_opened", now - 1000, "email"),
            tp("x2", "zoe", "cart_add", now, sku="Z"),
        ],
    )
    deadline = now + 6_000
    col = collect(settings, action_topics(settings))
    col.until(
        lambda: any(a["action"] == "send_cart_reminder" for a in actions_of(col)),
        40,
        "the reminder",
    )
    reminder = next(a for a in actions_of(col) if a["action"] == "send_cart_reminder")
    assert reminder["created_at"] >= deadline, "fired before its deadline"
    assert reminder["created_at"] - deadline < 5_000, "fired far too late"


def test_poison_input_goes_to_the_dead_letter_topic(cluster: Cluster, collect: Collect) -> None:
    settings = cluster.settings
    codecs = clients.Codecs.from_settings(settings)
    worker = cluster.worker().start()
    worker.wait_ready()
    base = int(time.time() * 1000) - DAY
    unknown_id = (
        b"\x00"
        + struct.pack(">I", 777)
        + codecs.touchpoint.encode(tp("p2", "pat", "page_view", base))[5:]
    )
    no_customer = codecs.touchpoint.encode(tp("p3", "", "page_view", base))
    poison = [(b"pat", b"\xde\xad\xbe\xef garbage"), (b"pat", unknown_id), (b"", no_customer)]
    produce_raw(settings, poison)
    produce(
        settings, [tp("p4", "pat", "survey_response", base + 1, "email", survey="nps", score="1")]
    )
    col = collect(settings, [settings.topics.dlq, settings.topics.actions("agent")])
    col.until(
        lambda: (
            len(col.records[settings.topics.dlq]) >= 3
            and col.records[settings.topics.actions("agent")]
        ),
        60,
        "3 dead letters and the callback of the good event after them",
    )
    dead = {d["value"]: d for d in col.records[settings.topics.dlq]}
    assert sorted(dead) == sorted(value for _, value in poison)  # bytes unchanged
    expected = [
        ("SerializationError", "wrong magic byte 0xde"),
        ("SerializationError", "unknown schema id 777"),
        ("InvalidTouchpoint", "customer_id:"),
    ]
    for (key, value), (error_class, message) in zip(poison, expected, strict=True):
        headers = dead[value]["headers"]
        assert dead[value]["key"] == key
        assert headers["percorso.error.class"] == error_class.encode()
        assert message in headers["percorso.error.message"].decode()
    for d in dead.values():
        assert d["headers"]["percorso.source.topic"] == settings.topics.touchpoints.encode()
        assert int(d["headers"]["percorso.source.offset"]) >= 0
        assert int(d["headers"]["percorso.source.partition"]) in range(settings.partitions)
    assert col.records[settings.topics.actions("agent")][0]["customer_id"] == "pat"


def test_records_keyed_by_something_else_are_re_keyed(cluster: Cluster, collect: Collect) -> None:
    """A producer keying by device id: the worker re-partitions by customer id, so the
    customer's state stays in one place, in order, and the journey still completes."""
    settings = cluster.settings
    codecs = clients.Codecs.from_settings(settings)
    worker = cluster.worker().start()
    worker.wait_ready()
    base = int(time.time() * 1000) - DAY
    events = [
        tp("r1", "rex", "cart_add", base, sku="R"),
        tp("r2", "rex", "checkout_started", base + MINUTE),
        tp("r3", "rex", "purchase", base + 2 * MINUTE),
    ]
    produce_raw(settings, [(b"device-42", codecs.touchpoint.encode(e)) for e in events])
    col = collect(settings, [settings.topics.transitions])
    col.until(
        lambda: (
            ("rex", "completed")
            in {(t["customer_id"], t["to_stage"]) for t in col.records[settings.topics.transitions]}
        ),
        60,
        "rex to complete cart recovery",
    )
    stages = [
        t["to_stage"]
        for t in col.records[settings.topics.transitions]
        if t["journey_id"] == "cart_recovery"
    ]
    assert stages == ["carted", "checkout", "completed"]


def test_streaming_equals_simulate(cluster: Cluster, collect: Collect, tmp_path: Path) -> None:
    """Same input: the same action ids and the same transitions as `percorso simulate`."""
    from percorso.synthetic import SyntheticTraffic

    settings = cluster.settings
    base = int(time.time() * 1000) - 40 * DAY
    events = stories(base) + SyntheticTraffic(150, seed=21, start_ms=base + DAY, rate=0.2).take(
        2500
    )
    until = int(time.time() * 1000)
    engine = Engine(load_catalog(settings.journeys_dir))
    want_actions: set[str] = set()
    want_transitions: list[tuple[Any, ...]] = []
    for step in replay(engine, [dict(e, attributes=dict(e["attributes"])) for e in events], until):
        want_actions |= {a["action_id"] for a in step.actions}
        want_transitions += [_transition_key(t) for t in step.transitions]
    assert len(want_actions) > 50

    worker = cluster.worker().start()
    worker.wait_ready()
    produce(settings, events)
    col = collect(settings, [*action_topics(settings), settings.topics.transitions])
    col.until(
        lambda: (
            len({a["action_id"] for a in actions_of(col)}) >= len(want_actions)
            and len(col.records[settings.topics.transitions]) >= len(want_transitions)
        ),
        120,
        f"{len(want_actions)} actions and {len(want_transitions)} transitions",
    )
    col.poll(2)  # anything beyond the oracle would show up now
    assert {a["action_id"] for a in actions_of(col)} == want_actions
    got_transitions = [_transition_key(t) for t in col.records[settings.topics.transitions]]
    assert Counter(got_transitions) == Counter(want_transitions)


def _transition_key(t: dict[str, Any]) -> tuple[Any, ...]:
    return (
        t["customer_id"],
        t["journey_id"],
        t["from_stage"],
        t["to_stage"],
        t["at"],
        t["cause"],
        t["reason"],
        t["instance"],
    )
