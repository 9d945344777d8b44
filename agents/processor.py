"""What a worker does with one record, without Faust or Kafka: decode, validate, advance the
engine, and say what to send and what to store. The partition loop (``agents.partition``) only
moves records between this, the partition's state (``agents.store``) and the producer, so this
part is unit-tested directly.

One table (``state``) holds two kinds of keys, so that all writes of a partition go to one
changelog partition, in order (what is durable is always a prefix of what was written):

- ``c:<customer>``: the customer's stored value (``agents.stored``): the due time the customer
  is indexed under, the stage summary and the state.
- ``d:PPPPP|DDDDDDDDDDDDD|<customer>``: the deadline index (partition, due time in ms), so one
  partition's due entries are a sorted range scan. Entries are hints: a wake-up that finds
  nothing due is a no-op, so one is written only when a customer's next due time moves *earlier*
  than the one it is indexed under (re-arming an inactivity window on every touchpoint costs
  nothing). The partition's checkpoint writes new entries before the states and removes fired
  ones after them, so a crash can leave an extra entry, never a state without its entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agents import stored as stored_codec
from agents.stored import CorruptValue, Customer
from journeys.engine import Engine, Step, Tick
from percorso.clients import Codecs
from percorso.codec import SerializationError
from percorso.config import Settings
from percorso.limits import ENV
from percorso.records import FutureEvent, InvalidTouchpoint, check_event_time, validate_touchpoint

# Dead-letter error classes (header percorso.error.class)
UNDECODABLE = "SerializationError"
INVALID = "InvalidTouchpoint"
LATE = "LateEvent"
FUTURE = "FutureEvent"  # dated further ahead of the worker's clock than the allowed skew
STATE_TOO_LARGE = "StateTooLarge"  # a customer's stored value beyond the limit, not written
OUTPUT_TOO_LARGE = "OutputTooLarge"  # an output the broker refused as too large, cut to fit
CORRUPT_STATE = "CorruptState"  # the customer's stored value cannot be decoded
ENGINE_ERROR = "EngineError"  # the engine raised on this customer and this input


@dataclass(frozen=True)
class Outgoing:
    """One record to send."""

    topic: str
    key: bytes | None
    value: bytes | None  # None: a null value (a dead letter of a null record)
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass(frozen=True)
class Position:
    """Where a message was read."""

    topic: str
    partition: int
    offset: int


@dataclass
class Applied:
    """The result of one engine step, ready for the partition loop to store and send."""

    step: Step
    customer: Customer  # the customer's new value (kept decoded until the checkpoint)
    outgoing: list[Outgoing]
    index_add: bytes | None  # a deadline-index key to write, if any


class Rejected(Exception):
    """A record that goes to the dead-letter topic, with the reason."""

    def __init__(self, error_class: str, message: str) -> None:
        self.error_class = error_class
        super().__init__(message)


class Quarantined(Rejected):
    """One customer's input that cannot be applied: its stored value does not decode
    (``CorruptState``) or the engine raised (``EngineError``). The input goes to the
    dead-letter topic with the stored bytes, and the worker goes on with the next record."""

    def __init__(self, error_class: str, message: str, stored: bytes | None) -> None:
        super().__init__(error_class, message)
        self.stored = stored


MAX_KEPT_KEY_BYTES = 1024  # of a dead letter's key, when the record must be cut
MAX_KEPT_HEADER_BYTES = 4096  # of any header value, when cutting the value is not enough
_NOTES_BYTES = 200  # the headers ``fit`` adds


Headers = list[tuple[str, bytes | None]] | Mapping[str, bytes | None]


def _headers_size(headers: Headers | None) -> int:
    if not headers:
        return 0
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return sum(len(name) + len(value or b"") for name, value in pairs)


def record_size(out: Outgoing) -> int:
    """What a record weighs against librdkafka's ``message.max.bytes``."""
    return (
        len(out.key or b"")
        + len(out.value or b"")
        + sum(len(name) + len(value) for name, value in out.headers)
    )


def fit(out: Outgoing, limit: int) -> Outgoing:
    """``out`` if its key, value and headers together are within ``limit`` bytes; else a copy
    cut to fit: the key to its first ``MAX_KEPT_KEY_BYTES``, the value to what room is left
    (after header values beyond ``MAX_KEPT_HEADER_BYTES`` are cut too, if that is not enough),
    with ``percorso.error.truncated: true`` and the original sizes in headers. A null value
    stays null."""
    if record_size(out) <= limit:
        return out
    key, value, headers = out.key, out.value, list(out.headers)
    notes = [("percorso.error.truncated", b"true")]
    if value is not None:
        notes.append(("percorso.error.original_size", str(len(value)).encode()))
    if key is not None and len(key) > MAX_KEPT_KEY_BYTES:
        notes.append(("percorso.error.original_key_size", str(len(key)).encode()))
        key = key[:MAX_KEPT_KEY_BYTES]
    room = limit - _NOTES_BYTES - record_size(Outgoing(out.topic, key, None, headers))
    if room < 0:
        cut = [name for name, v in headers if len(v) > MAX_KEPT_HEADER_BYTES]
        notes += [
            (f"{name}.original_size", str(len(v)).encode()) for name, v in headers if name in cut
        ]
        headers = [(name, v[:MAX_KEPT_HEADER_BYTES]) for name, v in headers]
        room = limit - _NOTES_BYTES - record_size(Outgoing(out.topic, key, None, headers))
    if value is not None:
        value = value[: max(0, room)]
    return Outgoing(out.topic, key, value, headers + notes)


def customer_key(customer_id: str) -> bytes:
    return b"c:" + customer_id.encode()


