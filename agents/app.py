"""The Faust app and the partition loop that runs in it.

Faust provides the application: group membership and rebalancing, the RocksDB table store with
its changelog and recovery, the web server. Records do not go through Faust's streams: the
consumer loop hands each fetched batch of the input and repartition topics to ``Runtime``
(``agents.patches.handle_batches``), which applies it synchronously, a partition at a time
(``agents.partition``), to that partition's state transaction (``agents.store``), and makes it
durable in periodic checkpoints (``agents.checkpoint``), the only place offsets are committed.

Topics (co-partitioned, so Faust assigns partition *p* of each to the same worker):
- the input topic (``touchpoints``), read as raw bytes;
- ``<app_id>-repartition``: touchpoints whose Kafka key is not their customer id, re-keyed;
- the changelog of the ``state`` table (``rocksdb://``, compacted): customers' states and the
  per-partition deadline index (``agents.processor``).

Wake-ups (windows, quiet-hour releases, inactivity) fire from the same loop, between batches,
from the partition's deadline index, up to the *partition's safe time*: the wall clock (minus
``window_grace_ms``) when aiokafka's position is at the high watermark of both of the
partition's topics (every record fetched was applied), else the latest event time applied on the
partition. Under backlog, no window fires before the touchpoints that could cancel it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import faust
from mode import CrashingSupervisor
from prometheus_client import CollectorRegistry

from agents import patches
from agents.checkpoint import Checkpoint, Offsets
from agents.metrics import CONTENT_TYPE, Metrics, Tally
from agents.partition import PartitionProcessor, partition_for
from agents.processor import (
    OUTPUT_TOO_LARGE,
    STATE_TOO_LARGE,
    Outgoing,
    Processor,
    index_range,
    parse_index_key,
)
from agents.producer import OutputProducer
from agents.store import PartitionStore
from agents.stored import stages_of
from journeys.lifecycle import LifecycleEngine
from journeys.model import Catalog
from journeys.vocabulary import STANDARD_CHANNELS
from percorso.broker import BrokerProfile
from percorso.clients import Codecs
from percorso.config import Settings

log = logging.getLogger("percorso.agents")

RAW: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
OBSERVE_INTERVAL_S = 5.0
CENSUS_INTERVAL_S = 30.0
WAKE_UPS_PER_ROUND = 1_000  # deadline-index entries fired per partition without a yield

__all__ = ["Runtime", "RuntimeOptions", "now_ms", "partition_for"]


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class RuntimeOptions:
    partitions: int
    replication_factor: int = 1
    tick_interval_s: float = 1.0  # how often due wake-ups are looked for
    window_grace_ms: int = 0
    checkpoint_interval_s: float = 1.0
    checkpoint_max_dirty: int = 50_000  # changed keys that force a checkpoint sooner


class Runtime:
    """A Percorso worker: the Faust app, and the batch handler its consumer loop calls."""

    def __init__(
        self,
        settings: Settings,
        profile: BrokerProfile,
        catalog: Catalog,
        options: RuntimeOptions,
        codecs: Codecs | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.profile = profile
        self.options = options
        self.codecs = codecs or Codecs.from_settings(settings)
        self.processor = Processor(settings, LifecycleEngine(catalog), self.codecs)
        self.metrics = Metrics(registry, channels=STANDARD_CHANNELS | catalog.channels())
        self.app = self._create_app()
        self.output = OutputProducer(settings)
        self.output.on_quarantined = self.metrics.dead_letters.labels(OUTPUT_TOO_LARGE).inc
        n = options.partitions
        t = settings.topics
        self.repartition_name = f"{settings.app_id}-repartition"
        self.repartition_topic = self.app.topic(
            self.repartition_name, partitions=n, internal=True, **RAW
        )
        self.source = self.app.topic(t.touchpoints, self.repartition_name, partitions=n, **RAW)
        self.topics = frozenset((t.touchpoints, self.repartition_name))
        self.state = self._raw_table("state", n)
        self.rocksdb = patches.bound_rocksdb_memory(self.state, settings.rocksdb_memory_mb << 20)
        self.changelog_name = self.state.changelog_topic.get_topic_name()
        self.parts: dict[int, PartitionProcessor] = {}
        self.checkpoint = Checkpoint(self.output, self._commit, self.changelog_name)
        self._checkpointed_at = time.monotonic()
        self._checkpointing: asyncio.Future[None] | None = None  # the checkpoint under way
        self._fired_at = 0.0
        self.latest_event_ms = 0
        self.app.topics.add(self.source)
        patches.handle_batches(self.app, self)
        self.app.timer(interval=OBSERVE_INTERVAL_S, name="observe")(self._observe)
        self.app.timer(interval=CENSUS_INTERVAL_S, name="census")(self._census)
        self.app.on_partitions_revoked.connect(self._on_revoked)
        self.app.on_partitions_assigned.connect(self._on_assigned)
        self.assigned_once = False
        self._frozen = False
        self._register_views()

    # -- the app ----------------------------------------------------------------------------

    def _create_app(self) -> faust.App:
        patches.apply(
            self.profile.fetch_max_wait_ms,
            self.profile.fetch_min_bytes,
            self.settings.kafka_config() if self.profile.end_offsets_from_fetch else None,
            idempotent_producer=self.profile.supports_idempotent_aiokafka,
        )
        s, p = self.settings, self.profile
        if not s.bootstrap_servers:
            raise ValueError("no Kafka bootstrap servers")
        brokers = [f"kafka://{h.strip()}" for h in s.bootstrap_servers.split(",") if h.strip()]
        return faust.App(
            s.app_id,
            broker=brokers,
            broker_credentials=self._credentials(),
            store="rocksdb://",
            datadir=str(s.data_dir),
            topic_partitions=self.options.partitions,
            topic_replication_factor=self.options.replication_factor,
            processing_guarantee="at_least_once",
            agent_supervisor=CrashingSupervisor,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=p.session_timeout_s,
            broker_rebalance_timeout=p.rebalance_timeout_s,
            broker_heartbeat_interval=p.heartbeat_interval_s,
            recovery_consistency_check=p.recovery_consistency_check,
            consumer_group_instance_id=s.group_instance_id,
            producer_linger=0.005,  # 5 ms: batches outputs and changelog records
            web_enabled=True,
            web_port=s.web_port,
            web_host="0.0.0.0",
            web_in_thread=False,
        )

    def _raw_table(self, name: str, partitions: int) -> faust.Table:
        """A table of bytes. Faust derives table serializers from Record types only and falls
        back to JSON; they are set before the store and changelog topic are (lazily) made."""
        table = cast(
            faust.Table,
            self.app.Table(name, partitions=partitions, key_type=bytes, value_type=bytes),
        )
        table.key_serializer = "raw"
        table.value_serializer = "raw"
        return table

    def _credentials(self) -> Any:
        sec = self.settings.security
        if sec.protocol == "PLAINTEXT":
            return None
        import ssl

        context = (
            ssl.create_default_context(cafile=sec.ssl_cafile)
            if sec.protocol in ("SSL", "SASL_SSL")
            else None
        )
        if sec.protocol.startswith("SASL"):
            return faust.SASLCredentials(
                username=sec.sasl_username or "",
                password=sec.sasl_password or "",
                mechanism=sec.sasl_mechanism or "PLAIN",
                ssl_context=context,
            )
        return faust.SSLCredentials(context)

    # -- the partition loop (agents.patches.BatchHandler) ------------------------------------

    async def on_batches(self, batches: dict[Any, list[Any]]) -> None:
        """Apply fetched batches, a partition at a time, with no await until all are applied
        (the consumer loop checked that no seek happened since they were fetched)."""
        started = time.perf_counter()
        now = now_ms()
        tally = Tally()
        for tp, records in batches.items():
            part = self._part(tp.partition)
            expected = part.offsets.get(tp.topic)
            first = records[0].offset
            if expected is not None and first > expected:
                self._on_offset_jump(tp.topic, tp.partition, expected, first)
            end = patches.highwater(self.app, tp.topic, tp.partition)
            part.records(tp.topic, records, now, tally, end)
            tally.records += len(records)
            if part.latest_event_ms > self.latest_event_ms:
                self.latest_event_ms = part.latest_event_ms
        self.metrics.apply(tally, time.perf_counter() - started)
        self.metrics.last_processed.set(now / 1000)
        if self.latest_event_ms:
            self.metrics.last_event.set(self.latest_event_ms / 1000)
        dirty = sum(part.store.dirty for part in self.parts.values())
        if dirty >= self.options.checkpoint_max_dirty:
            await self._settle()  # a checkpoint that cannot keep up holds the records back
            self._start_checkpoint()
        elif self._checkpointing is not None and (
            self._checkpointing.done() or not self.output.ordered
        ):
            await self._settle()  # its failure stops the worker; or the queue must empty

    async def on_idle(self) -> None:
        """Between fetches: a checkpoint when its interval is up, and due wake-ups."""
        clock = time.monotonic()
        if self._checkpointing is not None and self._checkpointing.done():
            await self._settle()
        if clock - self._checkpointed_at >= self.options.checkpoint_interval_s:
            self._start_checkpoint()
        if clock - self._fired_at >= self.options.tick_interval_s and self._may_fire():
            self._fired_at = clock
            await self.fire_due(now_ms())

    async def before_wait_empty(self) -> None:
        """A rebalance or a shutdown: make everything applied durable first."""
        await self._settle()
        await self._checkpoint()

    def _part(self, partition: int) -> PartitionProcessor:
        part = self.parts.get(partition)
        if part is None:
            store = PartitionStore(
                partition, patches.partition_db(self.state, partition), self.processor.load
            )
            part = self.parts[partition] = PartitionProcessor(
                partition,
                store,
                self.processor,
                self._produce,
                input_topic=self.settings.topics.touchpoints,
                repartition_topic=self.repartition_name,
                partitions=self.options.partitions,
            )
        return part

    def _produce(self, out: Outgoing, partition: int | None) -> None:
        self.output.produce(out.topic, out.key, out.value, out.headers or None, partition)

    def _start_checkpoint(self) -> None:
        """Run a checkpoint beside the partition loop (none if one is under way): it seals
        the partitions' transactions when it starts, and records go on being applied to new
        ones while it awaits deliveries and the commit (``agents.checkpoint``)."""
        if self._checkpointing is None:
            self._checkpointed_at = time.monotonic()
            self._checkpointing = asyncio.ensure_future(self._checkpoint())

    async def _settle(self) -> None:
        """Wait for the checkpoint under way, if any; its failure is raised here, in the
        partition loop, which stops the worker (the records are processed again on
        restart)."""
        task, self._checkpointing = self._checkpointing, None
        if task is not None:
            await task

    async def _checkpoint(self) -> None:
        started = time.perf_counter()
        await self.checkpoint.run(list(self.parts.values()))
        self._checkpointed_at = time.monotonic()
        self.metrics.checkpoint.observe(time.perf_counter() - started)
        for part in self.parts.values():  # values the checkpoint dead-lettered for their size
            if part.state_too_large:
                self.metrics.dead_letters.labels(STATE_TOO_LARGE).inc(part.state_too_large)
                part.state_too_large = 0

    async def _commit(self, offsets: Offsets) -> bool:
        return await patches.commit(self.app, offsets)

    def _on_offset_jump(self, topic: str, partition: int, expected: int, offset: int) -> None:
        """Records between the last one applied and this batch did not reach the loop. That is
        a skip, unless the consumer was sought forward to its group's committed offset: a
        worker that started before its committed offset could be read (it reads from the
        beginning, ``seek_uncommitted_to_beginning``) repeats records, then moves on to where
        an earlier owner had committed them as processed."""
        committed = patches.committed_offset(self.app, topic, partition)
        if committed is not None and committed >= offset:
            log.info(
                "%s[%s]: resumed at the committed offset %s (offsets %s to %s were processed "
                "before it was committed)",
                topic,
                partition,
                committed,
                expected,
                offset - 1,
            )
            return
        self.metrics.offset_gaps.labels(
            "input" if topic == self.settings.topics.touchpoints else "repartition"
        ).inc()
        log.warning(
            "%s[%s]: offsets %s to %s were not seen (committed offset %s)",
            topic,
            partition,
            expected,
            offset - 1,
            committed,
        )

    # -- wake-ups ---------------------------------------------------------------------------

    def _may_fire(self) -> bool:
        return patches.flow_active(self.app) and self.ready()[0]

    def safe_time(self, partition: int, now: int) -> int | None:
        """Up to which event time this partition's wake-ups may fire (None: not yet). Caught up
        means: every record up to the high watermark of the last fetch response was applied,
        so the wall clock *as of that response* (minus the grace) is safe; otherwise the latest
        event time applied on the partition, and never later than the wall clock (minus the
        grace)."""
        fetched = now
        for topic in self.topics:
            position = patches.position(self.app, topic, partition)
            highwater = patches.highwater(self.app, topic, partition)
            at = patches.last_fetch_ms(self.app, topic, partition)
            if position is None or highwater is None or at is None or position < highwater:
                part = self.parts.get(partition)
                if part is None or part.watermark is None:
                    return None
                # never past the clock: event times ahead of it (allowed up to the skew) must
                # not fire a window before its deadline has come
                return min(part.watermark, now - self.options.window_grace_ms)
            fetched = min(fetched, at)
        return fetched - self.options.window_grace_ms

    async def fire_due(self, now: int) -> None:
        """Fire what is due on every owned partition, up to its safe time, in rounds of at
        most ``WAKE_UPS_PER_ROUND`` entries with the event loop free in between."""
        for partition in self._owned():
            while self._may_fire() and partition in self._owned():
                until = self.safe_time(partition, now)
                if until is None:
                    break
                started = time.perf_counter()
                tally = Tally()
                fired = self._part(partition).fire(until, now, WAKE_UPS_PER_ROUND, tally)
                if fired:
                    self.metrics.apply(tally, time.perf_counter() - started)
                await asyncio.sleep(0)
                if fired < WAKE_UPS_PER_ROUND:
                    break

    # -- gauges -----------------------------------------------------------------------------

    async def _guarded(self, name: str, job: Any) -> None:
        """Timers must not take the worker down: log, and the next round tries again."""
        try:
            await job()
        except Exception:
            log.warning("%s failed; retrying next round", name, exc_info=True)

    async def _observe(self) -> None:
        await self._guarded("observing", self._observe_once)

    async def _census(self) -> None:
        await self._guarded("the stage census", self._census_once)

    def _owned(self) -> list[int]:
        return sorted(
            tp.partition
            for tp in self.app.assignor.assigned_actives()
            if tp.topic == self.settings.topics.touchpoints
        )

    async def _observe_once(self) -> None:
        """Gauges SREs alert on: lag, overdue wake-ups, recovery, readiness."""
        m = self.metrics
        now = now_ms()
        owned = self._owned()
        m.assigned_partitions.set(len(owned))
        m.rocksdb_memory.set(self.rocksdb.usage())
        ready = self.ready()[0]
        m.ready.set(1 if ready else 0)
        if ready and not self._frozen:
            # the objects of start-up and recovery (faust's services, clients, tables) live
            # as long as the worker: the collector need not walk them again
            self._frozen = True
            gc.freeze()
        recovery = getattr(self.app.tables, "recovery", None)
        if recovery is not None:
            m.recovery_remaining.set(recovery.active_remaining_total())
        m.lag.clear()
        m.lag_seconds.clear()
        oldest: int | None = None
        for partition in owned:
            backlog = 0
            for topic in self.topics:
                highwater = patches.highwater(self.app, topic, partition)
                position = patches.position(self.app, topic, partition)
                if position is None:
                    position = patches.committed_offset(self.app, topic, partition) or 0
                if highwater is not None and highwater > position:
                    backlog += highwater - position
            m.lag.labels(str(partition)).set(backlog)
            part = self.parts.get(partition)
            watermark = part.watermark if part is not None else None
            behind = now - watermark if backlog and watermark else 0
            m.lag_seconds.labels(str(partition)).set(max(0, behind) / 1000)
            try:
                db = patches.partition_db(self.state, partition)
            except Exception:  # not open yet (recovery)
                continue
            high = index_range(partition, now)[1]
            for key in db.keys(from_key=self._index_start(partition)):
                if key < high:
                    due = parse_index_key(key)[1]
                    oldest = due if oldest is None else min(oldest, due)
                break
        grace = 2 * self.options.tick_interval_s * 1000 + self.options.window_grace_ms
        overdue = now - oldest - grace if oldest is not None else 0
        m.windows_overdue.set(max(0, overdue) / 1000)

    def _index_start(self, partition: int) -> bytes:
        """Where the gauges' scans of a partition's deadline index start: the store's scan
        start (below it: fired entries, or their tombstones), or the start of the range."""
        part = self.parts.get(partition)
        return part.store.scan_from if part is not None else index_range(partition, 0)[0]

    async def _census_once(self) -> None:
        """Customers per journey stage and pending wake-ups, recounted from the stored headers
        of the partitions this worker owns; yields to the event loop as it goes."""
        counts: dict[tuple[str, str], int] = {}
        pending = 0
        for partition in self._owned():
            try:
                db = patches.partition_db(self.state, partition)
            except Exception:
                continue
            for seen, (key, value) in enumerate(db.items(from_key=b"c:"), start=1):
                if not key.startswith(b"c:"):
                    break
                for pair in stages_of(value):
                    counts[pair] = counts.get(pair, 0) + 1
                if seen % 2000 == 0:
                    await asyncio.sleep(0)
            high = index_range(partition, 2**62)[1]
            for key in db.keys(from_key=self._index_start(partition)):
                if key >= high:
                    break
                pending += 1
                if pending % 20_000 == 0:
                    await asyncio.sleep(0)
        self.metrics.census(counts)
        self.metrics.windows_pending.set(pending)
        data = Path(self.settings.data_dir)
        self.metrics.state_bytes.set(
            sum(f.stat().st_size for f in data.rglob("*") if f.is_file()) if data.exists() else 0
        )

    async def _on_assigned(
        self, sender: Any, /, *args: Any, signal: Any = None, **kwargs: Any
    ) -> None:
        self.assigned_once = True
        for part in self.parts.values():  # partitions kept: recovery may have written entries
            part.store.rescan()
        self.metrics.rebalances.inc()

    def ready(self) -> tuple[bool, str]:
        """Ready: partitions assigned (possibly none, when there are more workers than
        partitions), no rebalance under way, table recovery finished."""
        if not self.assigned_once:
            return False, "waiting for a partition assignment"
        if self.app.rebalancing:
            return False, "rebalancing"
        recovery = getattr(self.app.tables, "recovery", None)
        if self.app.in_recovery or (recovery is not None and not recovery.completed.is_set()):
            return False, "recovering tables"
        return True, "ready"

    def _register_views(self) -> None:
        runtime = self

        async def healthz(view: Any, request: Any) -> Any:
            return view.json({"status": "alive"})

        async def readyz(view: Any, request: Any) -> Any:
            ok, why = runtime.ready()
            partitions = sorted(
                tp.partition
                for tp in runtime.app.assignor.assigned_actives()
                if tp.topic == runtime.settings.topics.touchpoints
            )
            return view.json({"status": why, "partitions": partitions}, status=200 if ok else 503)

        async def metrics(view: Any, request: Any) -> Any:
            # aiohttp refuses a charset inside content_type: set the header itself
            return view.bytes(runtime.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

        self.app.page("/metrics")(metrics)
        self.app.page("/healthz")(healthz)
        self.app.page("/readyz")(readyz)

    async def _on_revoked(
        self, sender: Any, /, *args: Any, signal: Any = None, **kwargs: Any
    ) -> None:
        """Faust revoked partitions (after ``before_wait_empty`` checkpointed them): their
        transactions are dropped, and a later owner commits them."""
        revoked = args[0] if args else kwargs.get("revoked", ())
        await self._settle()
        if any(part.store.dirty for part in self.parts.values()):
            await self._checkpoint()  # applied after the checkpoint of the rebalance
        gone = {tp.partition for tp in revoked}
        for partition in gone:
            self.parts.pop(partition, None)
        self.checkpoint.forget(gone)
