"""The worker's producer for what it writes while processing: outputs (actions, transitions,
dead letters) and the state table's changelog records.

It is confluent-kafka's producer (librdkafka), not Faust's aiokafka one: a record costs a few
microseconds of the event loop's thread instead of the futures, partitioner and batch
bookkeeping aiokafka runs there (about a fifth of a worker's time, measured in
docs/performance.md), and librdkafka batches, compresses and sends from its own threads.

Durability: the checkpoint (``agents.checkpoint``) waits for a *delivery barrier* before it
commits offsets, so an input offset is committed only after everything its records caused was
delivered. A record that cannot be delivered (librdkafka has retried it until
``message.timeout.ms``) fails that wait, so the commit does not happen and the worker stops: the
records are processed again on restart, instead of being lost quietly.

The barrier waits for the records produced before it, not for an empty queue: records keep being
produced while a checkpoint runs. Every record carries an explicit create time, and the time of
a record produced after a barrier is later than that of every record produced before it; a
delivery report says the record's time, so counting the reports at or before the barrier's time
tells when all of its records are in. Where a topic stamps records with the broker's time
(``message.timestamp.type=LogAppendTime``) the reports do not carry ours: the barrier then
waits for an empty queue, and ``ordered`` turns false so the runtime stops applying records
while a checkpoint runs (so the queue does empty).

Except a record refused for its size (``MSG_SIZE_TOO_LARGE``, by librdkafka when it is produced or
by the broker later): producing it again would be refused again, so stopping would only
crash-loop the worker on the same offset. Such a record is quarantined instead: a copy cut to
fit (``agents.processor.fit``) goes to the dead-letter topic with ``percorso.error.class:
OutputTooLarge`` and the topic it was meant for, and the worker goes on. The limits
(``percorso.limits``) keep valid input from ever getting there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import (
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_LOG_APPEND_TIME,
    KafkaError,
    KafkaException,
)

from agents.processor import OUTPUT_TOO_LARGE, Outgoing, Position, fit, record_size
from percorso import clients
from percorso.config import Settings

log = logging.getLogger("percorso.agents")

QUEUE_MAX_MESSAGES = 200_000

Delivered = Callable[[str, int, int], None]  # topic, partition, offset
TOO_LARGE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})
LAST_RESORT_BYTES = 64 * 1024  # a dead letter refused at the configured limit is cut to this


class DeliveryFailed(Exception):
    """A record could not be delivered: offsets must not be committed past it."""


class OutputProducer:
    """Outputs and changelog records, produced without awaiting; ``flush`` before a commit.

    Delivery reports: one producer-wide callback counts failures (a record the broker refused or
    that timed out fails the next ``flush``). A per-record callback (``on_delivery``) is paid
    only where it is asked for: the checkpoint asks it for changelog records, whose offsets it
    needs, not for outputs. A per-record callback costs confluent-kafka about 20 us against 2-4
    for a plain produce (measured in docs/performance.md), which was a fifth of a worker's time.
    """

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        self._producer = clients.producer(
            settings,
            **{
                "linger.ms": 5,  # batches outputs and changelog records, bounds latency
                "queue.buffering.max.messages": QUEUE_MAX_MESSAGES,
                "on_delivery": self._report,
                **overrides,
            },
        )
        self.failed = 0
        self._failure: str | None = None
        self.sent = 0
        self.quarantined = 0  # records refused for their size, sent to the DLQ cut to fit
        self.dropped = 0  # ... whose dead letter was refused too
        self.position: Position | None = None  # the input being processed, where known
        self.on_quarantined: Callable[[], None] | None = None
        self._dlq = settings.topics.dlq
        self._dead_letter_limit = settings.limits.max_dead_letter_bytes
        self._refused: list[
            tuple[Outgoing, str, int | None]
        ] = []  # quarantined at the next produce
        # the delivery barrier (see the module's docstring)
        self.ordered = True  # delivery reports carry the create time we gave the records
        self._last_ts = 0  # the latest create time given to a record
        self._min_ts = 0  # no record is given an earlier one (one past the barrier's)
        self._barrier_ts = -1
        self._reported = 0  # delivery reports served, in all
        self._produced_le = 0  # records produced with a time at or before the barrier's
        self._reported_le = 0  # ... and their reports served
        self._unordered = 0  # reports since the barrier that carry another time than ours

    def __len__(self) -> int:
        """Records not yet delivered (or whose delivery report was not served yet)."""
        return len(self._producer)

    def _report(self, err: Any, msg: Any) -> None:
        self._reported += 1
        kind, ts = msg.timestamp()
        if kind == TIMESTAMP_CREATE_TIME:
            if ts <= self._barrier_ts:
                self._reported_le += 1
        else:
            self._unordered += 1
            if self.ordered and kind == TIMESTAMP_LOG_APPEND_TIME:
                self.ordered = False
                log.warning(
                    "%s stamps records with the broker's time (LogAppendTime): checkpoints "
                    "now pause processing until every record is delivered",
                    msg.topic(),
                )
        if err is not None:
            self._undelivered(err, msg, ts if kind == TIMESTAMP_CREATE_TIME else None)

    def _undelivered(self, err: Any, msg: Any, ts: int | None) -> None:
        if err.code() in TOO_LARGE:
            out = Outgoing(msg.topic(), msg.key(), msg.value(), list(msg.headers() or []))
            self._refused.append((out, str(err), ts))
        else:
            self._failed(msg.topic(), err)

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
        on_delivery: Delivered | None = None,
        timestamp: int | None = None,
    ) -> None:
        """Queue a record, without awaiting. Records of one partition are delivered in the order
        they are produced (idempotent producer). While librdkafka's queue is full, serves
        delivery reports, blocking for a few milliseconds at a time: back-pressure on the
        loop that produces. ``timestamp`` (the create time) is for a record that stands in for
        one produced earlier (a quarantined copy); others get the clock's."""
        if timestamp is None:
            timestamp = int(time.time() * 1000)
            if timestamp < self._min_ts:
                timestamp = self._min_ts
        if timestamp > self._last_ts:
            self._last_ts = timestamp
        kwargs: dict[str, Any] = {"key": key, "timestamp": timestamp}
        if headers:
            kwargs["headers"] = headers
        if partition is not None:
            kwargs["partition"] = partition
        if on_delivery is not None:

            def report(err: Any, msg: Any) -> None:
                self._report(err, msg)
                if err is None:
                    on_delivery(msg.topic(), msg.partition(), msg.offset())

            kwargs["on_delivery"] = report
        produce = self._producer.produce
        while True:
            try:
                produce(topic, value, **kwargs)
                break
            except BufferError:
                self._producer.poll(0.005)
            except KafkaException as exc:
                error = exc.args[0]
                if error.code() not in TOO_LARGE:
                    raise
                out = Outgoing(topic, key, value, list(headers or []))
                self._quarantine(out, str(error), self.position, timestamp)
                return
        self.sent += 1
        if timestamp <= self._barrier_ts:
            self._produced_le += 1
        if self._refused:
            self._quarantine_refused()

    def _quarantine_refused(self) -> None:
        refused, self._refused = self._refused, []
        for out, error, ts in refused:
            self._quarantine(out, error, None, ts)

    def _quarantine(
        self, out: Outgoing, error: str, position: Position | None, timestamp: int | None
    ) -> None:
        """Produce a record refused for its size to the dead-letter topic instead, cut to fit.
        A dead letter refused for its size is produced again cut to the dead-letter limit
        (headers added after it was made, such as a quarantine's stored state, may have grown
        it), then to ``LAST_RESORT_BYTES`` (the limit is set higher than this broker takes);
        refused again, it is dropped."""
        if out.topic == self._dlq:
            size = record_size(out)
            if size > self._dead_letter_limit:
                dead = fit(out, self._dead_letter_limit)
            elif size > LAST_RESORT_BYTES:
                dead = fit(out, LAST_RESORT_BYTES)
            else:
                self._drop(out.topic, error)
                return
            log.error("a dead letter was refused (%s): produced again cut to fit", error)
            self.produce(dead.topic, dead.key, dead.value, dead.headers, timestamp=timestamp)
            return
        log.error(
            "a record for %s (%s bytes) was refused (%s): quarantined to %s",
            out.topic,
            len(out.value or b""),
            error,
            self._dlq,
        )
        headers = [
            *out.headers,
            ("percorso.error.class", OUTPUT_TOO_LARGE.encode()),
            ("percorso.error.message", f"a record for {out.topic} was refused: {error}".encode()),
            ("percorso.output.topic", out.topic.encode()),
        ]
        if position is not None:
            headers += [
                ("percorso.source.topic", position.topic.encode()),
                ("percorso.source.partition", str(position.partition).encode()),
                ("percorso.source.offset", str(position.offset).encode()),
            ]
        dead = fit(Outgoing(self._dlq, out.key, out.value, headers), self._dead_letter_limit)
        self.quarantined += 1
        if self.on_quarantined is not None:
            self.on_quarantined()
        self.produce(dead.topic, dead.key, dead.value, dead.headers, timestamp=timestamp)

    def _drop(self, topic: str, error: str) -> None:
        """A dead letter refused even when cut to ``LAST_RESORT_BYTES``: there is nowhere left
        to put it, and stopping would refuse it again on every restart."""
        self.dropped += 1
        log.error("a dead letter for %s was refused (%s) and dropped", topic, error)

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
        on_delivery: Delivered | None = None,
    ) -> None:
        """``produce``, yielding to the event loop instead of blocking while the queue is
        full."""
        while len(self._producer) >= QUEUE_MAX_MESSAGES:
            self._producer.poll(0)
            await asyncio.sleep(0.005)
        self.produce(topic, key, value, headers, partition, on_delivery)

    def serve(self) -> int:
        """Run the delivery reports that are ready (without waiting)."""
        return int(self._producer.poll(0))

    def barrier(self) -> int:
        """Mark every record produced so far: ``delivered`` waits for them. Records produced
        after this get a later create time. One barrier at a time (the checkpoint's)."""
        self._barrier_ts = self._last_ts
        self._min_ts = self._last_ts + 1
        self._produced_le = self.sent
        self._reported_le = self._reported
        self._unordered = 0
        return self._barrier_ts

    async def delivered(self, barrier: int) -> None:
        """Wait until every record produced before ``barrier`` is delivered and its report
        served (and the quarantined copies of those refused for their size); raise if one was
        not. Records produced meanwhile are not waited for, unless the reports do not carry
        our create times (then: until the queue is empty)."""
        if barrier != self._barrier_ts:
            raise RuntimeError("a delivery barrier was set since this one")
        producer = self._producer
        while True:
            producer.poll(0)
            if self._refused:  # their dead letters are part of what this waits for
                self._quarantine_refused()
            if self._failure is not None:
                raise DeliveryFailed(self._failure)
            if self.ordered and not self._unordered:
                done = self._reported_le >= self._produced_le
            else:
                done = not len(producer)
            if done and not self._refused:
                return
            await asyncio.sleep(0.001)

    async def flush(self) -> None:
        """Wait until every record produced so far is delivered and its report served; raise
        if one was not (at shutdown, and in tests)."""
        while len(self._producer) or self._refused:
            self._producer.poll(0)
            if self._refused:  # their dead letters are part of what this flush waits for
                self._quarantine_refused()
            if len(self._producer):
                await asyncio.sleep(0.001)
        if self._failure is not None:
            raise DeliveryFailed(self._failure)

    def _failed(self, topic: str, err: Any) -> None:
        self.failed += 1
        message = f"a record for {topic} was not delivered: {err}"
        if self._failure is None:
            self._failure = message
        log.error(message)
