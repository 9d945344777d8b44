"""Faults that only a real Apache Kafka allows: a broker SIGKILLed and restarted on its log
directory, partition leaders SIGKILLed in a three-broker cluster, a changelog compacted by the
broker, the idempotent producer. Each test runs its own local Apache Kafka (the session broker
is shared and must not be killed), so they run whatever broker the session uses.

Invariants, as in the worker crash tests: every action of the offline replay is emitted (no
loss), every emitted action is one the replay can produce (duplicates only repeat an existing
``action_id``), the stored state equals the replay's, and no input record was skipped.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from agents import stored as stored_values
from percorso import clients
from percorso.broker import Broker, apache_kafka
from percorso.config import Settings
from percorso.localkafka import LocalKafka, LocalKafkaUnavailable, check_available
from percorso.produce import TouchpointSender
from percorso.synthetic import SyntheticTraffic
from tests.agents.conftest import Cluster, Collect, Collector, action_topics, produce, workers_on
from tests.agents.oracle import changelog_states, emitted, missing_report, now_ms, oracle
from tests.agents.oracle import state_diff as diff_of_states
from tests.conftest import settings_for

pytestmark = [pytest.mark.broker, pytest.mark.real_kafka]


def _require_local_kafka() -> None:
    try:
        check_available()
    except LocalKafkaUnavailable as exc:
        if os.environ.get("CI") == "true":
            raise  # CI machines have Java and Maven: never skipped there
        pytest.skip(f"needs a local Apache Kafka: {exc}")


@pytest.fixture
def own_kafka(tmp_path: Path) -> Iterator[Broker]:
    """A single-node Apache Kafka of this test's own."""
    _require_local_kafka()
    with apache_kafka(tmp_path / "own-broker") as b:
        yield b


@pytest.fixture
def kafka_trio(tmp_path: Path) -> Iterator[Broker]:
    """Three KRaft nodes on loopback: replication factor 3, min.insync.replicas 2. Brokers
    miss their controller heartbeat after 3 s here (9 s by default), so a killed leader is
    replaced within seconds."""
    _require_local_kafka()
    cluster = LocalKafka.create(
        tmp_path / "trio",
        nodes=3,
        extra_config={"broker.session.timeout.ms": "3000", "broker.heartbeat.interval.ms": "500"},
    )
    try:
        cluster.start()
        yield Broker(
            cluster.bootstrap_servers,
            "kafka",
            _test_profile(),
            cluster.log_path,
            kafka=cluster,
            description="local Apache Kafka (3 KRaft nodes)",
        )
    finally:
        for node in cluster.nodes:
            node.kill()
        cluster.remove()


def _test_profile() -> Any:
    from percorso.broker import TEST_KAFKA_PROFILE

    return TEST_KAFKA_PROFILE


@pytest.fixture
def workers_factory(
    unique: Callable[[str], str], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Cluster]]:
    made: list[Any] = []

    def make(broker: Broker, **overrides: Any) -> Cluster:
        settings = settings_for(
            broker, unique, tmp_path, journeys_dir=Path(__file__).parents[2] / "journeys/catalog"
        )
        settings = replace(settings, **overrides)
        ctx = workers_on(broker, settings, tmp_path, request)
        made.append(ctx)
        return ctx.__enter__()

    yield make
    for ctx in reversed(made):
        ctx.__exit__(None, None, None)


def _dump_logs_on_failure(request: pytest.FixtureRequest, broker: Broker) -> None:
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and broker.kafka is not None:
        print(broker.kafka.log_tail(40))


def _await_all(
    col: Collector,
    settings: Settings,
    scale: float,
    events: list[dict[str, Any]],
    timeout: float = 120,
    settle_ms: int = 2_000,
) -> None:
    """Wait for every action the replay says was due ``settle_ms`` ago, then check the
    invariants."""
    low = now_ms() - settle_ms
    want, _ = oracle(settings, scale, events, low)
    assert len(want) > 50, "too few actions due for the test to mean anything"
    col.until(
        lambda: want <= set(emitted(col)),
        timeout,
        f"{len(want)} oracle actions",
        lambda: missing_report(want, col, settings, scale, events),
    )
    allowed, states = oracle(settings, scale, events, now_ms() + 2_000)
    got = emitted(col)
    assert set(got) <= allowed, "an action the journeys do not produce"
    assert want <= set(got), "an action was lost"
    deadline = time.monotonic() + 60
    while (stored := changelog_states(settings)) != states:
        assert time.monotonic() < deadline, (
            f"table state differs from the offline replay: {diff_of_states(stored, states)}"
        )
        time.sleep(1)


