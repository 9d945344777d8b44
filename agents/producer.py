"""The worker's producer for what it writes while processing: outputs (actions, transitions,
dead letters) and the state table's changelog records.

It is confluent-kafka's producer (librdkafka), not Faust's aiokafka one: a record costs a few
microseconds of the event loop's thread instead of the futures, partitioner and batch
bookkeeping aiokafka runs there (about a fifth of a worker's time, measured in
docs/performance.md), and librdkafka batches, compresses and sends from its own threads.

Durability: Faust flushes its producer before every offset commit, on a rebalance and at
shutdown. ``attach`` makes that flush also wait for this producer, so an input offset is
committed only after everything its records caused was delivered. A record that cannot be
delivered (librdkafka has retried it until ``message.timeout.ms``) fails that flush, so the
commit does not happen and the worker stops: the records are processed again on restart,
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

Delivered = Callable[[str, int, int], None]  # topic, partition, offset


class DeliveryFailed(Exception):
    """A record could not be delivered: offsets must not be committed past it."""


class OutputProducer:
    def __init__(self, settings: Settings, **overrides: Any) -> None:
        self._producer = clients.producer(
            settings,
            **{
                "linger.ms": 5,  # batches outputs and changelog records, bounds latency
                "queue.buffering.max.messages": 200_000,
                **overrides,
            },
        )
        self.failed = 0
        self._failure: str | None = None
        self._sent = 0  # sequence number of the latest record sent
        self._outstanding: dict[int, None] = {}  # sequence numbers not yet reported, in order

    def __len__(self) -> int:
        """Records not yet delivered (or whose delivery report was not served yet)."""
        return len(self._producer)

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
        on_delivery: Delivered | None = None,
    ) -> None:
        """Queue a record. Records of one partition are delivered in the order they are sent
        (idempotent producer). Waits, serving delivery reports, while librdkafka's queue is
        full."""
        sequence = 0  # set once librdkafka has taken the record

        def report(err: Any, msg: Any) -> None:
            del self._outstanding[sequence]
            if err is not None:
                self._failed(topic, err)
            elif on_delivery is not None:
                on_delivery(msg.topic(), msg.partition(), msg.offset())

        kwargs: dict[str, Any] = {"key": key, "on_delivery": report}
        if headers:
            kwargs["headers"] = headers
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                self._producer.produce(topic, value, **kwargs)
                break
            except BufferError:
                self._producer.poll(0)
                await asyncio.sleep(0.005)
        self._sent += 1
        sequence = self._sent
        self._outstanding[sequence] = None

    def serve(self) -> int:
        """Run the delivery reports that are ready (without waiting)."""
        return int(self._producer.poll(0))

    async def flush(self) -> None:
        """Wait until every record sent before this call is delivered; raise if one was not.
        Records sent meanwhile (the agent keeps processing during a commit) are not waited
        for: under steady load there would always be some, and the flush would never end."""
        barrier = self._sent
        while self._outstanding and next(iter(self._outstanding)) <= barrier:
            self._producer.poll(0)
            await asyncio.sleep(0.001)
        if self._failure is not None:
            raise DeliveryFailed(self._failure)

    def attach(self, faust_producer: Any, then: Callable[[], None] | None = None) -> None:
        """Make the Faust producer's ``flush`` (awaited before every offset commit, on a
        rebalance and at shutdown) wait for this producer too, then call ``then``."""
        flush_faust = faust_producer.flush

        async def flush() -> None:
            await flush_faust()
            await self.flush()
            if then is not None:
                then()

        faust_producer.flush = flush

    def _failed(self, topic: str, err: Any) -> None:
        self.failed += 1
        message = f"a record for {topic} was not delivered: {err}"
        if self._failure is None:
            self._failure = message
        log.error(message)
