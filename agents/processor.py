"""What a worker does with one record, without Faust or Kafka: decode, validate, advance the
engine, and say what to send and what to store. The Faust agent (``agents/app.py``) only moves
bytes between this and Kafka, so this part is unit-tested directly.

One table (``state``) holds three kinds of keys, so that all writes of a partition go to one
changelog partition, in order (what is durable is always a prefix of what was written):

- ``c:<customer>``: the customer's stored value: ``b"\\x01"`` + the due time the customer is
  indexed under (8 bytes, big-endian, -1 for none) + the lengths of the stage summary and of the
  state (4 bytes each) + the stage summary (``journey=stage`` of active journeys, for the
  stage census without decoding Avro) + the Avro-framed ``CustomerState`` + the outbox
  (``agents.outbox``) of its recent steps.
- ``d:PPPPP|DDDDDDDDDDDDD|<customer>``: the deadline index (partition, due time in ms), so one
  partition's due entries are a sorted range scan. Entries are hints: a wake-up that finds
  nothing due is a no-op, so one is written only when a customer's next due time moves *earlier*
  than the one it is indexed under (re-arming an inactivity window on every touchpoint costs
  nothing), and deleted only after the state it refers to was written.
- ``t:<topic>|PPPPP|OOOOOOOOOOOOOOOOOOOO|<chunk>``: the customers a tick gave outputs to, written
  before their states, so reprocessing that tick after a crash finds their outboxes.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agents.outbox import Entry, Outgoing, Position, outputs_for, prune
from agents.outbox import decode as decode_outbox
from agents.outbox import encode as encode_outbox
from journeys.engine import Engine, Step, Tick
from journeys.serde import decode_state, encode_state
from journeys.state import CustomerState
from percorso.clients import Codecs
from percorso.codec import SerializationError
from percorso.config import Settings
from percorso.records import InvalidTouchpoint, validate_touchpoint

_ENVELOPE = struct.Struct(">bqII")
_ENVELOPE_VERSION = 1
NO_DUE = -1

# Dead-letter error classes (header percorso.error.class)
UNDECODABLE = "SerializationError"
INVALID = "InvalidTouchpoint"
LATE = "LateEvent"
CORRUPT_STATE = "CorruptState"  # the customer's stored value cannot be decoded
ENGINE_ERROR = "EngineError"  # the engine raised on this customer and this input


@dataclass
class Applied:
    """The result of one engine step, ready for the agent to store and send."""

    step: Step
    stored: bytes  # the new value of the customer in the state table
    outgoing: list[Outgoing]
    index_add: bytes | None  # a deadline-index key to write, if any
    resend: list[Outgoing]  # what this same message caused before a crash: send it again


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


def tick_pointer_prefix(source: Position) -> bytes:
    return b"t:%s|%05d|%020d|" % (source.topic.encode(), source.partition, source.offset)


def pack(state: CustomerState, indexed_due: int | None, outbox: list[Entry] | None = None) -> bytes:
    encoded = encode_state(state)
    stages = "\x1f".join(
        f"{jid}={js['stage']}"
        for jid, js in sorted(state["journeys"].items())
        if js["active"] and js["stage"] is not None
    ).encode()
    due = NO_DUE if indexed_due is None else indexed_due
    header = _ENVELOPE.pack(_ENVELOPE_VERSION, due, len(stages), len(encoded))
    return header + stages + encoded + (encode_outbox(outbox) if outbox else b"")


def unpack(stored: bytes) -> tuple[CustomerState, int | None, list[Entry]]:
    version, due, stages_size, size = _ENVELOPE.unpack_from(stored)
    if version != _ENVELOPE_VERSION:
        raise ValueError(f"unknown customer-state envelope version {version}")
    start = _ENVELOPE.size + stages_size
    state = decode_state(stored[start : start + size])
    return state, None if due == NO_DUE else due, decode_outbox(stored[start + size :])


def stages_of(stored: bytes) -> list[tuple[str, str]]:
    """(journey, stage) of the customer's active journeys, from the header alone; none for a
    value that does not decode (it is quarantined when its customer is next processed)."""
    try:
        _, _, stages_size, _ = _ENVELOPE.unpack_from(stored)
        blob = stored[_ENVELOPE.size : _ENVELOPE.size + stages_size].decode()
        pairs = [item.split("=", 1) for item in blob.split("\x1f") if item]
        return [(pair[0], pair[1]) for pair in pairs if len(pair) == 2]
    except (struct.error, UnicodeDecodeError, ValueError):
        return []


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

    def apply(
        self,
        stored: bytes | None,
        item: Mapping[str, Any] | Tick,
        now: int,
        source: Position,
        committed: Mapping[tuple[str, int], int] | None = None,
    ) -> Applied:
        """Advance one customer. ``stored`` is its value in the state table (None: new);
        ``source`` is where the message was read; ``committed`` maps (topic, partition) to the
        committed offset, to prune outbox entries that can no longer be needed."""
        try:
            state, indexed_due, outbox = unpack(stored) if stored is not None else (None, None, [])
        except Exception as exc:  # any decoding failure of our own stored bytes
            raise Quarantined(
                CORRUPT_STATE, f"the stored customer state cannot be decoded: {exc!r}", stored
            ) from exc
        resend = outputs_for(outbox, source)
        try:
            step = self.engine.advance(state, item, now)
        except Exception as exc:  # the engine is pure: its exceptions are about this input
            raise Quarantined(
                ENGINE_ERROR, f"the engine failed on this customer: {exc!r}", stored
            ) from exc
        customer_id = step.state["customer_id"]
        if isinstance(item, Tick) and indexed_due is not None and indexed_due <= item.at:
            indexed_due = None  # that wake-up has been consumed by this tick
        index_add = None
        due = step.next_due
        if due is not None and (indexed_due is None or due < indexed_due):
            index_add = index_key(source.partition, due, customer_id)
            indexed_due = due
        outgoing = self.outputs(step)
        outbox = prune(outbox, committed or {})
        if outgoing:
            outbox = [e for e in outbox if e.source != source]
            outbox.append(Entry.of(source, outgoing))
        return Applied(step, pack(step.state, indexed_due, outbox), outgoing, index_add, resend)

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