def test_broker_sigkill_and_restart_loses_nothing(
    own_kafka: Broker,
    workers_factory: Callable[..., Cluster],
    collect: Collect,
    request: pytest.FixtureRequest,
) -> None:
    """The only broker dies mid-stream with windows armed and comes back on the same log
    directory: the same worker process carries on by itself."""
    assert own_kafka.kafka is not None
    scale = 600.0  # 30 min -> 3 s: cart windows are armed when the broker dies
    c = workers_factory(own_kafka)
    settings = c.settings
    worker = c.worker("w1", PERCORSO_TIME_SCALE=str(scale), PERCORSO_WINDOW_GRACE_MS="1500")
    worker.start()
    worker.wait_ready()
    events = SyntheticTraffic(300, seed=7, start_ms=now_ms(), rate=2000).take(6000)
    produce(settings, events)
    col = collect(settings, [settings.topics.transitions, *action_topics(settings)])
    col.until(
        lambda: len(col.records[settings.topics.transitions]) > 300, 60, "the worker mid-stream"
    )
    node = own_kafka.kafka.nodes[0]
    node.kill()
    try:
        time.sleep(4)  # windows fall due while the broker is away
        assert worker.alive(), "the worker died with the broker"
        node.start()
        own_kafka.kafka.wait_ready(90)
        last_event = max(e["occurred_at"] for e in events)
        while now_ms() < last_event + 5_000:
            col.poll(0.5)
        _await_all(col, settings, scale, events)
        assert worker.starts == 1 and worker.alive(), "the worker had to be restarted"
        assert worker.metric("percorso_input_offset_gaps_total") == 0, "records were skipped"
    finally:
        _dump_logs_on_failure(request, own_kafka)


def test_leaders_sigkilled_in_a_three_broker_cluster_lose_nothing(
    kafka_trio: Broker,
    workers_factory: Callable[..., Cluster],
    collect: Collect,
    request: pytest.FixtureRequest,
) -> None:
    """Traffic keeps arriving while the leaders of an input, a changelog and an action
    partition are SIGKILLed in turn (each restarted before the next).

    While a leader is down, producers of the input hold records back for the seconds a
    failover takes, so touchpoints arrive that much later than their event time. Windows fire
    on the wall clock minus ``PERCORSO_WINDOW_GRACE_MS``: the grace must cover that lateness,
    or a window fires before a touchpoint that the offline replay puts first (seen here with
    1.5 s: different caps and arbitration, so different actions)."""
    kafka = kafka_trio.kafka
    assert kafka is not None
    scale = 600.0
    grace_ms = 12_000
    c = workers_factory(kafka_trio, replication_factor=3)
    settings = c.settings
    worker = c.worker("w1", PERCORSO_TIME_SCALE=str(scale), PERCORSO_WINDOW_GRACE_MS=str(grace_ms))
    worker.start()
    worker.wait_ready()

    rate = 400
    traffic = SyntheticTraffic(300, seed=11, start_ms=now_ms(), rate=rate)
    events: list[dict[str, Any]] = []
    sent = threading.Event()
    failure: list[BaseException] = []

    def feed() -> None:
        """Live traffic: each second's events sent in that second. A batch sent late (a busy
        machine, a producer waiting for a new leader) is stamped with the time it is sent, so
        event times never run ahead of the clock by more than the test means them to."""
        try:
            sender = TouchpointSender(
                clients.producer(settings),
                clients.Codecs.from_settings(settings),
                settings.topics.touchpoints,
            )
            begin = time.monotonic()
            lag = 0  # only grows: event times stay in order
            for second in range(18):
                batch = traffic.take(rate)
                lag = max(lag, now_ms() - batch[0]["occurred_at"])
                if lag > 0:
                    batch = [dict(e, occurred_at=e["occurred_at"] + lag) for e in batch]
                events.extend(batch)
                for e in batch:
                    sender.send(e)
                sender.flush()
                assert sender.summary.failed == 0, sender.first_error
                time.sleep(max(0.0, begin + second + 1 - time.monotonic()))
        except BaseException as exc:  # surfaced in the test thread
            failure.append(exc)
        finally:
            sent.set()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    col = collect(settings, [settings.topics.transitions, *action_topics(settings)])
    victims = [
        (settings.topics.touchpoints, 0),
        (f"{settings.app_id}-state-changelog", 1),
        (settings.topics.actions("email"), 0),
    ]
    killed = []
    try:
        col.poll(2)
        for topic, partition in victims:
            leader = kafka.leader_of(topic, partition)
            node = kafka.node(leader)
            node.kill()
            killed.append((topic, partition, leader))
            kafka.wait_leader_moved(topic, partition, leader)
            col.poll(2)  # the stream goes on with one broker down
            node.start()
            kafka.wait_ready(90, nodes=3)
        sent.wait(60)
        assert not failure, f"producing the input failed: {failure[0]!r}"
        assert sent.is_set()
        last_event = max(e["occurred_at"] for e in events)
        while now_ms() < last_event + grace_ms + 5_000:
            col.poll(0.5)
        _await_all(col, settings, scale, events, settle_ms=grace_ms + 2_000)
        assert worker.starts == 1 and worker.alive(), "the worker had to be restarted"
        assert worker.metric("percorso_input_offset_gaps_total") == 0, "records were skipped"
        assert len(killed) == 3
    finally:
        _dump_logs_on_failure(request, kafka_trio)


