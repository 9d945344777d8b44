"""The commit protocol, in one place. Nothing else commits offsets or writes the state table.

A checkpoint makes everything the partitions processed up to its start durable, in this order
(each step starts only when the one before succeeded):

1. Each partition's live transaction is sealed with the offsets of the records it holds
   (``PartitionProcessor.seal``), and a delivery barrier is set on the producer. This step is
   synchronous; from here on, records keep being applied to fresh transactions, and their
   outputs are produced, while the checkpoint awaits the steps below.
2. The outputs of the sealed records (actions, transitions, dead letters, re-keyed touchpoints)
   were handed to the producer as the records were processed: every record produced before the
   barrier is delivered (``Producing.delivered``; records produced since are not waited for).
3. Each key of the sealed layers is produced to its changelog partition, once per layer (a
   customer value beyond the state limit is dead-lettered instead:
   ``PartitionProcessor.changes``), encoded in chunks with the event loop free in between.
4. A second barrier: every changelog record is delivered; their offsets are known.
5. The sealed offsets are committed: all records before them are applied, and everything they
   caused is durable.
6. Each partition's RocksDB is written in one batch, with the changelog offset it now reflects
   (from a thread: records go on meanwhile), and its sealed layers are dropped.

Why this order survives a crash anywhere: the state recorded in the changelog is never ahead of
the outputs (step 2 before 3), so a record processed again either finds its effect in the
restored state (a duplicate, recognised by the offset its customer's value says it applied
last: nothing is sent twice) or recomputes and re-sends outputs that may have been delivered
already (same deterministic ``action_id``: a duplicate for consumers to drop, never a new
action). Offsets are committed only when all of it is durable (5 after 4), and they are the
offsets of the sealed records, never of records applied since, so no record is skipped.
RocksDB is written last and only with delivered records, so the local store is always a prefix
of the changelog; after a crash between 4 and 6, table recovery reads the rest from the
changelog. A failure at any step leaves the sealed layers in place, so the next checkpoint
(or the one at a rebalance or shutdown) writes them again, before its own.

A record that cannot be delivered fails the barrier: the worker stops instead of committing
past it, and the record is processed again on restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from agents.partition import PartitionProcessor

log = logging.getLogger("percorso.agents")

Offsets = dict[tuple[str, int], int]  # (topic, partition) -> next offset to read
CHUNK = 500  # changelog records encoded and produced between two yields to the event loop


class Producing(Protocol):
    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
        on_delivery: Callable[[str, int, int], None] | None = None,
    ) -> None: ...

    def barrier(self) -> int:
        """Mark every record produced so far."""
        ...

    async def delivered(self, barrier: int) -> None:
        """Wait until every record produced before ``barrier`` is delivered; raise if one was
        not."""
        ...


class Checkpoint:
    def __init__(
        self,
        producer: Producing,
        commit: Callable[[Offsets], Awaitable[Any]],
        changelog_topic: str,
    ) -> None:
        self.producer = producer
        self.commit = commit
        self.changelog_topic = changelog_topic
        self.lock = asyncio.Lock()
        self.committed: Offsets = {}  # what this worker committed last, per partition
        self.runs = 0

    async def run(self, partitions: Iterable[PartitionProcessor]) -> None:
        async with self.lock:
            await self._run(list(partitions))

    async def _run(self, parts: list[PartitionProcessor]) -> None:
        producer = self.producer
        # 1. seal: what was applied so far is this checkpoint's; what follows is the next one's
        for part in parts:
            part.seal()
        sealed = [(part, len(part.store.sealed)) for part in parts]
        # 2. every output produced so far is delivered
        await producer.delivered(producer.barrier())
        # 3. the changed keys, once each, to their changelog partitions
        delivered: dict[int, int] = {}

        def on_delivery(topic: str, partition: int, offset: int) -> None:
            if offset > delivered.get(partition, -1):
                delivered[partition] = offset

        changes: list[tuple[PartitionProcessor, int, list[tuple[bytes, bytes | None]]]] = []
        produced = 0
        for part, layers in sealed:
            if layers:
                batch: list[tuple[bytes, bytes | None]] = []
                partition = part.partition
                for key, value in part.changes(layers):
                    batch.append((key, value))
                    producer.produce(self.changelog_topic, key, value, None, partition, on_delivery)
                    produced += 1
                    if produced % CHUNK == 0:
                        await asyncio.sleep(0)  # records go on meanwhile
                changes.append((part, layers, batch))
        # 4. every changelog record is delivered
        if changes:
            await producer.delivered(producer.barrier())
        # 5. the offsets of everything sealed
        offsets: Offsets = {}
        for part in parts:
            for topic, offset in part.sealed_offsets.items():
                tp = (topic, part.partition)
                if self.committed.get(tp) != offset:
                    offsets[tp] = offset
        if offsets:
            await self.commit(offsets)
            self.committed.update(offsets)
        # 6. the local stores, each in one batch with its changelog offset
        for part, layers, batch in changes:
            await part.store.write(batch, delivered.get(part.partition), layers)
        self.runs += 1

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions this worker no longer owns: a later owner commits them."""
        gone = set(partitions)
        self.committed = {tp: o for tp, o in self.committed.items() if tp[1] not in gone}
