"""The outbox: outputs kept with the state that caused them, until their source is committed.

Without Kafka transactions, a worker killed at the wrong moment can leave a customer's new state
durable in the changelog while the actions that state change produced never reached their
topics; reprocessing then sees a duplicate and sends nothing, and the action is lost. So the
outputs of a step are stored *in the same record* as the state (durable together), tagged with
the position of the message that caused them, and re-sent when that message is processed again.
Action ids are deterministic, so a re-send is a duplicate consumers can drop, never a new action.
Entries are pruned once their source offset is committed: Faust flushes the producer before it
commits, so by then the outputs are durable.

Binary layout (big-endian), compact and dependency-free:
``entries:u16`` then per entry ``source topic, partition:i32, offset:i64, payload``; a payload
is ``outputs:u16`` and per output ``topic, key (len -1 for none), value, headers:u16 [name,
value]``; strings and byte strings are ``len:i32`` + bytes. Payloads are decoded only to resend.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

_U16 = struct.Struct(">H")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")


@dataclass(frozen=True)
class Outgoing:
    """One record to send."""

    topic: str
    key: bytes | None
    value: bytes | None  # None: a null value (a dead letter of a null record)
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass(frozen=True)
class Position:
    """Where a message was read: the identity of a step, for re-sending its outputs."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Entry:
    """The outputs of one step. ``payload`` stays encoded: it is only decoded when the step's
    message is processed again after a crash, which is rare, while every write carries it."""

    source: Position
    payload: bytes

    @classmethod
    def of(cls, source: Position, outputs: Iterable[Outgoing]) -> Entry:
        return cls(source, encode_outputs(outputs))

    @property
    def outputs(self) -> tuple[Outgoing, ...]:
        return decode_outputs(self.payload)


def _bytes(out: list[bytes], data: bytes | None) -> None:
    if data is None:
        out.append(_I32.pack(-1))
    else:
        out.append(_I32.pack(len(data)))
        out.append(data)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def _take(self, fmt: struct.Struct) -> int:
        (value,) = fmt.unpack_from(self.data, self.at)
        self.at += fmt.size
        return int(value)

    def u16(self) -> int:
        return self._take(_U16)

    def i32(self) -> int:
        return self._take(_I32)

    def i64(self) -> int:
        return self._take(_I64)

    def blob(self) -> bytes | None:
        size = self.i32()
        if size < 0:
            return None
        value = self.data[self.at : self.at + size]
        if len(value) != size:
            raise ValueError("outbox truncated")
        self.at += size
        return value

    def text(self) -> str:
        value = self.blob()
        if value is None:
            raise ValueError("outbox: missing text")
        return value.decode()


def encode_outputs(outputs: Iterable[Outgoing]) -> bytes:
    items = list(outputs)
    out = [_U16.pack(len(items))]
    for o in items:
        _bytes(out, o.topic.encode())
        _bytes(out, o.key)
        _bytes(out, o.value)
        out.append(_U16.pack(len(o.headers)))
        for name, value in o.headers:
            _bytes(out, name.encode())
            _bytes(out, value)
    return b"".join(out)


def decode_outputs(payload: bytes) -> tuple[Outgoing, ...]:
    r = _Reader(payload)
    outputs = []
    for _ in range(r.u16()):
        topic, key, value = r.text(), r.blob(), r.blob()
        headers = [(r.text(), r.blob() or b"") for _ in range(r.u16())]
        outputs.append(Outgoing(topic, key, value, headers))
    if r.at != len(payload):
        raise ValueError("outbox: bytes left over")
    return tuple(outputs)


def encode(entries: Iterable[Entry]) -> bytes:
    items = list(entries)
    out = [_U16.pack(len(items))]
    for entry in items:
        _bytes(out, entry.source.topic.encode())
        out.append(_I32.pack(entry.source.partition))
        out.append(_I64.pack(entry.source.offset))
        _bytes(out, entry.payload)
    return b"".join(out)


def decode(data: bytes) -> list[Entry]:
    """The entries, their payloads left encoded."""
    if not data:
        return []
    r = _Reader(data)
    entries = []
    for _ in range(r.u16()):
        source = Position(r.text(), r.i32(), r.i64())
        entries.append(Entry(source, r.blob() or b""))
    if r.at != len(data):
        raise ValueError("outbox: bytes left over")
    return entries


def prune(entries: Iterable[Entry], committed: Mapping[tuple[str, int], int]) -> list[Entry]:
    """Drop entries whose source offset is below the committed offset of its partition."""
    return [
        e
        for e in entries
        if e.source.offset >= committed.get((e.source.topic, e.source.partition), -1)
    ]


def outputs_for(entries: Iterable[Entry], source: Position) -> list[Outgoing]:
    return [o for e in entries if e.source == source for o in e.outputs]