def _local_states(data_dir: Path) -> dict[str, Any]:
    """Every customer state in a stopped worker's RocksDB folders."""
    from rocksdict import AccessType, Options, Rdict

    states: dict[str, Any] = {}
    folders = sorted(data_dir.rglob("state-*.db"))
    assert folders, f"no RocksDB partitions under {data_dir}"
    for folder in folders:
        db = Rdict(str(folder), Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            for key, value in db.items(from_key=b"c:"):
                if not key.startswith(b"c:"):
                    break
                states[key[2:].decode()] = stored_values.decode(value).state
        finally:
            db.close()
    return states


def _compact_quickly(settings: Settings, topic: str) -> None:
    """Segments rolled every second and a low dirty ratio, so the broker's cleaner compacts
    within seconds (an operator's tuning; the defaults compact the same way, later)."""
    admin: AdminClient = clients.admin(settings)
    resource = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry("segment.ms", "1000", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry(
                "min.cleanable.dirty.ratio", "0.01", incremental_operation=AlterConfigOpType.SET
            ),
            ConfigEntry("min.compaction.lag.ms", "0", incremental_operation=AlterConfigOpType.SET),
        ],
    )
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)


def _changelog_census(settings: Settings, topic: str) -> tuple[int, int, dict[str, int]]:
    """(records readable from the beginning, sum of the partitions' end offsets, copies per
    customer key)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {**settings.kafka_config(), "group.id": "census", "enable.auto.commit": False}
    )
    try:
        md = consumer.list_topics(topic, timeout=10)
        parts = list(md.topics[topic].partitions)
        ends = sum(consumer.get_watermark_offsets(TopicPartition(topic, p))[1] for p in parts)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        read = 0
        copies: dict[str, int] = {}
        idle = time.monotonic()
        while time.monotonic() - idle < 2.0:
            for msg in consumer.consume(1000, timeout=0.2):
                if msg.error():
                    continue
                read += 1
                idle = time.monotonic()
                if msg.key().startswith(b"c:"):
                    k = msg.key()[2:].decode()
                    copies[k] = copies.get(k, 0) + 1
        return read, ends, copies
    finally:
        consumer.close()


def test_compacted_changelog_alone_recovers_the_state(
    own_kafka: Broker,
    workers_factory: Callable[..., Cluster],
    request: pytest.FixtureRequest,
) -> None:
    """The broker compacts the changelog; a worker whose RocksDB folder was deleted rebuilds
    exactly the replay's state from what compaction left."""
    c = workers_factory(own_kafka)
    settings = c.settings
    changelog = f"{settings.app_id}-state-changelog"
    worker = c.worker("w1")
    worker.start()
    worker.wait_ready()
    _compact_quickly(settings, changelog)
    # few customers, many touchpoints each: many superseded records per key; event times in
    # the last minute, so no window (30 minutes at least) falls due during the test
    events = SyntheticTraffic(60, seed=3, start_ms=now_ms() - 40_000, rate=100).take(3000)
    # customers whose quiet hours end within the next 15 minutes (it depends on the time of
    # day) would have a deferred action fall due during the test: leave them out
    _, soon = oracle(settings, 1.0, events, now_ms())
    _, after = oracle(settings, 1.0, events, now_ms() + 900_000)
    moving = {c for c in soon if soon[c] != after.get(c)}
    events = [e for e in events if e["customer_id"] not in moving]
    assert len(events) > 1000
    # a customer's state reaches the changelog once per checkpoint (1 s) in which it changed:
    # 30 bursts a checkpoint apart give each customer about 30 superseded copies, spread over
    # several changelog segments
    for n in range(0, len(events), 100):
        produce(settings, events[n : n + 100])
        time.sleep(1.2)
    _, states = oracle(settings, 1.0, events, now_ms())
    _, later = oracle(settings, 1.0, events, now_ms() + 900_000)
    assert later == states, "a window falls due during the test: the states would move"
    deadline = time.monotonic() + 120
    while changelog_states(settings) != states:
        assert time.monotonic() < deadline, "the worker never stored the replay's state"
        time.sleep(1)
    try:
        deadline = time.monotonic() + 120
        while True:
            read, ends, copies = _changelog_census(settings, changelog)
            if read < ends // 2:
                break
            assert time.monotonic() < deadline, (
                f"the broker did not compact the changelog: {read} of {ends} records remain"
            )
            time.sleep(2)
        assert max(copies.values()) < 40, "superseded states were not removed"
        worker.stop()
        data = worker.env["PERCORSO_DATA_DIR"]
        import shutil

        shutil.rmtree(data)
        worker.start()
        worker.wait_ready(180)
        worker.stop()
        assert _local_states(Path(data)) == states
    finally:
        _dump_logs_on_failure(request, own_kafka)


