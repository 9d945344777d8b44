"""The faust fixes Percorso carries (agents/patches.py), each on its own. The end-to-end and
crash tests run every one of them against the real broker."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import faust
import pytest

from agents import patches


async def _quick(value: int) -> int:
    return value * 2


async def _blocking(gate: asyncio.Future[int], trail: list[str]) -> int:
    trail.append("started")
    try:
        value = await gate
    except asyncio.CancelledError:
        trail.append("cancelled")
        raise
    trail.append("resumed")
    return value + 1


def test_a_coroutine_that_does_not_block_finishes_inline() -> None:
    done, result = patches.start_inline(_quick(21))
    assert (done, result) == (True, 42)


def test_a_coroutine_that_blocks_is_carried_on_by_whoever_awaits_the_rest() -> None:
    async def scenario() -> tuple[list[str], int]:
        gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        trail: list[str] = []
        done, rest = patches.start_inline(_blocking(gate, trail))
        assert not done and trail == ["started"]
        task = asyncio.ensure_future(rest)
        await asyncio.sleep(0)
        gate.set_result(1)
        return trail, await task

    trail, result = asyncio.run(scenario())
    assert trail == ["started", "resumed"] and result == 2


def test_a_blocked_hand_over_can_still_be_interrupted() -> None:
    """What wait_first does on a rebalance: the first of (hand-over, suspend) wins and the
    other is cancelled; the interrupted coroutine sees the cancellation."""

    async def scenario() -> list[str]:
        gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        trail: list[str] = []
        suspend = asyncio.Event()
        _, rest = patches.start_inline(_blocking(gate, trail))
        hand_over = asyncio.ensure_future(rest)
        suspended = asyncio.ensure_future(suspend.wait())
        suspend.set()
        done, pending = await asyncio.wait(
            {hand_over, suspended}, return_when=asyncio.FIRST_COMPLETED
        )
        assert suspended in done and hand_over in pending
        hand_over.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hand_over
        return trail

    assert asyncio.run(scenario()) == ["started", "cancelled"]


def _app(reset: str = "earliest") -> Any:
    table = SimpleNamespace(
        changelog_topic=SimpleNamespace(get_topic_name=lambda: "app-state-changelog")
    )
    return SimpleNamespace(
        conf=SimpleNamespace(consumer_auto_offset_reset=reset), tables={"state": table}
    )


def test_stream_partitions_without_a_committed_offset_are_sought_to_the_beginning() -> None:
    from faust.types import TP as tp

    committed: dict[Any, int | None] = {
        tp(topic="touchpoints", partition=0): None,  # never committed: aiokafka left it
        tp(topic="touchpoints", partition=1): 0,  # committed 0: aiokafka left it too
        tp(topic="touchpoints", partition=2): 57,  # aiokafka sought it
        tp(topic="app-state-changelog", partition=0): None,  # recovery's business
        tp(topic="app-__assignor-__leader", partition=0): None,
    }
    chosen = patches.uncommitted_stream_partitions(_app(), committed)
    assert [(t.topic, t.partition) for t in chosen] == [("touchpoints", 0), ("touchpoints", 1)]
    assert patches.uncommitted_stream_partitions(_app("latest"), committed) == []


@pytest.mark.skipif(faust.__version__ != patches.PATCHED_VERSION, reason="patches are guarded")
def test_patches_apply_once_and_mark_what_they_replaced() -> None:
    from faust.transport import consumer
    from faust.transport.drivers import aiokafka as driver
    from faust.transport.producer import ProducerBuffer

    patches.apply(50, 4096)
    patches.consumer_batch_loop()
    first = (
        ProducerBuffer.flush,
        driver.AIOKafkaConsumerThread.seek_to_committed,
        consumer.Consumer._drain_messages,
        driver.AIOKafkaConsumerThread._create_worker_consumer,
    )
    patches.apply(50, 4096)
    patches.consumer_batch_loop()
    again = (
        ProducerBuffer.flush,
        driver.AIOKafkaConsumerThread.seek_to_committed,
        consumer.Consumer._drain_messages,
        driver.AIOKafkaConsumerThread._create_worker_consumer,
    )
    assert first == again
    assert getattr(first[0], "_percorso_complete", False)
    assert getattr(first[1], "_percorso_seek_unset", False)
    assert getattr(first[2], "_percorso_batches", False)
    assert getattr(first[3], "_percorso_fetch", None) == (50, 4096)


def test_the_fetch_settings_reach_the_consumer_faust_creates(monkeypatch: Any) -> None:
    """faust creates its aiokafka consumer with fetch_max_wait_ms=1500 and fetch_min_bytes=1;
    the profile's values replace them before it starts, where aiokafka reads them."""
    from aiokafka import AIOKafkaConsumer
    from faust.transport.drivers import aiokafka as driver

    def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        return AIOKafkaConsumer(fetch_max_wait_ms=1500, fetch_min_bytes=1)

    async def created() -> Any:  # aiokafka builds its consumer inside a running loop
        return driver.AIOKafkaConsumerThread._create_worker_consumer(object())

    monkeypatch.setattr(driver.AIOKafkaConsumerThread, "_create_worker_consumer", create)
    patches.override_fetch(20, 16_384)
    consumer = asyncio.run(created())
    assert (consumer._fetch_max_wait_ms, consumer._fetch_min_bytes) == (20, 16_384)