def index_key(partition: int, due: int, customer_id: str) -> bytes:
    return b"d:%05d|%013d|%s" % (partition, max(due, 0), customer_id.encode())


def index_range(partition: int, until: int) -> tuple[bytes, bytes]:
    """Index keys of ``partition`` due at or before ``until``: [low, high)."""
    return b"d:%05d|" % partition, b"d:%05d|%013d}" % (partition, max(until, 0))


def parse_index_key(key: bytes) -> tuple[int, int, str]:
    partition, due, customer = key[2:].split(b"|", 2)
    return int(partition), int(due), customer.decode()


class Processor:
    def __init__(self, settings: Settings, engine: Engine, codecs: Codecs) -> None:
        self.settings = settings
        self.engine = engine
        self.codecs = codecs
        self.topics = settings.topics
        self.limits = settings.limits
        # attributes whose values become part of state keys: correlations and instance keys
        self.correlated = frozenset(
            k for j in engine.catalog.journeys for w in j.windows for k in w.correlate
        ) | frozenset(j.instance_attribute for j in engine.catalog.journeys if j.instance_attribute)

    # -- ingest -----------------------------------------------------------------------------

    def decode(
        self, value: bytes | None, now: int | None = None, headers: Headers | None = None
    ) -> dict[str, Any]:
        """A valid touchpoint from the wire, or Rejected with the reason. With ``now`` (the
        worker's wall clock), a touchpoint dated too far ahead of it is refused as well. The
        record's ``headers`` count towards its size: a re-keyed copy carries them."""
        limit = self.limits.max_touchpoint_bytes
        size = len(value or b"") + _headers_size(headers)
        if size > limit:
            raise Rejected(
                INVALID,
                f"record: {size} bytes of value and headers, more than the {limit} a "
                f"touchpoint may have (limit max_touchpoint_bytes, {ENV['max_touchpoint_bytes']})",
            )
        try:
            record = self.codecs.touchpoint.decode(value)
        except SerializationError as exc:
            raise Rejected(UNDECODABLE, str(exc)) from exc
        try:
            touchpoint = validate_touchpoint(record, self.limits, self.correlated)
        except InvalidTouchpoint as exc:
            raise Rejected(INVALID, str(exc)) from exc
        if now is not None:
            try:
                check_event_time(touchpoint["occurred_at"], now, self.limits)
            except FutureEvent as exc:
                raise Rejected(FUTURE, str(exc)) from exc
        return touchpoint

    def dead_letter(
        self,
        key: bytes | None,
        value: bytes | None,
        error_class: str,
        message: str,
        source: Position,
    ) -> Outgoing:
        """The original bytes with the contract's error headers; a null value stays null (an
        empty one stays empty). A record beyond ``max_dead_letter_bytes`` is cut to fit
        (``fit``), so the dead letter of an oversized record can always be written."""
        out = Outgoing(
            self.topics.dlq,
            key,
            value,
            [
                ("percorso.error.class", error_class.encode()),
                ("percorso.error.message", message[:4000].encode()),
                ("percorso.source.topic", source.topic.encode()),
                ("percorso.source.partition", str(source.partition).encode()),
                ("percorso.source.offset", str(source.offset).encode()),
            ],
        )
        return fit(out, self.limits.max_dead_letter_bytes)

    # -- engine -----------------------------------------------------------------------------

    def load(self, stored: bytes) -> Customer:
        """A customer's stored value, decoded; Quarantined (``CorruptState``) if it does not."""
        try:
            return stored_codec.decode(stored)
        except CorruptValue as exc:
            raise Quarantined(
                CORRUPT_STATE, f"the stored customer state cannot be decoded: {exc}", stored
            ) from exc

    def apply(
        self,
        customer: Customer | None,
        item: Mapping[str, Any] | Tick,
        now: int,
        partition: int,
    ) -> Applied:
        """Advance one customer (None: new) by a touchpoint or a tick. The engine changes the
        state in place: after a Quarantined (``EngineError``) the caller must not keep it."""
        try:
            step = self.engine.advance(customer.state if customer else None, item, now)
        except Exception as exc:  # the engine is pure: its exceptions are about this input
            raise Quarantined(
                ENGINE_ERROR,
                f"the engine failed on this customer: {exc!r}",
                stored_codec.encode(customer) if customer is not None else None,
            ) from exc
        indexed_due = customer.indexed_due if customer is not None else None
        if isinstance(item, Tick) and indexed_due is not None and indexed_due <= item.at:
            indexed_due = None  # that wake-up has been consumed by this tick
        index_add = None
        due = step.next_due
        if due is not None and (indexed_due is None or due < indexed_due):
            index_add = index_key(partition, due, step.state["customer_id"])
            indexed_due = due
        if customer is None:
            customer = Customer(step.state, indexed_due)
        else:
            customer.state = step.state
            customer.indexed_due = indexed_due
        return Applied(step, customer, self.outputs(step), index_add)

    def outputs(self, step: Step) -> list[Outgoing]:
        key = step.state["customer_id"].encode()
        out = [
            Outgoing(self.topics.transitions, key, self.codecs.transition.encode(t))
            for t in step.transitions
        ]
        for c in step.conversions:
            out.append(Outgoing(self.topics.conversions, key, self.codecs.conversion.encode(c)))
        for action in step.actions:
            out.append(
                Outgoing(
                    self.topics.actions(action["channel"]),
                    key,
                    self.codecs.action.encode(action),
                    [
                        ("percorso.action_id", action["action_id"].encode()),
                        ("percorso.journey_id", action["journey_id"].encode()),
                    ],
                )
            )
        return out
