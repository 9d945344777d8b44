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
from percorso.records import InvalidTouchpoint, validate_touchpoint

# Dead-letter error classes (header percorso.error.class)
UNDECODABLE = "SerializationError"
INVALID = "InvalidTouchpoint"
LATE = "LateEvent"
CORRUPT_STATE = "CorruptState"  # the customer's stored value cannot be decoded
ENGINE_ERROR = "EngineError"  # the engine raised on this customer and this input


@dataclass(frozen=True)
class Outgoing:
    """One record to send."""

    topic: str
    key: bytes | None
    value: bytes
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

    # -- ingest -----------------------------------------------------------------------------

    def decode(self, value: bytes | None) -> dict[str, Any]:
        """A valid touchpoint from the wire, or Rejected with the reason."""
        try:
            record = self.codecs.touchpoint.decode(value)
        except SerializationError as exc:
            raise Rejected(UNDECODABLE, str(exc)) from exc
        try:
            return validate_touchpoint(record)
        except InvalidTouchpoint as exc:
            raise Rejected(INVALID, str(exc)) from exc

    def dead_letter(
        self,
        key: bytes | None,
        value: bytes | None,
        error_class: str,
        message: str,
        source: Position,
    ) -> Outgoing:
        """The original bytes, unchanged, with the contract's error headers."""
        return Outgoing(
            self.topics.dlq,
            key,
            value or b"",
            [
                ("percorso.error.class", error_class.encode()),
                ("percorso.error.message", message[:4000].encode()),
                ("percorso.source.topic", source.topic.encode()),
                ("percorso.source.partition", str(source.partition).encode()),
                ("percorso.source.offset", str(source.offset).encode()),
            ],
        )

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
