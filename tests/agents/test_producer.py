"""The worker's output producer (agents/producer.py) against the real broker: order and
delivery reports, the flush the checkpoint awaits before committing, and a record that
cannot be delivered."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from agents.producer import DeliveryFailed, OutputProducer
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
