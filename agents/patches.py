"""The seam between Percorso and faust-streaming/aiokafka: every use of their private attributes
is in this module, and it refuses to start on versions it was not tested with
(``check_versions``). Fixes are guarded and idempotent (applying twice changes nothing);
``apply`` is called once, before the Faust app is built, and ``handle_batches`` when the
runtime registers its partition loop. docs/architecture.md lists them.

- The consumer loop hands whole fetched batches of the runtime's topics to the runtime
  (``handle_batches``), and the runtime checkpoints before faust's ``wait_empty`` on every
  rebalance and shutdown (speed, and the commit protocol in one place). A fetch that comes
  back while the group moves to a new generation is fetched again rather than dropped
  (``batch_fate``: durability).

- ``ProducerBuffer.flush`` returns before the buffer is empty (durability).
- ``seek_to_committed`` skips partitions without a committed offset, so records dropped from
  the stream buffers when recovery completes are never read again (durability).
- The consumer's ``fetch_max_wait_ms`` is hardcoded to 1500 ms (latency: it is how stale an idle
  partition's caught-up time can be), and its ``fetch_min_bytes`` cannot be set (CPU: a fetch
  per handful of records under live traffic).
- End offsets for table recovery come from ListOffsets, which the embedded broker answers
  wrongly (embedded broker only: durability).
- Every partition's RocksDB shares one bounded cache, memtables charged to it
  (``bound_rocksdb_memory``; faust gives each partition a 2 GB cache of its own: memory).
- Faust's aiokafka producer is idempotent only inside
  transactions; on brokers that support it, it is idempotent with ``acks=all`` always, so a
  retried send cannot duplicate or reorder a partition's records (durability).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Generator
from typing import Any, Protocol, cast

import faust
import rocksdict
from faust.stores.rocksdb import RocksDBOptions

log = logging.getLogger("percorso.agents")

PATCHED_VERSION = "0.15.3"
BATCH_RECORDS = 500  # records of one partition the batch handler gets per call
TESTED_AIOKAFKA = "0.14.0"


class UntestedFaustVersion(RuntimeError):
    """The seam reads private attributes of faust and aiokafka: another version may have moved
    them, and running on would risk the record-loss races these fixes close."""


def check_versions(faust_version: str | None = None, aiokafka_version: str | None = None) -> None:
    """Refuse to start on faust or aiokafka versions these fixes were not tested with."""
    import aiokafka

    found = (faust_version or faust.__version__, aiokafka_version or aiokafka.__version__)
    if found != (PATCHED_VERSION, TESTED_AIOKAFKA):
        raise UntestedFaustVersion(
            f"faust-streaming {found[0]} with aiokafka {found[1]}: Percorso's fixes to faust "
            f"(agents/patches.py) were tested with faust-streaming {PATCHED_VERSION} and "
            f"aiokafka {TESTED_AIOKAFKA} only; install those (pyproject.toml pins them)"
        )


def apply(
    fetch_max_wait_ms: int | None = None,
    fetch_min_bytes: int = 1,
    end_offsets_from_fetch: dict[str, Any] | None = None,
    idempotent_producer: bool = True,
) -> None:
    """``end_offsets_from_fetch``: the Kafka client configuration to read end offsets from
    fetch responses with, for brokers whose ListOffsets is wrong (the embedded broker).
    ``idempotent_producer``: False only where the broker refuses aiokafka's InitProducerId
    (the embedded broker)."""
    check_versions()
    flush_producer_buffer_completely()
    seek_uncommitted_to_beginning()
    if fetch_max_wait_ms is not None:
        override_fetch(fetch_max_wait_ms, fetch_min_bytes)
    if end_offsets_from_fetch is not None:
        read_end_offsets_from_fetch(end_offsets_from_fetch)
    idempotent_faust_producer(idempotent_producer)


def idempotent_faust_producer(enabled: bool) -> None:
    """Faust configures aiokafka's producer with ``enable_idempotence`` only for exactly-once
    processing (``_settings_extra``). Percorso's at-least-once worker wants it anyway: a retried
    produce must not duplicate or reorder the records of a partition (whatever faust sends
    itself: its assignor's leader topic). Applying again with another value replaces the setting."""
    from faust.transport.drivers import aiokafka as driver

    producer = driver.Producer
    original = getattr(producer, "_percorso_original_settings_extra", None)
    if original is None:
        original = producer._settings_extra
        producer._percorso_original_settings_extra = original  # type: ignore[attr-defined]

    def settings_extra(self: Any) -> Any:
        extra = dict(original(self))
        if enabled:
            extra.update(acks="all", enable_idempotence=True)
        return extra

    producer._settings_extra = settings_extra  # type: ignore[method-assign]


def flush_producer_buffer_completely() -> None:
    """``ProducerBuffer.flush()`` (run before every offset commit) gives up after waiting 0.1 s
    for one record, even with records still buffered, so offsets can be committed ahead of the
    changelog records (table writes) they depend on; a crash then loses state. Flush until the
    buffer is empty."""
    from faust.transport.producer import ProducerBuffer

    if getattr(ProducerBuffer.flush, "_percorso_complete", False):
        return

    async def flush(self: Any) -> None:
        while self.size:
            await self.flush_atmost(None)

    flush._percorso_complete = True  # type: ignore[attr-defined]
    ProducerBuffer.flush = flush  # type: ignore[method-assign]


def seek_uncommitted_to_beginning() -> None:
    """When table recovery completes, faust resumes the stream partitions, drops what its stream
    buffers hold, and seeks the stream partitions to their committed offsets, so that dropped
    records are read again. aiokafka's ``seek_to_committed`` skips partitions whose committed
    offset is missing or 0, and there the consumer carries on *after* the dropped records: they
    are never processed, and faust acks the jump as a gap and commits over it. Seen when a
    worker restarts before its first commit with records waiting (a crash soon after start).

    Seek those partitions to the beginning, where ``auto_offset_reset=earliest`` (the runtime's
    setting) starts them. Changelog partitions are left alone: recovery seeks them itself."""
    from faust.transport.drivers import aiokafka as driver

    thread = getattr(driver, "AIOKafkaConsumerThread", None)
    original = getattr(thread, "seek_to_committed", None)
    if original is None or getattr(original, "_percorso_seek_unset", False):
        if original is None:
            log.warning("cannot guard seek_to_committed on this faust version")
        return

    async def seek_to_committed(self: Any) -> Any:
        committed = await original(self)
        targets = uncommitted_stream_partitions(self.app, committed)
        if targets:
            log.info(
                "no committed offset for %s: reading from the beginning",
                ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(targets)),
            )
            await self.call_thread(self._ensure_consumer().seek_to_beginning, *targets)
        return committed

    seek_to_committed._percorso_seek_unset = True  # type: ignore[attr-defined]
    thread.seek_to_committed = seek_to_committed  # type: ignore[union-attr]


