"""An in-process driver for the runtime, in the spirit of Kafka Streams' TopologyTestDriver: the
partition loop (``agents.partition``), the state transactions (``agents.store``, on real RocksDB
files), the checkpoint (``agents.checkpoint``) and the wake-ups of one worker, with the topics
kept in memory and the clock in the caller's hand. Ordering and crash-at-step-N cases run in
milliseconds, without a broker.

What stands in for Kafka here is deliberately simple and strict:

- ``Log``: topics as lists of records per partition; offsets are list indexes.
- ``LogProducer``: records are *in flight* until a wait for a delivery barrier (``delivered``)
  or ``flush`` delivers them, in order, to the log; ``crash()`` loses whatever is still in
  flight. ``fail_at`` makes the n-th call of a kind (``produce`` or ``deliver``: a wait for a
  barrier) raise, for failure injection.
- Committed offsets are a dict; ``fail_commit`` makes a commit raise.
- A restart reopens the partitions' RocksDB folders and, like faust's table recovery, applies
  the changelog records after the offset each database says it reflects.

It is a test aid, shipped with the package so that journey authors' and operators' tests can use
it too; the runtime never imports it.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rocksdict import Options, Rdict

from agents.checkpoint import Checkpoint, Offsets
from agents.metrics import Tally
from agents.partition import PartitionProcessor, partition_for
from agents.processor import Outgoing, Processor
from agents.producer import DeliveryFailed
from agents.store import PERSISTED_OFFSET_KEY, PartitionStore
from journeys.lifecycle import LifecycleEngine
from journeys.model import Catalog
from percorso.clients import Codecs
from percorso.codec import LocalSchemaRegistry
from percorso.config import Settings


class InjectedFailure(RuntimeError):
    """A failure the test asked for."""


@dataclass(frozen=True)
class Record:
    """A record in the log (what the partition loop reads of aiokafka's ``ConsumerRecord``)."""

    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class Log:
    """Topics in memory: ``(topic, partition) -> records``."""

    def __init__(self) -> None:
        self.partitions: dict[tuple[str, int], list[Record]] = {}

    def append(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> int:
        records = self.partitions.setdefault((topic, partition), [])
        records.append(Record(len(records), key, value, list(headers or [])))
        return len(records) - 1

    def read(self, topic: str, partition: int, start: int = 0) -> list[Record]:
        return self.partitions.get((topic, partition), [])[start:]

    def end(self, topic: str, partition: int) -> int:
        return len(self.partitions.get((topic, partition), []))

    def topic(self, topic: str) -> list[Record]:
        return [
            r for (t, _), records in sorted(self.partitions.items()) if t == topic for r in records
        ]


class LogProducer:
    """The producer: in flight until flushed, then in the log (``agents.checkpoint.Producing``)."""

    def __init__(self, log: Log, partitions: int) -> None:
        self.log = log
        self.partitions = partitions
        self.in_flight: list[tuple[Any, ...]] = []
        self.produced = 0  # records produced, in all: a barrier is a count of them
        self.calls: Counter[str] = Counter()
        self.fail_at: dict[str, int] = {}  # kind -> the call number that raises
        self.deliver_before_failing = 0  # a failing wait first delivers this many records
        self.latency = 0  # event-loop turns a wait for a barrier takes (records go on meanwhile)

    def _maybe_fail(self, kind: str) -> None:
        self.calls[kind] += 1
        if self.fail_at.get(kind) == self.calls[kind]:
            raise InjectedFailure(f"{kind} #{self.calls[kind]}")

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
        on_delivery: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self._maybe_fail("produce")
        if partition is None:
            partition = partition_for(key.decode(), self.partitions) if key else 0
        self.in_flight.append((topic, partition, key, value, headers, on_delivery))
        self.produced += 1

    def barrier(self) -> int:
        return self.produced

    async def delivered(self, barrier: int) -> None:
        """Deliver the records produced before ``barrier`` (those in flight are in order, so
        they are the first ones); not those produced after it."""
        for _ in range(self.latency):
            await asyncio.sleep(0)
        before = len(self.in_flight) - (self.produced - barrier)
        try:
            self._maybe_fail("deliver")
        except InjectedFailure:
            self._deliver(min(before, self.deliver_before_failing))
            raise DeliveryFailed("injected") from None
        self._deliver(before)

    async def flush(self) -> None:
        self._deliver(len(self.in_flight))

    def _deliver(self, count: int) -> None:
        batch, self.in_flight = self.in_flight[:count], self.in_flight[count:]
        for topic, partition, key, value, headers, on_delivery in batch:
            offset = self.log.append(topic, partition, key, value, headers)
            if on_delivery is not None:
                on_delivery(topic, partition, offset)

    def crash(self) -> None:
        self.in_flight.clear()


class Driver:
    """One worker owning every partition of the input, driven by hand."""

    def __init__(
        self,
        catalog: Catalog,
        data_dir: Path,
        partitions: int = 4,
        settings: Settings | None = None,
        window_grace_ms: int = 0,
    ) -> None:
        self.settings = settings or Settings()
        self.catalog = catalog
        self.data_dir = data_dir
        self.partitions = partitions
        self.window_grace_ms = window_grace_ms
        self.codecs = Codecs(LocalSchemaRegistry())
        self.log = Log()
        self.committed: Offsets = {}
        self.fail_commit_at: int | None = None
        self.commits = 0
        self.input = self.settings.topics.touchpoints
        self.repartition = f"{self.settings.app_id}-repartition"
        self.changelog = f"{self.settings.app_id}-state-changelog"
        self.tally = Tally()
        self.producer = LogProducer(self.log, partitions)
        self._dbs: dict[int, Rdict] = {}
        self.start()

    # -- a worker's life --------------------------------------------------------------------

    def start(self) -> None:
        """Start (or restart) the worker: open and recover the stores, read from the
        committed offsets."""
        self.processor = Processor(self.settings, LifecycleEngine(self.catalog), self.codecs)
        self.checkpoint = Checkpoint(self.producer, self._commit, self.changelog)
        self.checkpoint.committed = dict(self.committed)
        self.positions: dict[tuple[str, int], int] = dict(self.committed)
        self.parts: dict[int, PartitionProcessor] = {}
        for partition in range(self.partitions):
            db = self._open(partition)
            self._recover(partition, db)
            store = PartitionStore(partition, db, self.processor.load)
            self.parts[partition] = PartitionProcessor(
                partition,
                store,
                self.processor,
                self._produce,
                input_topic=self.input,
                repartition_topic=self.repartition,
                partitions=self.partitions,
            )

    def crash(self, lose_local_state: bool = False) -> None:
        """SIGKILL: everything in memory and in flight is gone; the log and committed offsets
        stay, and so do the RocksDB folders unless ``lose_local_state``."""
        self.producer.crash()
        self.producer.fail_at.clear()
        self.fail_commit_at = None
        for db in self._dbs.values():
            db.close()
        self._dbs.clear()
        if lose_local_state:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        self.start()

    def _open(self, partition: int) -> Rdict:
        path = self.data_dir / f"p{partition}"
        path.parent.mkdir(parents=True, exist_ok=True)
        db = self._dbs[partition] = Rdict(str(path), Options(raw_mode=True))
        return db

    def _recover(self, partition: int, db: Rdict) -> None:
        """faust's table recovery: the changelog after the offset the database reflects."""
        raw = db.get(PERSISTED_OFFSET_KEY)
        start = int(raw) + 1 if raw is not None else 0
        for record in self.log.read(self.changelog, partition, start):
            if record.key is None:
                continue
            if record.value is None:
                db.delete(record.key)
            else:
                db.put(record.key, record.value)
            db.put(PERSISTED_OFFSET_KEY, str(record.offset).encode())

    def _produce(self, out: Outgoing, partition: int | None) -> None:
        self.producer.produce(out.topic, out.key, out.value, out.headers or None, partition)

    async def _commit(self, offsets: Offsets) -> bool:
        self.commits += 1
        if self.fail_commit_at == self.commits:
            raise InjectedFailure(f"commit #{self.commits}")
        self.committed.update(offsets)
        return True

    # -- input ------------------------------------------------------------------------------

    def send(self, touchpoints: Iterable[dict[str, Any]], keyed: bool = True) -> None:
        """Produce touchpoints to the input topic, keyed by customer id (``keyed``) or with no
        key, all to partition 0 (so the worker re-keys them through the repartition topic, and
        each customer's order is kept)."""
        for tp in touchpoints:
            value = self.codecs.touchpoint.encode(tp)
            if keyed:
                key = tp["customer_id"].encode()
                self.log.append(
                    self.input, partition_for(tp["customer_id"], self.partitions), key, value
                )
            else:
                self.log.append(self.input, 0, None, value)

    def send_raw(self, partition: int, key: bytes | None, value: bytes | None) -> None:
        self.log.append(self.input, partition, key, value)

    # -- the loop ---------------------------------------------------------------------------

    def poll(self, now: int, max_records: int = 100) -> int:
        """One fetch round: up to ``max_records`` records of every partition of both topics,
        applied a batch at a time. Returns how many records were applied."""
        applied = 0
        for topic in (self.input, self.repartition):
            for partition, part in self.parts.items():
                start = self.positions.get((topic, partition), 0)
                batch = self.log.read(topic, partition, start)[:max_records]
                if batch:
                    end = self.log.end(topic, partition)
                    part.records(topic, batch, now, self.tally, end)
                    self.positions[(topic, partition)] = batch[-1].offset + 1
                    applied += len(batch)
        return applied

    def caught_up(self, partition: int) -> bool:
        return all(
            self.positions.get((topic, partition), 0) >= self.log.end(topic, partition)
            for topic in (self.input, self.repartition)
        )

    def safe_time(self, partition: int, now: int) -> int | None:
        if self.caught_up(partition):
            return now - self.window_grace_ms
        watermark = self.parts[partition].watermark
        return None if watermark is None else min(watermark, now - self.window_grace_ms)

    def fire(self, now: int, limit: int = 20_000) -> int:
        fired = 0
        for partition, part in self.parts.items():
            until = self.safe_time(partition, now)
            if until is not None:
                fired += part.fire(until, now, limit, self.tally)
        return fired

    async def checkpoint_now(self) -> None:
        await self.checkpoint.run(self.parts.values())

    async def run(self, now: int, max_records: int = 100, checkpoint_every: int = 1) -> None:
        """Rounds of poll (and fire) until every record is applied (the repartition topic only
        fills once the producer delivers, at checkpoints), checkpointing every
        ``checkpoint_every`` rounds and at the end."""
        rounds = 0
        while True:
            applied = self.poll(now, max_records)
            self.fire(now)
            rounds += 1
            if rounds % checkpoint_every == 0 or not applied:
                await self.checkpoint_now()
            if not applied and all(self.caught_up(p) for p in self.parts):
                return

    async def run_overlapped(
        self, now: int, max_records: int = 100, rounds: int | None = None
    ) -> int:
        """Like ``run``, but the way the worker does it: each checkpoint runs as a task while
        rounds of poll and fire go on, one round per event-loop turn (set
        ``producer.latency`` so that its waits take a few turns), until everything is applied
        and durable, or for ``rounds`` rounds (then waiting for the checkpoint under way).
        Returns how many records were applied while a checkpoint was under way. A
        checkpoint's failure is raised."""
        overlapped = 0
        task: asyncio.Future[None] | None = None
        for _ in itertools.count() if rounds is None else range(rounds):
            applied = self.poll(now, max_records)
            self.fire(now)
            if task is not None:
                overlapped += applied
                if task.done():
                    await task
                    task = None
            if task is None:
                done = not applied and all(self.caught_up(p) for p in self.parts)
                dirty = any(part.store.dirty for part in self.parts.values())
                if done and not dirty and not self.producer.in_flight:
                    return overlapped
                task = asyncio.ensure_future(self.checkpoint_now())
            await asyncio.sleep(0)
        if task is not None:
            await task
        return overlapped

    # -- what came out ----------------------------------------------------------------------

    def states(self) -> dict[str, Any]:
        """Every customer's state as stored (RocksDB plus this interval's changes)."""
        out: dict[str, Any] = {}
        for part in self.parts.values():
            keys = [k for k in part.store.db.keys(from_key=b"c:") if k.startswith(b"c:")]
            pending = [layer.customers for layer in part.store.sealed] + [part.store.customers]
            for customers in pending:
                keys += [k for k in customers if k not in keys]
            for key in keys:
                customer = part.store.customer(key)
                if customer is not None:
                    out[key[2:].decode()] = customer.state
        return out

    def changelog_states(self) -> dict[str, Any]:
        """The latest state of every customer in the changelog (what a new worker restores)."""
        latest: dict[bytes, bytes | None] = {}
        for partition in range(self.partitions):
            for record in self.log.read(self.changelog, partition):
                if record.key is not None and record.key.startswith(b"c:"):
                    latest[record.key] = record.value
        return {
            k[2:].decode(): self.processor.load(v).state for k, v in latest.items() if v is not None
        }

    def actions(self) -> list[dict[str, Any]]:
        prefix = "percorso.actions."
        return [
            self.codecs.action.decode(r.value)
            for (topic, _), records in sorted(self.log.partitions.items())
            if topic.startswith(prefix)
            for r in records
        ]

    def dead_letters(self) -> list[Record]:
        return self.log.topic(self.settings.topics.dlq)