_BATCH = re.compile(r"baseOffset: \d+ .*?producerId: (-?\d+) producerEpoch: (-?\d+)")


def test_every_producer_is_idempotent_on_apache_kafka(
    own_kafka: Broker,
    workers_factory: Callable[..., Cluster],
    collect: Collect,
) -> None:
    """Batches written by the worker's producers carry a producer id (the broker stores -1
    for a producer that is not idempotent): actions, transitions, changelog, the repartition
    topic (Faust's aiokafka producer) and the input (``percorso produce``'s producer)."""
    assert own_kafka.kafka is not None
    c = workers_factory(own_kafka)
    settings = c.settings
    worker = c.worker("w1")
    worker.start()
    worker.wait_ready()
    events = SyntheticTraffic(50, seed=9, start_ms=now_ms() - 60_000, rate=50).take(400)
    produce(settings, events)
    # keyed by something other than the customer id: re-keyed through the repartition topic
    sender_events = [dict(e, event_id=e["event_id"] + "-r") for e in events[:20]]
    producer = clients.producer(settings)
    codec = clients.Codecs.from_settings(settings).touchpoint
    for e in sender_events:
        producer.produce(settings.topics.touchpoints, key=b"not-a-customer", value=codec.encode(e))
    assert producer.flush(30) == 0
    col = collect(settings, [settings.topics.transitions])
    col.until(
        lambda: (
            {t["cause"] for t in col.records[settings.topics.transitions]}
            & {e["event_id"] for e in sender_events}
            != set()
        ),
        60,
        "a re-keyed touchpoint's transition",
    )
    col.poll(2)
    worker.stop()
    topics = [
        settings.topics.touchpoints,
        settings.topics.transitions,
        f"{settings.app_id}-state-changelog",
        f"{settings.app_id}-repartition",
        *action_topics(settings),
    ]
    seen: dict[str, set[int]] = {}
    for topic in topics:
        for p in range(settings.partitions):
            dump = own_kafka.kafka.dump_log_segments(topic, p)
            for producer_id, _epoch in _BATCH.findall(dump):
                seen.setdefault(topic, set()).add(int(producer_id))
    for topic in (
        settings.topics.touchpoints,
        settings.topics.transitions,
        f"{settings.app_id}-state-changelog",
        f"{settings.app_id}-repartition",
    ):
        assert topic in seen, f"no batch found in {topic}"
    assert any(t in seen for t in action_topics(settings)), "no action batch found"
    for topic, ids in seen.items():
        assert -1 not in ids, f"{topic} has batches from a producer that is not idempotent"
