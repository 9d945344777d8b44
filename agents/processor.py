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
from percorso.limits import ENV
from percorso.records import FutureEvent, InvalidTouchpoint, check_event_time, validate_touchpoint

_ENVELOPE = struct.Struct(">bqII")
_ENVELOPE_VERSION = 1
NO_DUE = -1

# Dead-letter error classes (header percorso.error.class)
UNDECODABLE = "SerializationError"
INVALID = "InvalidTouchpoint"
LATE = "LateEvent"
FUTURE = "FutureEvent"  # dated further ahead of the worker's clock than the allowed skew
STATE_TOO_LARGE = "StateTooLarge"  # applying it would take the stored value beyond the limit
OUTPUT_TOO_LARGE = "OutputTooLarge"  # an output the broker refused as too large, cut to fit
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
        self.limits = settings.limits
        self.correlated = frozenset(
            k for j in engine.catalog.journeys for w in j.windows for k in w.correlate
        )

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
        packed = pack(step.state, indexed_due, outbox)
        limit = self.limits.max_state_bytes
        if len(packed) > limit and not isinstance(item, Tick):
            # refused before anything is sent or stored: the customer stays as it was. A tick
            # only fires and removes what a touchpoint stored, so its result is always kept.
            raise Quarantined(
                STATE_TOO_LARGE,
                f"applying this touchpoint would make the customer's stored value "
                f"{len(packed)} bytes, more than {limit} "
                f"(limit max_state_bytes, {ENV['max_state_bytes']})",
                None,
            )
        return Applied(step, packed, outgoing, index_add, resend)

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
