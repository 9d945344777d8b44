"""What a worker does with one record, without Faust or Kafka: decode, validate, advance the
engine, and say what to send and what to store. The Faust agent (``agents/app.py``) only moves
bytes between this and Kafka, so this part is unit-tested directly.

Stored value of a customer (the ``customers`` table): ``b"\\x01"`` + the due time this customer
is indexed under (8 bytes, big-endian, -1 for none) + the Avro-framed ``CustomerState``. The
deadline index (the ``deadlines`` table) holds one key per pending wake-up,
``PPPPP|DDDDDDDDDDDDD|customer`` (partition, due time in ms, customer id), so one partition's due
entries are a sorted range scan. Index entries are hints: a wake-up that finds nothing due is a
no-op, so an entry is only written when a customer's next due time moves *earlier* than the
one it is indexed under (re-arming an inactivity window on every touchpoint costs nothing).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from journeys.engine import Engine, Step, Tick
from journeys.serde import decode_state, encode_state
from journeys.state import CustomerState
from percorso.clients import Codecs
from percorso.codec import SerializationError
from percorso.config import Settings
from percorso.records import InvalidTouchpoint, validate_touchpoint

_ENVELOPE = struct.Struct(">bq")
_ENVELOPE_VERSION = 1
NO_DUE = -1

# Dead-letter error classes (header percorso.error.class)
UNDECODABLE = "SerializationError"
INVALID = "InvalidTouchpoint"
LATE = "LateEvent"


@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass
class Applied:
    """The result of one engine step, ready for the agent to store and send."""

    step: Step
    stored: bytes  # the new value of the customer in the customers table
    outgoing: list[Outgoing]
    index_add: bytes | None  # a deadline-index key to write, if any


class Rejected(Exception):
    """A record that goes to the dead-letter topic, with the reason."""

    def __init__(self, error_class: str, message: str) -> None:
        self.error_class = error_class
        super().__init__(message)


def index_key(partition: int, due: int, customer_id: str) -> bytes:
    return b"%05d|%013d|%s" % (partition, max(due, 0), customer_id.encode())


def index_range(partition: int, until: int) -> tuple[bytes, bytes]:
    """Keys of ``partition`` due at or before ``until``: [low, high)."""
    return b"%05d|" % partition, b"%05d|%013d}" % (partition, max(until, 0))


def parse_index_key(key: bytes) -> tuple[int, int, str]:
    partition, due, customer = key.split(b"|", 2)
    return int(partition), int(due), customer.decode()


def pack(state: CustomerState, indexed_due: int | None) -> bytes:
    header = _ENVELOPE.pack(_ENVELOPE_VERSION, NO_DUE if indexed_due is None else indexed_due)
    return header + encode_state(state)


def unpack(stored: bytes) -> tuple[CustomerState, int | None]:
    version, due = _ENVELOPE.unpack_from(stored)
    if version != _ENVELOPE_VERSION:
        raise ValueError(f"unknown customer-state envelope version {version}")
    return decode_state(stored[_ENVELOPE.size :]), None if due == NO_DUE else due


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
        topic: str,
        partition: int,
        offset: int,
    ) -> Outgoing:
        """The original bytes, unchanged, with the contract's error headers."""
        return Outgoing(
            self.topics.dlq,
            key,
            value or b"",
            [
                ("percorso.error.class", error_class.encode()),
                ("percorso.error.message", message[:4000].encode()),
                ("percorso.source.topic", topic.encode()),
                ("percorso.source.partition", str(partition).encode()),
                ("percorso.source.offset", str(offset).encode()),
            ],
        )

    # -- engine -----------------------------------------------------------------------------

    def apply(
        self, stored: bytes | None, item: Mapping[str, Any] | Tick, now: int, partition: int
    ) -> Applied:
        """Advance one customer. ``stored`` is its value in the customers table (None: new)."""
        state, indexed_due = unpack(stored) if stored is not None else (None, None)
        step = self.engine.advance(state, item, now)
        customer_id = step.state["customer_id"]
        if isinstance(item, Tick) and indexed_due is not None and indexed_due <= item.at:
            indexed_due = None  # that wake-up has been consumed by this tick
        index_add = None
        due = step.next_due
        if due is not None and (indexed_due is None or due < indexed_due):
            index_add = index_key(partition, due, customer_id)
            indexed_due = due
        return Applied(step, pack(step.state, indexed_due), self.outputs(step), index_add)

    def outputs(self, step: Step) -> list[Outgoing]:
        key = step.state["customer_id"].encode()
        out = [
            Outgoing(self.topics.transitions, key, self.codecs.transition.encode(t))
            for t in step.transitions
        ]
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
