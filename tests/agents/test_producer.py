"""The worker's output producer (agents/producer.py) against the real broker: order and
delivery reports, the flush the checkpoint awaits before committing, and a record that
cannot be delivered."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from agents.processor import Position
from agents.producer import DeliveryFailed, OutputProducer
from percorso.broker import Broker
from percorso.config import Settings


def _topic(settings: Settings, name: str, partitions: int) -> None:
    admin = AdminClient(settings.kafka_config())
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result()


def _read(settings: Settings, topic: str, partition: int, count: int) -> list[Any]:
    consumer = Consumer(
        {**settings.kafka_config(), "group.id": f"{topic}-reader", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, partition, 0)])
    records: list[Any] = []
    try:
        for _ in range(100):
            records += [m for m in consumer.consume(100, timeout=0.5) if m.error() is None]
            if len(records) >= count:
                break
    finally:
        consumer.close()
    return records


def test_records_arrive_in_order_and_are_reported_once_flushed(
    settings_factory: Callable[..., Settings], unique: Callable[[str], str]
) -> None:
    settings = settings_factory()
    topic = unique("out")
    _topic(settings, topic, 2)
    reported: list[tuple[str, int, int]] = []

    async def scenario() -> int:
        output = OutputProducer(settings)
        for n in range(300):
            await output.send(
                topic,
                b"k",
                b"%d" % n,
                headers=[("n", b"%d" % n)],
                partition=n % 2,
                on_delivery=lambda t, p, o: reported.append((t, p, o)),
            )
        await output.flush()
        return len(output)

    assert asyncio.run(scenario()) == 0
    assert len(reported) == 300  # every delivery reported, before flush returned
    for partition in (0, 1):
        offsets = [o for t, p, o in reported if p == partition]
        assert offsets == list(range(150))
        records = _read(settings, topic, partition, 150)
        assert [int(r.value()) for r in records] == list(range(partition, 300, 2))
        assert [dict(r.headers())["n"] for r in records] == [r.value() for r in records]
        assert {r.key() for r in records} == {b"k"}


def test_produce_without_await_blocks_only_while_the_queue_is_full(
    settings_factory: Callable[..., Settings], unique: Callable[[str], str]
) -> None:
    """The partition loop produces synchronously: with a tiny librdkafka queue, ``produce``
    serves delivery reports until there is room, and nothing is dropped or reordered."""
    settings = settings_factory()
    topic = unique("out")
    _topic(settings, topic, 1)

    async def scenario() -> int:
        output = OutputProducer(settings, **{"queue.buffering.max.messages": 10})
        for n in range(200):
            output.produce(topic, None, b"%d" % n)
        await output.flush()
        return len(output)

    assert asyncio.run(scenario()) == 0
    assert [int(r.value()) for r in _read(settings, topic, 0, 200)] == list(range(200))


def test_a_record_that_cannot_be_delivered_fails_the_flush(
    settings_factory: Callable[..., Settings], unique: Callable[[str], str]
) -> None:
    """So offsets are not committed past it: the worker stops and the input is read again."""
    settings = settings_factory()
    topic = unique("out")
    _topic(settings, topic, 1)

    async def scenario() -> OutputProducer:
        output = OutputProducer(settings, **{"message.timeout.ms": 1500})
        await output.send(topic, None, b"fine")
        await output.send(topic, None, b"lost", partition=7)  # the topic has one partition
        with pytest.raises(DeliveryFailed, match=topic):
            await output.flush()
        with pytest.raises(DeliveryFailed):  # and stays failed
            await output.flush()
        return output

    assert asyncio.run(scenario()).failed == 1


def test_outputs_without_a_callback_still_fail_the_flush_when_refused(
    settings_factory: Callable[..., Settings], unique: Callable[[str], str]
) -> None:
    """Outputs are produced without a per-record callback (they cost 5x more with one): the
    producer-wide report must still catch a record that is never delivered."""
    settings = settings_factory()
    topic = unique("out")
    _topic(settings, topic, 1)

    async def scenario() -> int:
        output = OutputProducer(settings, **{"message.timeout.ms": 1500})
        for n in range(20):
            output.produce(topic, None, b"%d" % n)
        output.produce(topic, None, b"lost", partition=5)  # the topic has one partition
        with pytest.raises(DeliveryFailed, match=topic):
            await output.flush()
        return output.failed

    assert asyncio.run(scenario()) == 1
    assert [int(r.value()) for r in _read(settings, topic, 0, 20)] == list(range(20))


def _purge(output: OutputProducer) -> None:
    """Drop every record not delivered yet: what a crash would lose."""
    output._producer.purge()
    output._producer.poll(0)


def test_a_barrier_waits_for_the_records_produced_before_it_not_for_an_empty_queue(
    settings_factory: Callable[..., Settings], unique: Callable[[str], str]
) -> None:
    """The checkpoint's wait: records keep being produced while it waits. Whatever was not
    delivered when it returns is dropped (a crash): every record produced before the barrier is
    in the topic all the same, with a create time at or before the barrier's, and every one
    produced after it has a later one."""
    settings = settings_factory()
    topic = unique("out")
    _topic(settings, topic, 3)

    reported: set[int] = set()

    async def scenario() -> tuple[int, int, int]:
        output = OutputProducer(settings)
        for n in range(3000):
            output.produce(
                topic,
                b"%d" % (n % 50),
                b"%d" % n,
                on_delivery=lambda t, p, o, n=n: reported.add(n),  # type: ignore[misc]
            )
        barrier = output.barrier()
        produced = 3000
        stop = asyncio.Event()

        async def keep_producing() -> None:
            nonlocal produced
            while not stop.is_set():
                for _ in range(50):
                    output.produce(topic, b"%d" % (produced % 50), b"%d" % produced)
                    produced += 1
                await asyncio.sleep(0)

        background = asyncio.ensure_future(keep_producing())
        await output.delivered(barrier)
        assert reported == set(range(3000))  # all delivered when it returns
        stop.set()
        await background
        failed = output.failed  # the purge below fails what it drops
        _purge(output)
        return barrier, produced, failed

    barrier, produced, failed = asyncio.run(scenario())
    assert failed == 0
    assert produced > 3000  # records were produced while it waited
    records = [r for partition in range(3) for r in _read(settings, topic, partition, 3000)]
    before = {int(r.value()) for r in records if int(r.value()) < 3000}
    assert before == set(range(3000))
    for r in records:
        assert (r.timestamp()[1] <= barrier) == (int(r.value()) < 3000)


@pytest.mark.kafka_semantics  # the embedded broker ignores message.timestamp.type
def test_a_barrier_on_a_topic_stamped_with_the_broker_time_waits_for_an_empty_queue(
    settings_factory: Callable[..., Settings], unique: Callable[[str], str]
) -> None:
    """With ``LogAppendTime`` the reports do not carry our create times: the wait falls back
    to an empty queue, and ``ordered`` tells the runtime to stop applying records meanwhile."""
    settings = settings_factory()
    topic = unique("appendtime")
    _topic_with(settings, topic, **{"message.timestamp.type": "LogAppendTime"})

    async def scenario() -> OutputProducer:
        output = OutputProducer(settings)
        for n in range(500):
            output.produce(topic, None, b"%d" % n)
        await output.delivered(output.barrier())
        assert not len(output)
        _purge(output)
        return output

    output = asyncio.run(scenario())
    assert not output.ordered
    assert [int(r.value()) for r in _read(settings, topic, 0, 500)] == list(range(500))


def _topic_with(settings: Settings, name: str, **config: str) -> None:
    admin = AdminClient(settings.kafka_config())
    admin.create_topics([NewTopic(name, 1, 1, config=config)])[name].result()


def test_a_record_too_large_to_send_is_quarantined_cut_to_fit(
    settings_factory: Callable[..., Settings], unique: Callable[[str], str]
) -> None:
    """Refused by librdkafka when sent (beyond ``message.max.bytes``): sending it again would
    be refused again, so it goes to the dead-letter topic, cut to fit, and the flush
    succeeds."""
    base = settings_factory()
    settings = replace(base, limits=replace(base.limits, max_dead_letter_bytes=20_000))
    topic = unique("out")
    _topic(settings, topic, 1)
    _topic(settings, settings.topics.dlq, 1)
    big = os.urandom(100_000)

    async def scenario() -> OutputProducer:
        output = OutputProducer(settings, **{"message.max.bytes": 50_000})
        output.position = Position(settings.topics.touchpoints, 3, 42)
        await output.send(topic, b"k1", big, headers=[("percorso.action_id", b"a1")])
        await output.send(topic, b"k3", b"fine")
        await output.flush()
        return output

    output = asyncio.run(scenario())
    assert (output.failed, output.quarantined, output.dropped) == (0, 1, 0)
    assert [r.value() for r in _read(settings, topic, 0, 1)] == [b"fine"]
    [dead] = _read(settings, settings.topics.dlq, 0, 1)
    headers = dict(dead.headers())
    assert dead.key() == b"k1"
    assert headers["percorso.error.class"] == b"OutputTooLarge"
    assert headers["percorso.output.topic"] == topic.encode()
    assert headers["percorso.action_id"] == b"a1"
    assert headers["percorso.error.truncated"] == b"true"
    assert headers["percorso.error.original_size"] == b"100000"
    assert (headers["percorso.source.partition"], headers["percorso.source.offset"]) == (
        b"3",
        b"42",
    )
    assert big.startswith(dead.value()) and len(dead.value()) > 15_000


@pytest.mark.kafka_semantics
def test_a_record_the_broker_refuses_for_its_size_is_quarantined(
    broker: Broker, settings_factory: Callable[..., Settings], unique: Callable[[str], str]
) -> None:
    """Refused by the broker (beyond the topic's ``max.message.bytes``), reported later: the
    wait for a barrier set before it includes the delivery of its quarantined copy."""
    if broker.kind == "embedded":  # only where the machine has no Java (CI deselects it there)
        pytest.skip("the embedded broker does not enforce a topic's max.message.bytes")
    settings = settings_factory()
    small = unique("small")
    _topic(settings, settings.topics.dlq, 1)
    _topic_with(settings, small, **{"max.message.bytes": "5000"})
    other = unique("other")
    _topic(settings, other, 1)
    medium = os.urandom(10_000)  # incompressible: the broker sees its size

    async def scenario() -> OutputProducer:
        output = OutputProducer(settings)
        await output.send(small, b"k2", medium)
        barrier = output.barrier()
        for n in range(200):  # produced after the barrier, not waited for
            output.produce(other, None, b"%d" % n)
        await output.delivered(barrier)  # ... but the refused record's copy is
        _purge(output)
        return output

    output = asyncio.run(scenario())
    assert (output.failed, output.quarantined, output.dropped) == (0, 1, 0)
    [dead] = _read(settings, settings.topics.dlq, 0, 1)
    headers = dict(dead.headers())
    assert headers["percorso.error.class"] == b"OutputTooLarge"
    assert headers["percorso.output.topic"] == small.encode()
    assert dead.value() == medium  # it fits the dead-letter limit: unchanged
    assert "percorso.error.truncated" not in headers


def test_a_dead_letter_refused_even_cut_to_fit_is_dropped_not_a_crash_loop(
    settings_factory: Callable[..., Settings],
) -> None:
    """A dead letter refused for its size is sent again cut to 64 KiB; refused again (here
    librdkafka's own limit is lower still), it is dropped: nothing would ever take it."""
    settings = settings_factory()
    _topic(settings, settings.topics.dlq, 1)

    async def scenario() -> OutputProducer:
        output = OutputProducer(settings, **{"message.max.bytes": 5000})
        await output.send(settings.topics.dlq, b"k", os.urandom(100_000))
        await output.send(settings.topics.dlq, b"k", b"small")
        await output.flush()  # does not raise
        return output

    output = asyncio.run(scenario())
    assert (output.failed, output.dropped) == (0, 1)
    assert [r.value() for r in _read(settings, settings.topics.dlq, 0, 1)] == [b"small"]


def test_a_dead_letter_grown_beyond_the_limit_by_its_headers_is_cut_to_the_limit(
    settings_factory: Callable[..., Settings],
) -> None:
    """A quarantine adds the stored state as a header after the dead letter was made: refused
    by librdkafka, it is sent again cut to the dead-letter limit, its value kept whole."""
    settings = settings_factory()
    _topic(settings, settings.topics.dlq, 1)
    value, stored = os.urandom(300_000), os.urandom(900_000)

    async def scenario() -> OutputProducer:
        output = OutputProducer(settings)
        headers = [("percorso.error.class", b"CorruptState")]
        headers.append(("percorso.error.stored_state", stored))
        await output.send(settings.topics.dlq, b"c:k", value, headers)
        await output.flush()
        return output

    output = asyncio.run(scenario())
    assert (output.failed, output.dropped) == (0, 0)
    [dead] = _read(settings, settings.topics.dlq, 0, 1)
    headers = dict(dead.headers())
    assert dead.value() == value
    assert headers["percorso.error.class"] == b"CorruptState"
    assert headers["percorso.error.stored_state"] == stored[:4096]
    assert headers["percorso.error.stored_state.original_size"] == b"900000"
    assert headers["percorso.error.truncated"] == b"true"
