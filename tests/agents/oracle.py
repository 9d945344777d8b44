"""What a run should have produced, from the offline replay of the same events, and what it
did produce, read back from the topics: shared by the crash and broker-fault tests."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from agents import stored as stored_values
from agents.launcher import WorkerProcess
from journeys.engine import Engine
from journeys.loader import load_catalog
from journeys.simulate import replay
from journeys.state import CustomerState
from percorso.config import Settings
from tests.agents.conftest import Collector, action_topics


def now_ms() -> int:
    return int(time.time() * 1000)


def oracle(
    settings: Settings, scale: float, events: list[dict[str, Any]], until: int
) -> tuple[set[str], dict[str, CustomerState]]:
    engine = Engine(load_catalog(settings.journeys_dir, time_scale=scale))
    ids: set[str] = set()
    states: dict[str, CustomerState] = {}
    for step in replay(engine, [dict(e, attributes=dict(e["attributes"])) for e in events], until):
        ids |= {a["action_id"] for a in step.actions}
        states[step.state["customer_id"]] = step.state
    return ids, states


def changelog_states(settings: Settings) -> dict[str, CustomerState]:
    """The latest stored state of every customer, read back from the table's changelog."""
    topic = f"{settings.app_id}-state-changelog"
    consumer = Consumer(
        {**settings.kafka_config(), "group.id": "test-changelog", "enable.auto.commit": False}
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.topics[topic].partitions]
        )
        latest: dict[str, bytes | None] = {}
        idle = time.monotonic()
        while time.monotonic() - idle < 2.0:
            for msg in consumer.consume(1000, timeout=0.2):
                if not msg.error() and msg.key().startswith(b"c:"):
                    latest[msg.key()[2:].decode()] = msg.value()
                    idle = time.monotonic()
        return {k: stored_values.decode(v).state for k, v in latest.items() if v}
    finally:
        consumer.close()


def partitions_of(worker: WorkerProcess) -> list[int]:
    """The partitions a worker owns; none while it is not ready (a rebalance under way: its
    ``/readyz`` answers 503, as when a second worker joins)."""
    try:
        with urllib.request.urlopen(f"{worker.url}/readyz", timeout=2) as response:
            return list(json.loads(response.read())["partitions"])
    except urllib.error.HTTPError as exc:
        if exc.code == 503:
            return []
        raise


def missing_report(
    want: set[str], col: Any, settings: Settings, scale: float, events: list[dict[str, Any]]
) -> str:
    missing = want - set(emitted(col))
    engine = Engine(load_catalog(settings.journeys_dir, time_scale=scale))
    examples = []
    for step in replay(
        engine, [dict(e, attributes=dict(e["attributes"])) for e in events], now_ms()
    ):
        examples += [
            (a["customer_id"], a["action"], a["trigger"], a["created_at"])
            for a in step.actions
            if a["action_id"] in missing
        ]
    from collections import Counter as Tally

    fresh = Collector(settings, action_topics(settings))
    fresh.poll(3)
    reread = missing & set(emitted(fresh))
    fresh.close()
    dead = Collector(settings, [settings.topics.dlq])
    dead.poll(3)
    reasons = Tally(
        d["headers"].get("percorso.error.class", b"?").decode()
        for d in dead.records[settings.topics.dlq]
    )
    dead.close()
    from agents.app import partition_for

    by_partition = Tally(partition_for(c, settings.partitions) for c, *_ in examples)
    _ids, replayed = oracle(settings, scale, events, now_ms())
    stored = changelog_states(settings)
    details = []
    for customer, action, trigger, _at in examples[:3]:
        journey = trigger.split("/")[0] if "/" in trigger else None
        mine, theirs = stored.get(customer, {}), replayed.get(customer, {})
        if journey:
            mine = mine.get("journeys", {}).get(journey)
            theirs = theirs.get("journeys", {}).get(journey)
        details.append(f"{customer} {action}: stored {mine} | replay {theirs}")
    return (
        f"{len(missing)} missing, e.g. {examples[:5]}; {len(reread)} of them found by a fresh "
        f"read of the action topics; dead letters: {dict(reasons)}; missing by partition "
        f"{dict(by_partition)}; " + " ;; ".join(details)
    )[:6000]


def state_diff(stored: dict[str, Any], replayed: dict[str, Any]) -> str:
    """Which customers differ, and in which fields (journeys: per journey)."""
    only = sorted(set(stored) ^ set(replayed))
    differ = sorted(c for c in set(stored) & set(replayed) if stored[c] != replayed[c])
    detail = ""
    if differ:
        a, b = stored[differ[0]], replayed[differ[0]]
        fields = [k for k in b if a.get(k) != b.get(k)]
        journeys = {
            j: (a["journeys"].get(j), b["journeys"].get(j))
            for j in b["journeys"]
            if a["journeys"].get(j) != b["journeys"].get(j)
        }
        detail = f"; first: {differ[0]} fields {fields} journeys {journeys}"
    return f"{len(differ)} customers differ, {len(only)} only on one side{detail}"[:3000]


def emitted(col: Any) -> list[str]:
    return [a["action_id"] for t in action_topics(col.settings) for a in col.records[t]]
