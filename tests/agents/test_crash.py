"""Kill workers mid-stream: nothing is lost, duplicates only repeat, state equals a replay."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from agents.app import partition_for
from agents.launcher import WorkerProcess
from agents.processor import unpack
from journeys.engine import Engine
from journeys.loader import load_catalog
from journeys.simulate import replay
from journeys.state import CustomerState
from percorso.config import Settings
from percorso.synthetic import SyntheticTraffic
from tests.agents.conftest import Cluster, Collect, Collector, action_topics, produce


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
        return {k: unpack(v)[0] for k, v in latest.items() if v}
    finally:
        consumer.close()


def partitions_of(worker: WorkerProcess) -> list[int]:
    with urllib.request.urlopen(f"{worker.url}/readyz", timeout=2) as response:
        return list(json.loads(response.read())["partitions"])


def _missing(
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
    return (
        f"{len(missing)} missing, e.g. {examples[:5]}; {len(reread)} of them found by a fresh "
        f"read of the action topics; dead letters: {dict(reasons)}"
    )


def _state_diff(stored: dict[str, Any], replayed: dict[str, Any]) -> str:
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


def test_sigkill_mid_stream_loses_nothing(cluster: Cluster, collect: Collect) -> None:
    scale = 600.0  # 30 min -> 3 s: cart windows are armed when the worker dies
    settings = cluster.settings
    # The traffic is live (event time = now) and cancelling touchpoints arrive right at the
    # deadlines: a grace lets the worker see them before it fires, as the oracle does.
    worker = cluster.worker(
        "w1", PERCORSO_TIME_SCALE=str(scale), PERCORSO_WINDOW_GRACE_MS="1500"
    ).start()
    worker.wait_ready()
    start = now_ms()
    events = SyntheticTraffic(300, seed=5, start_ms=start, rate=2000).take(6000)
    produce(settings, events)
    col = collect(settings, [settings.topics.transitions, *action_topics(settings)])
    col.until(
        lambda: len(col.records[settings.topics.transitions]) > 300,
        60,
        "the worker to be mid-stream",
    )
    worker.kill()
    assert len(col.records[settings.topics.transitions]) < 2000, "killed too late to matter"
    worker.start()
    worker.wait_ready()

    last_event = max(e["occurred_at"] for e in events)
    while now_ms() < last_event + 5_000:  # every 3-second window is due by then
        col.poll(0.5)
    low = now_ms() - 2_000
    want, _ = oracle(settings, scale, events, low)
    assert len(want) > 100
    col.until(
        lambda: want <= set(emitted(col)),
        90,
        f"{len(want)} oracle actions",
        lambda: _missing(want, col, settings, scale, events),
    )
    high = now_ms() + 2_000
    allowed, states = oracle(settings, scale, events, high)
    got = emitted(col)
    assert set(got) <= allowed, "an action the journeys do not produce"
    assert want <= set(got), "an action was lost"
    # duplicates are allowed after a crash (at-least-once), but only of existing ids
    assert len(got) >= len(set(got))

    # the input was written without transactions: a jump in offsets means records were skipped
    assert worker.metric("percorso_input_offset_gaps_total") == 0, "the worker skipped records"

    deadline = time.monotonic() + 60
    while (stored := changelog_states(settings)) != states:
        assert time.monotonic() < deadline, (
            f"table state differs from the offline replay: {_state_diff(stored, states)}"
        )
        time.sleep(1)


def test_killed_workers_partitions_fire_on_the_survivor(cluster: Cluster, collect: Collect) -> None:
    scale = 120.0  # 30 min -> 15 s
    settings = cluster.settings
    a = cluster.worker("a", PERCORSO_TIME_SCALE=str(scale)).start()
    b = cluster.worker("b", PERCORSO_TIME_SCALE=str(scale)).start()
    a.wait_ready()
    b.wait_ready()
    deadline = time.monotonic() + 60
    while not (partitions_of(a) and partitions_of(b)):
        assert time.monotonic() < deadline, "the two workers never shared the partitions"
        time.sleep(0.5)
    owned_by_a = set(partitions_of(a))
    now = now_ms()
    customers = [f"cust-{n:03d}" for n in range(40)]
    events = []
    for n, c in enumerate(customers):
        events.append(
            {
                "event_id": f"o-{c}",
                "customer_id": c,
                "channel": "email",
                "type": "email_opened",
                "occurred_at": now + n,
                "attributes": {},
                "source": None,
            }
        )
        events.append(
            {
                "event_id": f"c-{c}",
                "customer_id": c,
                "channel": "web",
                "type": "cart_add",
                "occurred_at": now + 100 + n,
                "attributes": {"sku": "S"},
                "source": None,
            }
        )
    on_a = [c for c in customers if partition_for(c, settings.partitions) in owned_by_a]
    assert on_a, "no customer on the worker that will die"
    produce(settings, events)
    col = collect(settings, [settings.topics.transitions, *action_topics(settings)])
    col.until(
        lambda: (
            {
                t["customer_id"]
                for t in col.records[settings.topics.transitions]
                if t["to_stage"] == "carted"
            }
            >= set(customers)
        ),
        60,
        "every cart",
    )
    a.kill()
    want, _ = oracle(settings, scale, events, now + 100 + 40 + 15_000)
    assert len(want) == len(customers)  # one reminder each
    col.until(lambda: want <= set(emitted(col)), 120, "the reminders of every customer")
    col.poll(3)
    assert set(emitted(col)) == want  # once each, after de-duplication by action id
    reminders = [x for t in action_topics(settings) for x in col.records[t]]
    assert {r["customer_id"] for r in reminders} >= set(on_a)
