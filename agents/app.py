"""The Faust app: one stateful agent, one RocksDB table, timers. Thin by design: every
decision is made by ``agents.processor.Processor`` and the journey engine.

Topics (all co-partitioned, so Faust assigns partition *p* of each to the same worker):
- the input topic (``touchpoints``), read as raw bytes;
- ``<app_id>-repartition``: touchpoints whose Kafka key is not their customer id, re-keyed;
- ``<app_id>-ticks``: wake-up calls, one per owned partition when something there may be due.

One table (``rocksdb://``, changelogged, compacted), ``state``: customers' states, the
per-partition deadline index and tick pointers (see ``agents.processor``), all in one changelog
so that what survives a crash is always a prefix of what was written. It is written only while
a record of the same partition is processed, straight to that partition's RocksDB and changelog
(``_put``), and outputs are queued on the same producer buffer as the changelog records; Faust
flushes that buffer before it commits offsets. Outputs are kept in the customer's stored value
until their source offset is committed (``agents.outbox``), and re-sent if that message is
processed again after a crash.

Why ticks are decided when processed, not when sent: Faust merges the three topics into one
stream without ordering between them, so a tick may overtake touchpoints of the same partition
that are already buffered. A tick therefore fires what is due up to the *partition's safe time*:
the wall clock (minus ``window_grace_ms``) when every touchpoint of the partition up to its
high watermark has been processed, else the latest event time processed on the partition. Under
backlog, no window fires before the touchpoints that could cancel it have been processed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import faust
from aiokafka.partitioner import murmur2
from faust.types import TP
from mode import CrashingSupervisor
from prometheus_client import CollectorRegistry

from agents import patches
from agents.metrics import CONTENT_TYPE, Metrics
from agents.outbox import Outgoing, Position, outputs_for
from agents.processor import (
    CORRUPT_STATE,
    LATE,
    OUTPUT_TOO_LARGE,
    Applied,
    Processor,
    Quarantined,
    Rejected,
    customer_key,
    index_range,
    parse_index_key,
    stages_of,
    tick_pointer_prefix,
    unpack,
)
from agents.producer import OutputProducer
from journeys.engine import Engine, Tick
from journeys.model import Catalog
from journeys.vocabulary import STANDARD_CHANNELS
from percorso.broker import BrokerProfile
from percorso.clients import Codecs
from percorso.config import Settings

log = logging.getLogger("percorso.agents")

RAW: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
TICK_CHUNK = 500  # customers per tick pointer
OBSERVE_INTERVAL_S = 5.0
PARTITION_SEND_ATTEMPTS = 10
CENSUS_INTERVAL_S = 30.0
SERVE_EVERY = 100  # records between runs of the output producer's delivery reports


def now_ms() -> int:
    return int(time.time() * 1000)


def partition_for(customer_id: str, partitions: int) -> int:
    """The partition of a customer id: murmur2, like the Java client (and Faust) default."""
    return (murmur2(customer_id.encode()) & 0x7FFFFFFF) % partitions


@dataclass
class RuntimeOptions:
    partitions: int
    replication_factor: int = 1
    tick_interval_s: float = 1.0
    window_grace_ms: int = 0
    tick_resend_s: float = 10.0


@dataclass
class PartitionProgress:
    """What this worker has processed of one partition since it was assigned."""

    next_offset: dict[str, int] = field(default_factory=dict)  # topic -> next offset
    watermark: int | None = None  # latest event time processed
    tick_sent_at: float | None = None
    tick_pointers: list[tuple[int, bytes]] = field(default_factory=list)  # (offset, key)


class Runtime:
    """A Percorso worker: the Faust app and the glue between it and the Processor."""

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
        self.processor = Processor(settings, Engine(catalog), self.codecs)
        self.progress: dict[int, PartitionProgress] = {}
        self.latest_event_ms = 0
        self._committed_cache: dict[tuple[str, int], int] = {}
        self._committed_at = 0.0
        self.metrics = Metrics(registry, channels=STANDARD_CHANNELS | catalog.channels())
        self.app = self._create_app()
        self.output = OutputProducer(settings)
        self.output.on_quarantined = self.metrics.dead_letters.labels(OUTPUT_TOO_LARGE).inc
        self.output.attach(self.app.producer, then=self._store_persisted)
        self._persisted: dict[int, int] = {}  # changelog partition -> offset delivered
        n = options.partitions
        t = settings.topics
        self.repartition_name = f"{settings.app_id}-repartition"
        self.ticks_name = f"{settings.app_id}-ticks"
        self.input_topic = self.app.topic(t.touchpoints, partitions=n, **RAW)
        self.repartition_topic = self.app.topic(
            self.repartition_name, partitions=n, internal=True, **RAW
        )
        self.ticks_topic = self.app.topic(
            self.ticks_name, partitions=n, internal=True, retention=3600.0, **RAW
        )
        self.source = self.app.topic(
            t.touchpoints, self.repartition_name, self.ticks_name, partitions=n, **RAW
        )
        self.state = self._raw_table("state", n)
        self.changelog_name = self.state.changelog_topic.get_topic_name()
        self._out: dict[str, faust.TopicT] = {}
        self.app.agent(self.source, name="orchestrate", concurrency=1)(self._orchestrate)
        self.app.timer(interval=options.tick_interval_s, name="schedule_ticks")(
            self._schedule_ticks
        )
        self.app.timer(interval=OBSERVE_INTERVAL_S, name="observe")(self._observe)
        self.app.timer(interval=CENSUS_INTERVAL_S, name="census")(self._census)
        self.app.on_partitions_revoked.connect(self._on_revoked)
        self.app.on_partitions_assigned.connect(self._on_assigned)
        self.assigned_once = False
        self._register_views()

    # -- the app ----------------------------------------------------------------------------

    def _create_app(self) -> faust.App:
        patches.apply(
            self.profile.fetch_max_wait_ms,
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

    def _topic(self, name: str) -> faust.TopicT:
        topic = self._out.get(name)
        if topic is None:
            topic = self._out[name] = self.app.topic(name, **RAW)
        return topic

    async def _send(self, out: Outgoing) -> None:
        await self.output.send(out.topic, out.key, out.value, out.headers or None)

    async def _send_to_partition(
        self, topic: faust.TopicT, partition: int, key: bytes, value: bytes, headers: Any = None
    ) -> bool:
        """Send to an explicit partition. A topic created moments ago may not be in the
        producer's metadata yet, and aiokafka then asserts: refresh it and retry."""
        for attempt in range(PARTITION_SEND_ATTEMPTS):
            try:
                await topic.send(key=key, value=value, partition=partition, headers=headers)
                return True
            except AssertionError:
                ensure = getattr(self.app.producer, "_ensure_producer", None)
                if ensure is not None:
                    await ensure().client.force_metadata_update()
                await asyncio.sleep(0.1 * (attempt + 1))
        return False

    async def _send_all(self, outgoing: Iterable[Outgoing]) -> None:
        for out in outgoing:
            await self._send(out)

    # -- the state table, by partition ------------------------------------------------------

    def _get(self, partition: int, key: bytes) -> bytes | None:
        return cast(bytes | None, self._partition_db(partition).get(key))

    async def _put(self, partition: int, key: bytes, value: bytes | None) -> None:
        """Write (None: delete) a key of the partition being processed: its changelog record,
        then the local RocksDB. What faust's ``Table.__setitem__`` does, without its per-write
        layers (the current-event lookup, the key index, sensors, the producer buffer). Outputs
        and changelog records go through one producer (``agents.producer``), in the order they
        are made; the delivery reports record the changelog offset in RocksDB, as faust does,
        so a restart reads only the changelog's tail."""
        await self.output.send(
            self.changelog_name,
            key,
            value,
            partition=partition,
            on_delivery=self._on_changelog_sent,
        )
        db = self._partition_db(partition)
        if value is None:
            db.delete(key)
        else:
            db.put(key, value)

    def _on_changelog_sent(self, topic: str, partition: int, offset: int) -> None:
        if offset > self._persisted.get(partition, -1):
            self._persisted[partition] = offset

    def _serve_deliveries(self) -> None:
        """Run ready delivery reports (every ``SERVE_EVERY`` records, on the observe timer and
        in every flush) and store the changelog offsets they confirm."""
        self.output.serve()
        self._store_persisted()

    def _store_persisted(self) -> None:
        """One RocksDB write per partition, not per record. An offset stored late only makes a
        restart re-read a few changelog records it already has."""
        if self._persisted:
            store = self.state.data
            open_dbs = getattr(store, "_dbs", {})
            for partition, offset in self._persisted.items():
                if partition in open_dbs:  # not one revoked since (and closed)
                    store.set_persisted_offset(TP(self.changelog_name, partition), offset)
            self._persisted.clear()

    # -- the agent --------------------------------------------------------------------------

    async def _orchestrate(self, stream: faust.StreamT) -> None:
        processing = self.metrics.processing
        served = 0
        async for event in stream.events():
            started = time.perf_counter()
            message = event.message
            now = now_ms()
            self.output.position = Position(message.topic, message.partition, message.offset)
            if message.topic == self.ticks_name:
                await self._on_tick(message, now)
            else:
                await self._on_touchpoint(message, now)
            served += 1
            if served == SERVE_EVERY:
                served = 0
                self._serve_deliveries()
            processing.observe(time.perf_counter() - started)
            self.metrics.last_processed.set(now / 1000)

    def _progress(self, partition: int) -> PartitionProgress:
        progress = self.progress.get(partition)
        if progress is None:
            progress = self.progress[partition] = PartitionProgress()
        return progress

    def _committed(self) -> dict[tuple[str, int], int]:
        """Committed offsets by (topic, partition): what can never be read again. Offsets
        only grow, so a copy a few hundred milliseconds old is safe (it prunes less)."""
        now = time.monotonic()
        if now - self._committed_at > 0.5:
            committed = getattr(self.app.consumer, "_committed_offset", {})
            self._committed_cache = {
                (tp.topic, tp.partition): offset
                for tp, offset in committed.items()
                if offset is not None
            }
            self._committed_at = now
        return self._committed_cache

    async def _on_touchpoint(self, message: Any, now: int) -> None:
        progress = self._progress(message.partition)
        expected = progress.next_offset.get(message.topic)
        if expected is not None and message.offset > expected:
            self._on_offset_jump(message, expected)
        progress.next_offset[message.topic] = message.offset + 1
        source = Position(message.topic, message.partition, message.offset)
        metrics = self.metrics
        try:
            touchpoint = self.processor.decode(message.value, now, message.headers)
        except Rejected as rejected:
            metrics.touchpoints.labels("other", "rejected").inc()
            await self._dead_letter(message, source, rejected.error_class, str(rejected))
            return
        channel = touchpoint["channel"]
        customer_id = touchpoint["customer_id"]
        if message.topic == self.settings.topics.touchpoints and (
            message.key is None or message.key != customer_id.encode()
        ):
            partition = partition_for(customer_id, self.options.partitions)
            sent = await self._send_to_partition(
                self.repartition_topic,
                partition,
                customer_id.encode(),
                message.value,
                list(message.headers or []) or None,
            )
            if not sent:  # crash rather than lose the touchpoint: it is reprocessed
                raise RuntimeError(f"cannot send to {self.repartition_name}[{partition}]")
            metrics.touchpoint(channel, "repartitioned")
            return
        t = touchpoint["occurred_at"]
        progress.watermark = t if progress.watermark is None else max(progress.watermark, t)
        key = customer_key(customer_id)
        try:
            applied = self.processor.apply(
                self._get(message.partition, key), touchpoint, now, source, self._committed()
            )
        except Quarantined as bad:
            await self._quarantine(message.partition, key, bad, source, message)
            metrics.touchpoints.labels(channel, "quarantined").inc()
            return
        await self._send_all(applied.resend)  # a crash lost them last time: send again
        outcome = applied.step.outcome
        metrics.touchpoint(channel, outcome)
        if outcome == "late":
            await self._dead_letter(
                message,
                source,
                LATE,
                f"event time {t} is older than the customer's latest "
                f"event time minus the allowed lateness",
            )
            return
        if t > self.latest_event_ms:
            self.latest_event_ms = t
            metrics.last_event.set(t / 1000)
        # A duplicate is stored again too: after a crash the local RocksDB may be ahead of the
        # changelog, and this write is what brings the changelog up to date.
        await self._store(message.partition, key, applied, now, touchpoint)

    async def _quarantine(
        self,
        partition: int,
        key: bytes,
        bad: Quarantined,
        source: Position,
        message: Any | None = None,
    ) -> None:
        """Dead-letter what cannot be applied to one customer, with the stored bytes in a
        header, and go on. A corrupt stored value is removed as well: kept, it would refuse
        every later touchpoint of that customer; removed, the next one starts afresh, and the
        bytes are in the dead-letter topic for an operator. After an engine error the state is
        kept: the next input may well apply."""
        log.error(
            "%s: %s[%s]@%s for %s: %s",
            bad.error_class,
            source.topic,
            source.partition,
            source.offset,
            key[2:].decode(errors="replace"),
            bad,
        )
        out = self.processor.dead_letter(
            message.key if message is not None else key,
            message.value if message is not None else bad.stored,
            bad.error_class,
            str(bad),
            source,
        )
        if message is not None and bad.stored is not None:
            out.headers.append(("percorso.error.stored_state", bad.stored))
        await self._send(out)
        self.metrics.dead_letters.labels(bad.error_class).inc()
        if bad.error_class == CORRUPT_STATE:
            await self._put(partition, key, None)

    def _on_offset_jump(self, message: Any, expected: int) -> None:
        """Records between the last one seen and this one did not reach the agent. That is a
        skip, unless the consumer was sought forward to its group's committed offset: a worker
        that started before its committed offset could be read (it reads from the beginning,
        ``seek_uncommitted_to_beginning``) repeats records, then moves on to where an earlier
        owner had committed them as processed (seen on Apache Kafka after a SIGKILL)."""
        committed = getattr(self.app.consumer, "_committed_offset", {}).get(
            TP(message.topic, message.partition)
        )
        if committed is not None and committed >= message.offset:
            log.info(
                "%s[%s]: resumed at the committed offset %s (offsets %s to %s were processed "
                "before it was committed)",
                message.topic,
                message.partition,
                committed,
                expected,
                message.offset - 1,
            )
            return
        self.metrics.offset_gaps.labels(
            "input" if message.topic == self.settings.topics.touchpoints else "repartition"
        ).inc()
        log.warning(
            "%s[%s]: offsets %s to %s were not seen (committed offset %s)",
            message.topic,
            message.partition,
            expected,
            message.offset - 1,
            committed,
        )

    async def _store(
        self,
        partition: int,
        key: bytes,
        applied: Applied,
        now: int,
        touchpoint: dict[str, Any] | None = None,
    ) -> None:
        """Send, then write the state (its outbox holds what was sent), then index it."""
        await self._send_all(applied.outgoing)
        await self._put(partition, key, applied.stored)
        if applied.index_add is not None:
            await self._put(partition, applied.index_add, b"")
        self.metrics.observe_step(applied.step, now, touchpoint)

    async def _dead_letter(
        self, message: Any, source: Position, error_class: str, reason: str
    ) -> None:
        await self._send(
            self.processor.dead_letter(message.key, message.value, error_class, reason, source)
        )
        self.metrics.dead_letters.labels(error_class).inc()

    # -- windows ----------------------------------------------------------------------------

    def safe_time(self, partition: int, now: int) -> int | None:
        """Up to which event time this partition's windows may fire (None: not yet)."""
        progress = self._progress(partition)
        if all(
            self._caught_up(TP(topic, partition), progress)
            for topic in (self.settings.topics.touchpoints, self.repartition_name)
        ):
            return now - self.options.window_grace_ms
        return progress.watermark

    def _highwater(self, tp: TP) -> int | None:
        """The partition's high watermark from the last fetch; None while unknown (also while
        aiokafka has not caught up with a new assignment, where it asserts)."""
        try:
            return self.app.consumer.highwater(tp)
        except AssertionError:
            return None

    def _caught_up(self, tp: TP, progress: PartitionProgress) -> bool:
        consumer = self.app.consumer
        highwater = self._highwater(tp)
        if highwater is None or highwater < 0:
            return False
        position = progress.next_offset.get(tp.topic)
        if position is None:
            committed = getattr(consumer, "_committed_offset", {}).get(tp)
            position = committed or 0
        return position >= highwater

    def due_keys(self, partition: int, until: int, limit: int | None = None) -> list[bytes]:
        """Deadline-index keys of ``partition`` due at or before ``until`` (at most ``limit``)."""
        low, high = index_range(partition, until)
        return self._scan(partition, low, high, limit)

    def _partition_db(self, partition: int) -> Any:
        """The RocksDB database of one partition (faust's store keeps one per partition)."""
        db_for_partition = getattr(self.state.data, "_db_for_partition", None)
        if db_for_partition is None:
            raise RuntimeError("the state table needs faust's RocksDB store (rocksdb://)")
        return db_for_partition(partition)

    def _scan(
        self, partition: int, low: bytes, high: bytes, limit: int | None = None
    ) -> list[bytes]:
        """Keys in [low, high) of one partition (the first ``limit``): a sorted range scan of
        its RocksDB."""
        keys: list[bytes] = []
        for key in self._partition_db(partition).keys(from_key=low):
            if key >= high or len(keys) == limit:
                break
            keys.append(key)
        return keys

    async def _on_tick(self, message: Any, now: int) -> None:
        partition = message.partition
        progress = self._progress(partition)
        progress.tick_sent_at = None
        source = Position(message.topic, partition, message.offset)
        committed = self._committed()
        await self._prune_tick_pointers(
            partition, progress, committed.get((message.topic, partition), -1)
        )
        await self._resend_tick(source)
        try:
            requested = int(json.loads(message.value)["at"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed tick on partition %s", partition)
            return
        safe = self.safe_time(partition, now)
        if safe is None:
            return
        until = min(requested, safe)
        by_customer: dict[str, list[bytes]] = {}
        for key in self.due_keys(partition, until):
            by_customer.setdefault(parse_index_key(key)[2], []).append(key)
        customers = sorted(by_customer)
        for chunk_no, start in enumerate(range(0, len(customers), TICK_CHUNK)):
            chunk = customers[start : start + TICK_CHUNK]
            applied = []
            for customer_id in chunk:
                key = customer_key(customer_id)
                stored = self._get(partition, key)
                if stored is not None:
                    try:
                        done = self.processor.apply(stored, Tick(until), now, source, committed)
                    except Quarantined as bad:
                        await self._quarantine(partition, key, bad, source)
                        continue
                    applied.append((customer_id, done))
            touched = [c for c, a in applied if a.outgoing]
            if touched:  # before the states: so a re-run of this tick finds their outboxes
                pointer = tick_pointer_prefix(source) + b"%05d" % chunk_no
                await self._put(partition, pointer, "\n".join(touched).encode())
                progress.tick_pointers.append((message.offset, pointer))
            for customer_id, a in applied:
                await self._store(partition, customer_key(customer_id), a, now)
            for customer_id in chunk:  # after the states they refer to
                for key in by_customer[customer_id]:
                    await self._put(partition, key, None)
        self.metrics.ticks.inc()

    async def _resend_tick(self, source: Position) -> None:
        """If this tick was processed before a crash, send what it caused again."""
        prefix = tick_pointer_prefix(source)
        partition = source.partition
        for pointer in self._scan(partition, prefix, prefix + b"\xff"):
            for customer_id in (self._get(partition, pointer) or b"").decode().split("\n"):
                stored = self._get(partition, customer_key(customer_id)) if customer_id else None
                if stored is None:
                    continue
                try:
                    outbox = unpack(stored)[2]
                except Exception:  # quarantined when the tick reaches this customer again
                    continue
                await self._send_all(outputs_for(outbox, source))

    async def _prune_tick_pointers(
        self, partition: int, progress: PartitionProgress, committed: int
    ) -> None:
        keep = []
        for offset, key in progress.tick_pointers:
            if offset < committed:
                await self._put(partition, key, None)
            else:
                keep.append((offset, key))
        progress.tick_pointers = keep

    async def _guarded(self, name: str, job: Any) -> None:
        """Timers must not take the worker down: log, and the next round tries again."""
        try:
            await job()
        except Exception:
            log.warning("%s failed; retrying next round", name, exc_info=True)

    async def _schedule_ticks(self) -> None:
        await self._guarded("scheduling ticks", self._schedule_ticks_once)

    async def _observe(self) -> None:
        await self._guarded("observing", self._observe_once)

    async def _census(self) -> None:
        await self._guarded("the stage census", self._census_once)

    async def _schedule_ticks_once(self) -> None:
        """Wake up owned partitions that have something due. Runs on every worker, but only
        for the partitions this worker owns right now."""
        now = now_ms()
        for tp in self.app.assignor.assigned_actives():
            if tp.topic != self.settings.topics.touchpoints:
                continue
            progress = self._progress(tp.partition)
            if (
                progress.tick_sent_at is not None
                and time.monotonic() - progress.tick_sent_at < self.options.tick_resend_s
            ):
                continue  # one wake-up in flight per partition
            until = now - self.options.window_grace_ms
            try:
                due = self.due_keys(tp.partition, until, limit=1)  # is anything due?
            except Exception:  # the partition's store is not open yet (recovery)
                continue
            if not due:
                continue
            sent = await self._send_to_partition(
                self.ticks_topic, tp.partition, b"tick", json.dumps({"at": until}).encode()
            )
            if sent:
                progress.tick_sent_at = time.monotonic()
            else:  # only a wake-up call: the next round tries again (overdue metric shows it)
                log.warning("could not send a tick to %s[%s]", self.ticks_name, tp.partition)

    def _owned(self) -> list[int]:
        return sorted(
            tp.partition
            for tp in self.app.assignor.assigned_actives()
            if tp.topic == self.settings.topics.touchpoints
        )

    async def _observe_once(self) -> None:
        """Gauges SREs alert on: lag, overdue wake-ups, recovery, readiness."""
        self._serve_deliveries()
        m = self.metrics
        now = now_ms()
        owned = self._owned()
        m.assigned_partitions.set(len(owned))
        m.ready.set(1 if self.ready()[0] else 0)
        recovery = getattr(self.app.tables, "recovery", None)
        if recovery is not None:
            m.recovery_remaining.set(recovery.active_remaining_total())
        m.lag.clear()
        m.lag_seconds.clear()
        oldest: int | None = None
        for partition in owned:
            progress = self._progress(partition)
            backlog = 0
            for topic in (self.settings.topics.touchpoints, self.repartition_name):
                tp = TP(topic, partition)
                highwater = self._highwater(tp)
                position = progress.next_offset.get(topic)
                if position is None:
                    position = getattr(self.app.consumer, "_committed_offset", {}).get(tp) or 0
                if highwater is not None and highwater > position:
                    backlog += highwater - position
            m.lag.labels(str(partition)).set(backlog)
            behind = now - progress.watermark if backlog and progress.watermark else 0
            m.lag_seconds.labels(str(partition)).set(max(0, behind) / 1000)
            try:
                first = self._scan(partition, *index_range(partition, now), limit=1)
            except Exception:  # not open yet (recovery)
                continue
            if first:
                due = parse_index_key(first[0])[1]
                oldest = due if oldest is None else min(oldest, due)
        grace = 2 * self.options.tick_interval_s * 1000 + self.options.window_grace_ms
        overdue = now - oldest - grace if oldest is not None else 0
        m.windows_overdue.set(max(0, overdue) / 1000)

    async def _census_once(self) -> None:
        """Customers per journey stage and pending wake-ups, recounted from the stored headers
        of the partitions this worker owns; yields to the event loop as it goes."""
        counts: dict[tuple[str, str], int] = {}
        pending = 0
        for partition in self._owned():
            try:
                db = self._partition_db(partition)
            except Exception:
                continue
            for seen, (key, value) in enumerate(db.items(from_key=b"c:"), start=1):
                if not key.startswith(b"c:"):
                    break
                for pair in stages_of(value):
                    counts[pair] = counts.get(pair, 0) + 1
                if seen % 2000 == 0:
                    await asyncio.sleep(0)
            low, high = index_range(partition, 2**62)
            for key in db.keys(from_key=low):
                if key >= high:
                    break
                pending += 1
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
        revoked = args[0] if args else kwargs.get("revoked", ())
        for tp in revoked:
            self.progress.pop(tp.partition, None)