def uncommitted_stream_partitions(app: Any, committed: dict[Any, int | None]) -> list[Any]:
    """The stream partitions that aiokafka's seek_to_committed left where they were."""
    if app.conf.consumer_auto_offset_reset != "earliest":
        return []
    changelogs = {table.changelog_topic.get_topic_name() for table in app.tables.values()}
    return [
        tp
        for tp, offset in committed.items()
        if not offset and tp.topic not in changelogs and not tp.topic.endswith("__leader")
    ]


class _Resumed:
    """An awaitable that carries on a coroutine that was started elsewhere and is suspended on
    ``pending``: what ``yield from`` would do had the coroutine been awaited from the start.
    Lets a caller run a coroutine inline and pay for a task only when it blocks."""

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self.coro = coro
        self.pending = pending

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, pending = self.coro, self.pending
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # CancelledError included: the coroutine decides
                try:
                    pending = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    pending = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


def start_inline(coro: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """Run ``coro`` until it finishes or first suspends. (True, result) if it finished; else
    (False, an awaitable that carries it on)."""
    try:
        pending = coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    return False, _Resumed(coro, pending)


def position_reader(consumer: Any) -> Any:
    """A function giving aiokafka's current position of a partition (None: unknown, being
    reset, or not assigned), read from the consumer thread's state without a round trip."""
    thread = consumer._thread

    def position(tp: Any) -> int | None:
        aio = thread._consumer
        subscription = aio._subscription.subscription if aio is not None else None
        assignment = subscription.assignment if subscription is not None else None
        state = assignment._tp_state.get(tp) if assignment is not None else None
        return None if state is None else cast(int | None, state._position)

    return position


def still_ahead(position: int | None, offset: int) -> bool:
    """Whether the consumer's position is still past a record it fetched: if not, it has been
    sought back since, and the record will be fetched again."""
    return position is not None and offset < position


APPLY, DROP, REFETCH = "apply", "drop", "refetch"


def batch_fate(
    generation_before: int,
    generation: int,
    position: int | None,
    committed: int | None,
    first: int,
    last: int,
) -> str:
    """What the consumer loop does with a batch a fetch returned (offsets ``first`` to
    ``last``), given the group generation when it started waiting for the fetch and when the
    records came back, aiokafka's position of the partition now and the committed offset faust
    knows.

    - ``DROP`` when the position is no longer past the batch: the partition was sought back
      since (a rebalance, the seek to committed offsets after recovery), and the records come
      again. Also when a rebalance happened during the wait and the batch starts below the
      committed offset: fetched before the rebalance, and committed by whoever had it.
    - ``REFETCH`` when a rebalance happened during the wait, the position is past the batch and
      it is not committed: the batch may have been fetched on either side of the rebalance, and
      dropping it would leave the position past records nobody applied (aiokafka returns no
      record twice). Seen with fetches held 20 ms: a survivor whose fetch of a dead worker's
      partitions returned within the wait that the takeover happened in never applied them.
      The loop seeks back to ``first``, and they come again in the current generation.
    - ``APPLY`` otherwise: aiokafka returns records only for the assignment active when they
      come back and only from the partition's position, so they are this generation's."""
    if not still_ahead(position, last):
        return DROP
    if generation == generation_before:
        return APPLY
    if first < (committed or 0):
        return DROP
    return REFETCH


def current_generation(app: Any, message: Any) -> bool:
    """Whether a record was fetched in the consumer group's current generation. The stream
    drops records of an earlier one without processing them (``Stream._c_aiter``), and the
    rebalance that ended it seeks back to the committed offsets so they are fetched again.
    Such a record must neither be handed over nor move the read offset: a stale record whose
    hand-over (blocked across the rebalance) finished after the seek set the read offset past
    its own re-fetched copy, which was then dropped as already read. Seen on Apache Kafka
    after a broker restart: the worker re-joined and skipped 320 records per partition."""
    return bool(message.generation_id == app.consumer_generation_id)


class BatchHandler(Protocol):
    """Who takes whole fetched batches of some topics off faust's consumer loop."""

    topics: frozenset[str]

    async def on_batches(self, batches: dict[Any, list[Any]]) -> None:
        """Fetched records of the handled topics, by TP (aiokafka ``ConsumerRecord`` lists)."""

    async def on_idle(self) -> None:
        """Called after every fetch round, records or not (timers, checkpoints)."""

    async def before_wait_empty(self) -> None:
        """Before faust waits for its streams to finish (on a rebalance and at shutdown)."""


def handle_batches(app: Any, handler: BatchHandler) -> None:
    """Hand the fetched records of ``handler.topics`` to ``handler`` a whole batch at a time,
    and call it before faust's ``wait_empty`` (the point of every rebalance and shutdown where
    faust commits what its streams finished). Records of other topics (the changelogs table
    recovery reads) take faust's way."""
    consumer_batch_loop()
    app._percorso_batches = handler


def _handler(consumer: Any) -> BatchHandler | None:
    return cast(BatchHandler | None, getattr(consumer.app, "_percorso_batches", None))


def consumer_batch_loop() -> None:
    """Replace ``Consumer._drain_messages``, the loop that hands fetched records over, and
    wrap ``Consumer.wait_empty``.

    Faust hands every record over one at a time, as a ``Message``, through ``wait_first``
    (several asyncio tasks per record) into a stream buffer that an agent reads with one
    await per record. For the topics a ``BatchHandler`` takes, this loop calls it once per
    fetch with the records aiokafka returned, by partition: the handler applies them
    synchronously and acks nothing per record (it commits in its own checkpoints).

    Durability rules kept from the per-record loop: a batch is handed over only if it was
    fetched in the consumer group's current generation and aiokafka's position is still past
    its last record; otherwise the partition has been sought back since (a rebalance, the seek
    to committed offsets after recovery) and the records will be fetched again. Processing is
    synchronous, so no seek can happen while a batch is applied.

    Records of other topics (changelogs during table recovery) go through faust's own
    per-record hand-over, unchanged, with the same position and generation checks."""
    from faust.transport import consumer as module

    cls = module.Consumer
    if getattr(cls._drain_messages, "_percorso_batches", False):
        return
    original_drain = cls._drain_messages
    original_wait_empty = cls.wait_empty
    fetching = module.CONSUMER_FETCHING

    async def wait_empty(self: Any) -> None:
        handler = _handler(self)
        if handler is not None:
            await handler.before_wait_empty()
        await original_wait_empty(self)

    async def _drain_messages(self: Any, fetcher: Any) -> None:  # pragma: no cover - faust's
        handler = _handler(self)
        if handler is None:
            return cast(None, await original_drain(self, fetcher))
        handled = handler.topics
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        app = self.app
        position_of = position_reader(self)
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(fetching)
                before = app.consumer_generation_id
                records, active = await self._wait_next_records(0.25)
                generation = app.consumer_generation_id
                if self.should_stop:
                    break
                if not self.flow_active:
                    # records fetched as the flow stopped: seek back (faust's getmany does)
                    if records:
                        await self.perform_seek()
                    unset_flag(fetching)
                    await handler.on_idle()
                    continue
                mine: dict[Any, list[Any]] = {}
                for tp, batch in (records or {}).items():
                    if not batch or (
                        active is not None
                        and tp not in active
                        and tp not in self._buffered_partitions
                    ):
                        continue
                    if app.consumer_generation_id != generation:
                        break  # a rebalance happened meanwhile: everything comes again
                    fate = batch_fate(
                        before,
                        generation,
                        position_of(tp),
                        self._committed_offset.get(tp),
                        batch[0].offset,
                        batch[-1].offset,
                    )
                    if fate == REFETCH:
                        # now, before anything awaits: the partition is still assigned (its
                        # position is known), and faust's seek does not suspend
                        log.info(
                            "%s[%s]: offsets %s on came back across a rebalance: fetching "
                            "them again",
                            tp.topic,
                            tp.partition,
                            batch[0].offset,
                        )
                        await self.seek(tp, batch[0].offset)
                    if fate != APPLY:
                        continue
                    if tp.topic in handled:
                        mine[tp] = batch
                        continue
                    for record in batch:  # faust's way, one message at a time
                        message = self._to_message(tp, record)
                        offset = message.offset
                        if not (
                            still_ahead(position_of(tp), offset)
                            and current_generation(app, message)
                        ):
                            break
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            done, rest = start_inline(callback(message))
                            if not done:
                                await self.wait_first(rest, self.suspend_flow.wait())
                            if still_ahead(position_of(tp), offset) and current_generation(
                                app, message
                            ):
                                set_read_offset(tp, offset)
                for tp, batch in mine.items():
                    # one partition's records at a time, at most BATCH_RECORDS per call, with
                    # the event loop free in between (web views, rebalance callbacks); each
                    # chunk is checked again, as a rebalance may have happened meanwhile
                    for start in range(0, len(batch), BATCH_RECORDS):
                        chunk = batch[start : start + BATCH_RECORDS]
                        if app.consumer_generation_id != generation or not still_ahead(
                            position_of(tp), chunk[-1].offset
                        ):
                            break
                        await handler.on_batches({tp: chunk})
                        await asyncio.sleep(0)
                unset_flag(fetching)
                await handler.on_idle()
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return None
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return None
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(fetching)
        return None

    _drain_messages._percorso_batches = True  # type: ignore[attr-defined]
    cls._drain_messages = _drain_messages  # type: ignore[method-assign]
    cls.wait_empty = wait_empty  # type: ignore[method-assign]


# -- reads and writes of faust and aiokafka state the runtime needs ---------------------------


def highwater(app: Any, topic: str, partition: int) -> int | None:
    """The partition's high watermark from the last fetch response; None while unknown (also
    while aiokafka has not caught up with a new assignment, where it asserts)."""
    from faust.types import TP

    try:
        value = app.consumer.highwater(TP(topic, partition))
    except AssertionError:
        return None
    return None if value is None or value < 0 else int(value)


def position(app: Any, topic: str, partition: int) -> int | None:
    """aiokafka's position of a partition: the offset of the next record it returns (None:
    unknown, being reset, or not assigned). Every record before it has been handed over."""
    from faust.types import TP

    try:
        return cast(int | None, position_reader(app.consumer)(TP(topic, partition)))
    except AttributeError:  # the consumer thread is not started
        return None


def last_fetch_ms(app: Any, topic: str, partition: int) -> int | None:
    """When aiokafka last had a fetch response for the partition (epoch ms; None: never, or
    not assigned): its high watermark is as of then."""
    from faust.types import TP

    try:
        aio = app.consumer._thread._consumer
        state = aio._subscription.subscription.assignment._tp_state.get(TP(topic, partition))
    except AttributeError:
        return None
    stamp = None if state is None else state.timestamp
    return None if stamp is None else int(stamp)


def committed_offset(app: Any, topic: str, partition: int) -> int | None:
    """The group's committed offset of a partition as faust last saw it (seek or commit)."""
    from faust.types import TP

    committed = getattr(app.consumer, "_committed_offset", {})
    value = committed.get(TP(topic, partition))
    return None if value is None else int(value)


async def commit(app: Any, offsets: dict[tuple[str, int], int]) -> bool:
    """Commit offsets for the consumer group through faust's consumer (which commits only
    partitions still assigned, and keeps its own bookkeeping of what was committed)."""
    from faust.types import TP

    return bool(
        await app.consumer._commit_offsets(
            {TP(topic, partition): offset for (topic, partition), offset in offsets.items()}
        )
    )


def flow_active(app: Any) -> bool:
    """Whether faust lets records flow (not during a rebalance or before recovery ends)."""
    return bool(getattr(app.consumer, "flow_active", False))


def partition_db(table: Any, partition: int) -> Any:
    """The RocksDB database of one partition of a ``rocksdb://`` table (faust keeps one per
    partition, opened on first use)."""
    db_for_partition = getattr(table.data, "_db_for_partition", None)
    if db_for_partition is None:
        raise RuntimeError("the state table needs faust's RocksDB store (rocksdb://)")
    return db_for_partition(partition)


def bound_rocksdb_memory(table: Any, memory_bytes: int) -> BoundedRocksDBOptions:
    """Bound the memory of every partition's RocksDB of ``table`` together, as Kafka Streams'
    bounded-memory configuration does: one block cache of ``memory_bytes`` shared by all of
    them, their memtables (at most half of it) charged to that cache, and the index and filter
    blocks kept in it too. Faust's defaults give each partition its own 2 GB cache and up to
    3 x 64 MB of memtables, so a worker's memory grows with its customers. Call before the
    store opens a partition (faust opens them on first use)."""
    store = table.data
    current = getattr(store, "rocksdb_options", None)
    if isinstance(current, BoundedRocksDBOptions):
        return current
    if not isinstance(current, RocksDBOptions) or not current.use_rocksdict:
        raise RuntimeError("the state table needs faust's RocksDB store through rocksdict")
    bounded = BoundedRocksDBOptions(memory_bytes, current)
    store.rocksdb_options = bounded
    return bounded


class BoundedRocksDBOptions(RocksDBOptions):
    """faust's RocksDB options, with one cache and write-buffer manager for all partitions."""

    def __init__(self, memory_bytes: int, base: RocksDBOptions) -> None:
        super().__init__(
            max_open_files=base.max_open_files,
            target_file_size_base=base.target_file_size_base,
            bloom_filter_size=base.bloom_filter_size,
            use_rocksdict=True,
            ttl=base.ttl,
        )
        self.memory_bytes = memory_bytes
        self.cache = rocksdict.Cache(memory_bytes)
        self.write_buffers = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
            memory_bytes // 2, False, self.cache
        )
        # a memtable flushes at this size, or sooner once all of them reach half the cache
        self.write_buffer_size = max(4 << 20, memory_bytes // 16)
        self.max_write_buffer_number = 3

    def as_options(self) -> rocksdict.Options:
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        if self.max_open_files is not None:
            options.set_max_open_files(self.max_open_files)
        options.set_write_buffer_size(self.write_buffer_size)
        options.set_max_write_buffer_number(self.max_write_buffer_number)
        options.set_target_file_size_base(self.target_file_size_base)
        options.set_write_buffer_manager(self.write_buffers)
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(self.bloom_filter_size, True)
        table.set_block_cache(self.cache)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        options.set_block_based_table_factory(table)
        return options

    def usage(self) -> int:
        """Bytes the shared cache holds now: blocks, and the memtables charged to it."""
        return int(self.cache.get_usage())


def producer_metadata_refresh(app: Any) -> Any:
    """A coroutine function that refreshes the metadata of faust's aiokafka producer."""
    ensure = getattr(app.producer, "_ensure_producer", None)
    return None if ensure is None else ensure().client.force_metadata_update


def override_fetch(fetch_max_wait_ms: int, fetch_min_bytes: int = 1) -> None:
    """faust-streaming 0.15 builds its aiokafka consumer with fetch_max_wait_ms=1500,
    fetch_min_bytes=1 and no setting to change them. Brokers that hold fetches that long (the
    embedded broker's profile says so) would delay every record, and a fetch answered at the
    first record costs a round trip per handful of records under live traffic. The consumer
    reads both when it starts, so they are set on the consumer faust creates. Guarded: without
    the method, nothing is patched."""
    from faust.transport.drivers import aiokafka as driver

    thread = getattr(driver, "AIOKafkaConsumerThread", None)
    create = getattr(thread, "_create_worker_consumer", None)
    wanted = (fetch_max_wait_ms, fetch_min_bytes)
    if create is None or getattr(create, "_percorso_fetch", None) == wanted:
        if create is None:
            log.warning("cannot set fetch_max_wait_ms and fetch_min_bytes on this faust version")
        return
    original = getattr(create, "_percorso_original", create)

    def create_worker_consumer(self: Any, *args: Any, **kwargs: Any) -> Any:
        consumer = original(self, *args, **kwargs)
        consumer._fetch_max_wait_ms = fetch_max_wait_ms
        consumer._fetch_min_bytes = fetch_min_bytes
        return consumer

    create_worker_consumer._percorso_original = original  # type: ignore[attr-defined]
    create_worker_consumer._percorso_fetch = wanted  # type: ignore[attr-defined]
    thread._create_worker_consumer = create_worker_consumer  # type: ignore[union-attr]


def read_end_offsets_from_fetch(kafka_config: dict[str, Any]) -> None:
    """Table recovery reads a changelog up to its end offset, asked with ListOffsets. A broker
    that answers ListOffsets with the base offset of the last record batch + 1 (the embedded
    broker does, when that batch holds several records) makes recovery stop short. The answer
    is corrected with the high watermark of a fetch from just before it."""
    from faust.transport.drivers import aiokafka as driver

    thread = getattr(driver, "AIOKafkaConsumerThread", None)
    original = getattr(thread, "highwaters", None)
    if original is None:
        log.warning("cannot correct end offsets on this faust version")
        return
    original = getattr(original, "_percorso_original", original)

    async def highwaters(self: Any, *partitions: Any) -> Any:
        reported = dict(await original(self, *partitions))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, fetched_end_offsets, kafka_config, reported)

    highwaters._percorso_original = original  # type: ignore[attr-defined]
    thread.highwaters = highwaters  # type: ignore[union-attr]


