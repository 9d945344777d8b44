"""What one worker does with one partition: its fetched records, a batch at a time, and its due
wake-ups, synchronously, with no await, task or future per record.

Records of the input topic whose key is not their customer id are re-keyed onto the
repartition topic (same partition count, same partitioner as Kafka's clients); all others are
applied to the partition's state transaction (``agents.store``). Outputs are handed to the
producer as they are decided; the checkpoint (``agents.checkpoint``) makes them durable before
the state that records them, and commits the offsets this object reports in ``offsets``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from aiokafka.partitioner import murmur2

from agents.metrics import Tally
from agents.processor import (
    CORRUPT_STATE,
    LATE,
    STATE_TOO_LARGE,
    Applied,
    Outgoing,
    Position,
    Processor,
    Quarantined,
    Rejected,
    customer_key,
    parse_index_key,
)
from agents.store import PartitionStore
from agents.stored import INPUT, REKEYED
from journeys.engine import Tick
from percorso.limits import ENV

log = logging.getLogger("percorso.agents")


class Record(Protocol):
    """What the loop needs of a fetched record (aiokafka's ``ConsumerRecord`` has it)."""

    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Any: ...


Produce = Callable[[Outgoing, int | None], None]  # (record, explicit partition or None)


def partition_for(customer_id: str, partitions: int) -> int:
    """The partition of a customer id: murmur2, like the Java client (and Faust) default."""
    return (murmur2(customer_id.encode()) & 0x7FFFFFFF) % partitions


class PartitionProcessor:
    def __init__(
        self,
        partition: int,
        store: PartitionStore,
        processor: Processor,
        produce: Produce,
        *,
        input_topic: str,
        repartition_topic: str,
        partitions: int,
    ) -> None:
        self.partition = partition
        self.store = store
        self.processor = processor
        self.produce = produce
        self.input_topic = input_topic
        self.repartition_topic = repartition_topic
        self.partitions = partitions
        self.offsets: dict[str, int] = {}  # topic -> next offset to commit (all before: applied)
        self.sealed_offsets: dict[str, int] = {}  # ``offsets`` when the store was last sealed
        self.watermark: int | None = None  # latest event time applied
        self.latest_event_ms = 0
        self.state_too_large = 0  # customer values not written for their size

    # -- records ----------------------------------------------------------------------------

    def records(
        self,
        topic: str,
        records: Iterable[Record],
        now: int,
        tally: Tally,
        end: int | None = None,
    ) -> None:
        """Apply a fetched batch of one topic's partition, in offset order. ``end``: the
        partition's high watermark as of the fetch (None: unknown).

        A record below the offset its customer's stored value says was applied last
        (``Customer.applied``) is already in the state: the records since the committed
        offset come again after a crash, and the changelog may hold their effect. It changes
        nothing and sends nothing (outcome ``replayed``), however many of the customer's
        records the replay holds (the engine's memory of event ids is bounded). A stored
        offset beyond ``end`` is not from this topic's log (recreated, or truncated since):
        it is ignored."""
        processor = self.processor
        store = self.store
        produce = self.produce
        rekey = topic == self.input_topic
        source = INPUT if rekey else REKEYED
        known = -1 if end is None else end  # stored offsets up to here are this log's
        partition = self.partition
        offset = -1
        for record in records:
            offset = record.offset
            value = record.value
            try:
                touchpoint = processor.decode(value, now, record.headers)
            except Rejected as rejected:
                tally.touchpoint("other", "rejected")
                self._dead_letter(record, topic, rejected.error_class, str(rejected), tally)
                continue
            channel = touchpoint["channel"]
            customer_id = touchpoint["customer_id"]
            encoded_id = customer_id.encode()
            if rekey and record.key != encoded_id:
                headers = list(record.headers or []) or []
                produce(
                    Outgoing(self.repartition_topic, encoded_id, value or b"", headers),
                    partition_for(customer_id, self.partitions),
                )
                tally.touchpoint(channel, "repartitioned")
                continue
            t = touchpoint["occurred_at"]
            if self.watermark is None or t > self.watermark:
                self.watermark = t
            key = b"c:" + encoded_id
            try:
                customer = store.customer(key)
                if customer is not None and offset < customer.applied[source] <= known:
                    tally.touchpoint(channel, "replayed")  # applied before a crash
                    continue
                applied = processor.apply(customer, touchpoint, now, partition)
            except Quarantined as bad:
                self._quarantine(key, bad, Position(topic, partition, offset), tally, record)
                tally.touchpoint(channel, "quarantined")
                continue
            outcome = applied.step.outcome
            tally.touchpoint(channel, outcome)
            if outcome == "late":
                self._dead_letter(
                    record,
                    topic,
                    LATE,
                    f"event time {t} is older than the customer's latest "
                    f"event time minus the allowed lateness",
                    tally,
                )
                continue
            if t > self.latest_event_ms:
                self.latest_event_ms = t
            applied.customer.applied[source] = offset + 1
            self._store(key, applied, now, touchpoint, tally)
        if offset >= 0:
            self.offsets[topic] = offset + 1

    def _store(
        self,
        key: bytes,
        applied: Applied,
        now: int,
        touchpoint: dict[str, Any] | None,
        tally: Tally,
    ) -> None:
        produce = self.produce
        for out in applied.outgoing:
            produce(out, None)
        if applied.step.outcome != "duplicate":  # a duplicate changes nothing
            self.store.put_customer(key, applied.customer, applied.index_add)
        tally.step(applied.step, now, touchpoint)

    def _dead_letter(
        self, record: Record, topic: str, error_class: str, reason: str, tally: Tally
    ) -> None:
        source = Position(topic, self.partition, record.offset)
        self.produce(
            self.processor.dead_letter(record.key, record.value, error_class, reason, source),
            None,
        )
        tally.dead_letter(error_class)

    def _quarantine(
        self,
        key: bytes,
        bad: Quarantined,
        source: Position,
        tally: Tally,
        record: Record | None = None,
    ) -> None:
        """Dead-letter what cannot be applied to one customer, with the stored bytes in a
        header, and go on. A corrupt stored value is removed: kept, it would refuse every later
        touchpoint of that customer; removed, the next one starts afresh, and the bytes are in
        the dead-letter topic for an operator. After an engine error the customer's changes of
        this checkpoint interval are dropped (the engine may have left them half done): the
        state is the one of the last checkpoint, and the next input may well apply."""
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
            record.key if record is not None else key,
            record.value if record is not None else bad.stored,
            bad.error_class,
            str(bad),
            source,
        )
        if record is not None and bad.stored is not None:
            out.headers.append(("percorso.error.stored_state", bad.stored))
        self.produce(out, None)
        tally.dead_letter(bad.error_class)
        if bad.error_class == CORRUPT_STATE:
            self.store.remove(key)
        else:
            self.store.forget(key)

    # -- the checkpoint ---------------------------------------------------------------------

    def seal(self) -> None:
        """Start a checkpoint: the store's live transaction is sealed, with the offsets of the
        records it holds (the checkpoint commits those); the records that follow go to a new
        one."""
        self.store.seal()
        self.sealed_offsets = dict(self.offsets)

    def changes(self, layers: int) -> Iterator[tuple[bytes, bytes | None]]:
        """What the checkpoint writes for this partition (``PartitionStore.changes``), less a
        customer whose stored value grew beyond ``max_state_bytes``: that value is not
        written, so the customer keeps its last stored value (this interval's changes to it
        are dropped), and it goes to the dead-letter topic instead (``StateTooLarge``, cut to
        fit), so the changelog record always fits in a Kafka record. The bounded state
        (journeys/state.py) and input limits keep every customer far below it."""
        limit = self.processor.limits.max_state_bytes
        for key, value in self.store.changes(layers):
            if value is not None and len(value) > limit and key.startswith(b"c:"):
                log.error(
                    "%s: customer %s: a stored value of %s bytes, more than %s: not written",
                    STATE_TOO_LARGE,
                    key[2:].decode(errors="replace"),
                    len(value),
                    limit,
                )
                self.produce(
                    self.processor.dead_letter(
                        key[2:],
                        value,
                        STATE_TOO_LARGE,
                        f"the customer's stored value would be {len(value)} bytes, more than "
                        f"{limit} (limit max_state_bytes, {ENV['max_state_bytes']}); it keeps "
                        f"its last stored value",
                        Position("checkpoint", self.partition, -1),
                    ),
                    None,
                )
                self.state_too_large += 1
                continue
            yield key, value

    # -- wake-ups ---------------------------------------------------------------------------

    def fire(self, until: int, now: int, limit: int, tally: Tally) -> int:
        """Wake up the customers due at or before ``until`` (at most ``limit`` index entries),
        remove their entries, and return how many entries were handled."""
        due = self.store.due(until, limit)
        if not due:
            return 0
        store = self.store
        tick = Tick(until)
        source = Position("wake-up", self.partition, until)
        done: set[str] = set()
        for index_key in due:
            customer_id = parse_index_key(index_key)[2]
            if customer_id not in done:
                done.add(customer_id)
                key = customer_key(customer_id)
                try:
                    customer = store.customer(key)
                    if customer is not None:
                        applied = self.processor.apply(customer, tick, now, self.partition)
                        self._store(key, applied, now, None, tally)
                except Quarantined as bad:
                    self._quarantine(key, bad, source, tally)
            store.remove(index_key)
        tally.ticks += 1
        return len(due)