def test_end_offsets_read_from_a_fetch_are_the_real_ends(
    broker: Any, settings_factory: Any, unique: Any
) -> None:
    """Several records per batch (where the embedded broker's ListOffsets goes wrong): the
    corrected end offset of each partition is its record count, whatever ListOffsets said."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic
    from faust.types import TP

    settings = settings_factory()
    config = settings.kafka_config()
    topic = unique("ends")
    admin = AdminClient(config)
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result()
    producer = Producer({**config, "linger.ms": 100})
    sizes = {0: 37, 1: 5}
    for partition, count in sizes.items():
        for n in range(count):
            producer.produce(topic, value=b"%d" % n, partition=partition)
    assert producer.flush(30) == 0
    reported: dict[Any, int | None] = {TP(topic, 0): 1, TP(topic, 1): 5}  # as if misreported
    ends = patches.fetched_end_offsets(config, reported)
    assert ends == {TP(topic, 0): 37, TP(topic, 1): 5}
    empty = {TP(topic, 0): 0}
    assert patches.fetched_end_offsets(config, empty) == empty  # nothing to confirm


def test_a_record_counts_as_read_only_while_the_position_is_past_it() -> None:
    """The hand-over's guard: after a seek back to (or before) a record, or while the
    partition is being reset, the record is not marked read; it will be fetched again."""
    assert patches.still_ahead(120, 119)
    assert not patches.still_ahead(119, 119)  # sought back to it
    assert not patches.still_ahead(0, 119)  # sought to the beginning
    assert not patches.still_ahead(None, 119)  # position unknown: being reset


def test_a_batch_that_came_back_across_a_rebalance_is_fetched_again_not_dropped() -> None:
    """A fetch that returns while the group moves to a new generation may hold records of
    either generation. Dropping it skipped them when they were the new generation's: the
    position stayed past records nobody applied (a survivor never applied a dead worker's
    partitions, seen with fetches held 20 ms). Such a batch is fetched again from its first
    record unless it is below the committed offset (the old generation's, already done)."""
    fate = patches.batch_fate
    # no rebalance during the wait: the records are this generation's
    assert fate(3, 3, 17, None, 0, 16) == patches.APPLY
    assert fate(3, 3, 17, 5, 5, 16) == patches.APPLY
    # sought back since (or being reset): they come again by themselves
    assert fate(3, 3, 5, 5, 5, 16) == patches.DROP
    assert fate(2, 3, 0, None, 0, 16) == patches.DROP
    assert fate(2, 3, None, None, 0, 16) == patches.DROP
    # a rebalance during the wait, the position past the batch
    assert fate(2, 3, 17, None, 0, 16) == patches.REFETCH  # uncommitted: read from the start
    assert fate(2, 3, 17, 0, 0, 16) == patches.REFETCH
    assert fate(2, 3, 17, 5, 5, 16) == patches.REFETCH  # from the committed offset on
    assert fate(2, 3, 25, 25, 10, 20) == patches.DROP  # below the committed offset: done


def test_an_untested_faust_or_aiokafka_refuses_to_start() -> None:
    patches.check_versions()  # the pinned versions pass
    with pytest.raises(patches.UntestedFaustVersion, match=r"faust-streaming 0\.16\.0"):
        patches.check_versions(faust_version="0.16.0")
    with pytest.raises(patches.UntestedFaustVersion, match=r"aiokafka 0\.15\.0"):
        patches.check_versions(aiokafka_version="0.15.0")


def test_records_of_an_earlier_generation_are_not_handed_over() -> None:
    class App:
        consumer_generation_id = 3

    class Message:
        def __init__(self, generation_id: int) -> None:
            self.generation_id = generation_id

    assert patches.current_generation(App(), Message(3))
    assert not patches.current_generation(App(), Message(2))


def test_the_safe_time_is_the_last_fetch_time_when_caught_up(monkeypatch: Any) -> None:
    """Caught up means: at the high watermark of the last fetch response. Records written since
    are unknown, so wake-ups may fire up to that response's time (minus the grace), not up to
    the wall clock; behind it, up to the latest event time applied."""
    from types import SimpleNamespace

    from agents.app import Runtime

    seen = {"position": 10, "highwater": 10, "fetched": 5_000}
    monkeypatch.setattr(patches, "position", lambda app, t, p: seen["position"])
    monkeypatch.setattr(patches, "highwater", lambda app, t, p: seen["highwater"])
    monkeypatch.setattr(patches, "last_fetch_ms", lambda app, t, p: seen["fetched"])
    runtime: Any = SimpleNamespace(
        app=None,
        topics=("in", "re"),
        options=SimpleNamespace(window_grace_ms=300),
        parts={0: SimpleNamespace(watermark=1_234)},
    )
    assert Runtime.safe_time(runtime, 0, now=9_000) == 5_000 - 300
    seen["fetched"] = 20_000  # a response stamped after our clock read: the clock bounds it
    assert Runtime.safe_time(runtime, 0, now=9_000) == 9_000 - 300
    seen["position"] = 9  # a record of the last response not applied yet
    assert Runtime.safe_time(runtime, 0, now=9_000) == 1_234
    runtime.parts[0].watermark = 50_000  # event times ahead of the clock: the clock bounds it
    assert Runtime.safe_time(runtime, 0, now=9_000) == 9_000 - 300
    runtime.parts[0].watermark = 1_234
    seen["position"], seen["fetched"] = 10, None  # never fetched
    assert Runtime.safe_time(runtime, 0, now=9_000) == 1_234
    runtime.parts = {}
    assert Runtime.safe_time(runtime, 0, now=9_000) is None
