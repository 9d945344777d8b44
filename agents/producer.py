"""The worker's producer for what it writes while processing: outputs (actions, transitions,
dead letters) and the state table's changelog records.

It is confluent-kafka's producer (librdkafka), not Faust's aiokafka one: a record costs a few
microseconds of the event loop's thread instead of the futures, partitioner and batch
bookkeeping aiokafka runs there (about a fifth of a worker's time, measured in
docs/performance.md), and librdkafka batches, compresses and sends from its own threads.

Durability: the checkpoint (``agents.checkpoint``) flushes it before it commits offsets, so an
input offset is committed only after everything its records caused was delivered. A record that
cannot be delivered (librdkafka has retried it until ``message.timeout.ms``) fails that flush, so
the commit does not happen and the worker stops: the records are processed again on restart,
instead of being lost quietly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from percorso import clients
from percorso.config import Settings

log = logging.getLogger("percorso.agents")

QUEUE_MAX_MESSAGES = 200_000

Delivered = Callable[[str, int, int], None]  # topic, partition, offset


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

    def __len__(self) -> int:
        """Records not yet delivered (or whose delivery report was not served yet)."""
        return len(self._producer)

    def _report(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failed(msg.topic(), err)

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
        on_delivery: Delivered | None = None,
    ) -> None:
        """Queue a record, without awaiting. Records of one partition are delivered in the order
        they are produced (idempotent producer). While librdkafka's queue is full, serves
        delivery reports, blocking for a few milliseconds at a time: back-pressure on the
        loop that produces."""
        kwargs: dict[str, Any] = {"key": key}
        if headers:
            kwargs["headers"] = headers
        if partition is not None:
            kwargs["partition"] = partition
        if on_delivery is not None:

            def report(err: Any, msg: Any) -> None:
                if err is not None:
                    self._failed(topic, err)
                else:
                    on_delivery(msg.topic(), msg.partition(), msg.offset())

            kwargs["on_delivery"] = report
        produce = self._producer.produce
        while True:
            try:
                produce(topic, value, **kwargs)
                break
            except BufferError:
                self._producer.poll(0.005)
        self.sent += 1

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

    async def flush(self) -> None:
        """Wait until every record produced so far is delivered and its report served; raise
        if one was not. The runtime produces only from the partition loop, which awaits its
        checkpoint, so nothing is produced during a flush and this ends."""
        while len(self._producer):
            self._producer.poll(0)
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
