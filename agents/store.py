"""One partition's slice of the state table, changed in one transaction per checkpoint.

Between two checkpoints, the customers a partition's records change stay decoded in memory
(``customers``) and every other key written (deadline-index entries, removals) is kept in
``writes``; reads see those first, then the partition's RocksDB. A checkpoint
(``agents.checkpoint``) asks for ``changes()``: each dirty key once, the customers encoded
once, in an order that is safe to cut anywhere (new index entries, then states, then
removals); it produces them to the changelog and, once they are delivered, ``write()``s them to
RocksDB in one ``WriteBatch`` together with the changelog offset they reach. So a customer is
decoded and encoded once per checkpoint, however many of its records the interval held, and the
local store always equals a prefix of the changelog.

The memory this takes is bounded by the number of keys changed in an interval: the partition
loop checkpoints when ``dirty`` reaches its limit, whatever the time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from rocksdict import WriteBatch

from agents import stored as stored_codec
from agents.processor import index_range
from agents.stored import Customer

PERSISTED_OFFSET_KEY = b"__faust\0offset__"
"""Where faust's RocksDB store keeps the changelog offset a partition's database reflects
(``faust.stores.rocksdb.Store.offset_key``): table recovery reads the changelog after it."""


class PartitionStore:
    def __init__(self, partition: int, db: Any, load: Callable[[bytes], Customer]) -> None:
        self.partition = partition
        self.db = db  # the partition's RocksDB (rocksdict.Rdict, raw mode)
        self._load = load
        self.customers: dict[bytes, Customer] = {}  # changed since the last checkpoint
        self.index_adds: dict[bytes, None] = {}
        self.writes: dict[bytes, bytes | None] = {}  # other keys: None removes

    @property
    def dirty(self) -> int:
        return len(self.customers) + len(self.index_adds) + len(self.writes)

    # -- reads ------------------------------------------------------------------------------

    def customer(self, key: bytes) -> Customer | None:
        """The customer under ``key`` (None: unknown). Raises what ``load`` raises for a
        stored value that does not decode."""
        customer = self.customers.get(key)
        if customer is not None:
            return customer
        raw = self.writes[key] if key in self.writes else self.db.get(key)
        return None if raw is None else self._load(raw)

    def raw(self, key: bytes) -> bytes | None:
        customer = self.customers.get(key)
        if customer is not None:
            return stored_codec.encode(customer)
        if key in self.writes:
            return self.writes[key]
        return self.db.get(key)

    def due(self, until: int, limit: int | None = None) -> list[bytes]:
        """Deadline-index keys due at or before ``until`` (the first ``limit``): a range scan
        of RocksDB plus the entries of this interval, less those removed in it."""
        low, high = index_range(self.partition, until)
        keys: list[bytes] = []
        for key in self.db.keys(from_key=low):
            if key >= high or len(keys) == limit:
                break
            if self.writes.get(key, b"") is not None:  # not removed in this interval
                keys.append(key)
        if self.index_adds:
            keys.extend(k for k in self.index_adds if low <= k < high)
            keys.sort()
            if limit is not None:
                del keys[limit:]
        return keys

    # -- writes -----------------------------------------------------------------------------

    def put_customer(self, key: bytes, customer: Customer, index_add: bytes | None) -> None:
        self.customers[key] = customer
        self.writes.pop(key, None)
        if index_add is not None:
            self.index_adds[index_add] = None
            self.writes.pop(index_add, None)

    def remove(self, key: bytes) -> None:
        self.customers.pop(key, None)
        if key in self.index_adds:
            del self.index_adds[key]
        self.writes[key] = None

    def forget(self, key: bytes) -> None:
        """Drop what this interval changed of ``key``: the next read sees RocksDB's value."""
        self.customers.pop(key, None)

    # -- the checkpoint ---------------------------------------------------------------------

    def changes(self) -> Iterator[tuple[bytes, bytes | None]]:
        """Every key changed in this interval once, in a safe order: index entries first (an
        entry without its state is a no-op wake-up), then the customers, then removals (a
        fired entry disappears only after the state it woke up)."""
        for key in self.index_adds:
            yield key, b""
        for key, customer in self.customers.items():
            yield key, stored_codec.encode(customer)
        yield from self.writes.items()

    def write(self, changes: list[tuple[bytes, bytes | None]], offset: int | None) -> None:
        """Apply ``changes`` (as produced to the changelog) to RocksDB in one batch with the
        changelog ``offset`` they reach, and start a new interval."""
        batch = WriteBatch(raw_mode=True)
        for key, value in changes:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        if offset is not None:
            batch.put(PERSISTED_OFFSET_KEY, str(offset).encode())
        self.db.write(batch)
        self.clear()

    def clear(self) -> None:
        self.customers.clear()
        self.index_adds.clear()
        self.writes.clear()