def fetched_end_offsets(
    kafka_config: dict[str, Any], reported: dict[Any, int | None], timeout: float = 15.0
) -> dict[Any, int | None]:
    """``reported`` end offsets, each replaced by the high watermark of a fetch from one before
    it. Partitions reported empty are left alone (the misreport is never 0 for a partition with
    records), and so is any partition the fetch does not answer in time (logged)."""
    import time

    from confluent_kafka import Consumer, TopicPartition

    probe = {(tp.topic, tp.partition): tp for tp, end in reported.items() if end and end > 0}
    if not probe:
        return reported
    consumer = Consumer(
        {
            **kafka_config,
            "group.id": "percorso-end-offsets",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
        }
    )
    corrected = dict(reported)
    try:
        consumer.assign(
            [TopicPartition(t, p, int(reported[tp] or 1) - 1) for (t, p), tp in probe.items()]
        )
        deadline = time.monotonic() + timeout
        while probe and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=0.2):
                tp = probe.get((message.topic(), message.partition()))
                if tp is None:
                    continue
                _, high = consumer.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), cached=True
                )
                if high is not None and high >= 0:
                    del probe[(tp.topic, tp.partition)]
                    corrected[tp] = max(int(reported[tp] or 0), high)
    finally:
        consumer.close()
    if probe:
        log.warning("end offsets not confirmed by a fetch, kept as reported: %s", sorted(probe))
    return corrected
