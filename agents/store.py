"""One partition's slice of the state table, changed in one transaction per checkpoint.

Between two checkpoints, the customers a partition's records change stay decoded in memory
(``customers``) and every other key written (deadline-index entries, removals) is kept in
``writes``: the *live* transaction. A checkpoint (``agents.checkpoint``) first ``seal()``s it:
the live transaction becomes a sealed ``Layer`` and a fresh one takes the records that follow,
so records keep being applied while the sealed layers are made durable. It asks for
``changes()``: each key of the sealed layers once per layer, the customers encoded once, in an
order that is safe to cut anywhere (new index entries, then states, then removals); it produces
them to the changelog and, once they are delivered, ``write()``s them to RocksDB in one
``WriteBatch`` together with the changelog offset they reach, and drops the layers. A
checkpoint that fails leaves its layers sealed, and the next one writes them (oldest first)
before its own. So a customer is decoded and encoded once per checkpoint, however many of its
records the interval held, and the local store always equals a prefix of the changelog.

Reads see the live transaction, then the sealed layers (newest first), then RocksDB. A customer
read from a sealed layer is a copy (encoded, and decoded again), since the engine changes the
state it is given in place and the sealed value is what the checkpoint writes.

The memory this takes is bounded by the number of keys changed in an interval: the partition
loop checkpoints when ``dirty`` reaches its limit, whatever the time, and waits for a checkpoint
still under way before it goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any, cast

from rocksdict import WriteBatch

from agents import stored as stored_codec
from agents.processor import index_range
from agents.stored import Customer

WRITE_CHUNK = 2_000  # keys put in a WriteBatch between two yields to the event loop
PERSISTED_OFFSET_KEY = b"__faust\0offset__"
"""Where faust's RocksDB store keeps the changelog offset a partition's database reflects
(``faust.stores.rocksdb.Store.offset_key``): table recovery reads the changelog after it."""


class Layer:
    """A sealed transaction: what a partition changed in one checkpoint interval."""

    __slots__ = ("customers", "first_add", "index_adds", "writes")

    def __init__(
        self,
        customers: dict[bytes, Customer | bytes],
        index_adds: dict[bytes, None],
        writes: dict[bytes, bytes | None],
        first_add: bytes | None,
    ) -> None:
        self.customers = customers  # decoded, or encoded once a read or the checkpoint did
        self.index_adds = index_adds
        self.writes = writes
        self.first_add = first_add  # the lowest key ever put in ``index_adds`` (None: none)

    def __len__(self) -> int:
        return len(self.customers) + len(self.index_adds) + len(self.writes)


_ABSENT = object()


class PartitionStore:
    def __init__(self, partition: int, db: Any, load: Callable[[bytes], Customer]) -> None:
        self.partition = partition
        self.db = db  # the partition's RocksDB (rocksdict.Rdict, raw mode)
        self._load = load
        # the live transaction: changed since the last seal
        self.customers: dict[bytes, Customer] = {}
        self.index_adds: dict[bytes, None] = {}
        self.writes: dict[bytes, bytes | None] = {}  # other keys: None removes
        self.first_add: bytes | None = None  # the lowest key put in ``index_adds`` (None: none)
        self.sealed: list[Layer] = []  # sealed, not yet written to RocksDB; oldest first
        # where the deadline-index scan of RocksDB starts: no entry below it is still indexed
        # (entries fired since are removed in a transaction, or deleted: RocksDB would walk
        # their tombstones on every scan from the start of the range)
        self.scan_from = index_range(partition, 0)[0]

    @property
    def dirty(self) -> int:
        """Keys changed and not yet written to RocksDB (live and sealed)."""
        live = len(self.customers) + len(self.index_adds) + len(self.writes)
        return live + sum(len(layer) for layer in self.sealed) if self.sealed else live

    # -- reads ------------------------------------------------------------------------------

    def customer(self, key: bytes) -> Customer | None:
        """The customer under ``key`` (None: unknown). Raises what ``load`` raises for a
        stored value that does not decode."""
        customer = self.customers.get(key)
        if customer is not None:
            return customer
        if key in self.writes:
            raw = self.writes[key]
            return None if raw is None else self._load(raw)
        for layer in reversed(self.sealed):
            found = layer.customers.get(key)
            if found is not None:
                if not isinstance(found, bytes):  # a copy: the sealed one is not changed
                    found = layer.customers[key] = stored_codec.encode(found)
                return self._load(found)
            if key in layer.writes:
                raw = layer.writes[key]
                return None if raw is None else self._load(raw)
        raw = self.db.get(key)
        return None if raw is None else self._load(raw)

    def _indexed(self, key: bytes) -> bool:
        """Whether a deadline-index entry present in an older layer or in RocksDB is still
        there: not removed by a newer layer."""
        if key in self.writes:
            return self.writes[key] is not None
        for layer in reversed(self.sealed):
            if key in layer.index_adds:
                return True
            if key in layer.writes:
                return layer.writes[key] is not None
        return True

    def due(self, until: int, limit: int | None = None) -> list[bytes]:
        """Deadline-index keys due at or before ``until`` (the first ``limit``): a range scan
        of RocksDB plus the entries of the transactions not yet written, less those removed
        since.

        The scan starts at ``scan_from`` and moves it up to the first entry still indexed (but
        never past an entry added and not yet in RocksDB), so entries fired and removed are
        walked over once, not again on every later scan: firing a backlog a round at a time
        would otherwise be quadratic in it. A key added below it lowers it
        (``put_customer``)."""
        low, high = index_range(self.partition, until)
        keys: list[bytes] = []
        sealed = self.sealed
        writes = self.writes
        stop: bytes | None = None  # the first key not walked over: still indexed, or not due
        for key in self.db.keys(from_key=self.scan_from):  # never below ``low``
            if key >= high or len(keys) == limit:
                if stop is None:
                    stop = key
                break
            if sealed:
                if self._indexed(key):
                    keys.append(key)
            elif writes.get(key, b"") is not None:  # not removed in this interval
                keys.append(key)
            else:
                continue
            if stop is None:
                stop = key
        if stop is None:  # nothing left at or after ``scan_from``: only additions can come
            stop = high
        # never past an entry added and not yet written: RocksDB gets it from the checkpoint
        for first_add in (self.first_add, *(layer.first_add for layer in sealed)):
            if first_add is not None and first_add < stop:
                stop = first_add
        self.scan_from = stop
        added: list[bytes] = []
        if self.first_add is not None and self.first_add < high:
            added = [k for k in self.index_adds if low <= k < high]
        for layer in sealed:
            if layer.first_add is not None and layer.first_add < high:
                added += [k for k in layer.index_adds if low <= k < high and self._indexed(k)]
        if added:
            keys = sorted(set(keys).union(added))  # an entry re-added is in both
            if limit is not None:
                del keys[limit:]
        return keys

    def rescan(self) -> None:
        """Scan the deadline index from the start of the range again (entries were written
        to RocksDB other than through ``put_customer``: table recovery)."""
        self.scan_from = index_range(self.partition, 0)[0]

    # -- writes -----------------------------------------------------------------------------

    def put_customer(self, key: bytes, customer: Customer, index_add: bytes | None) -> None:
        self.customers[key] = customer
        self.writes.pop(key, None)
        if index_add is not None:
            self.index_adds[index_add] = None
            self.writes.pop(index_add, None)
            if self.first_add is None or index_add < self.first_add:
                self.first_add = index_add
            if index_add < self.scan_from:
                self.scan_from = index_add

    def remove(self, key: bytes) -> None:
        self.customers.pop(key, None)
        if key in self.index_adds:
            del self.index_adds[key]
        self.writes[key] = None

    def forget(self, key: bytes) -> None:
        """Drop what the live transaction changed of ``key``: the next read sees the value of
        the last checkpoint (sealed or written)."""
        self.customers.pop(key, None)

    # -- the checkpoint ---------------------------------------------------------------------

    def seal(self) -> None:
        """Close the live transaction for a checkpoint; a fresh one takes what follows."""
        if self.customers or self.index_adds or self.writes:
            self.sealed.append(
                Layer(
                    cast(dict[bytes, Customer | bytes], self.customers),
                    self.index_adds,
                    self.writes,
                    self.first_add,
                )
            )
            self.customers = {}
            self.index_adds = {}
            self.writes = {}
            self.first_add = None

    def changes(self, layers: int) -> Iterator[tuple[bytes, bytes | None]]:
        """Every key of the first ``layers`` sealed layers once per layer (oldest first), in a
        safe order: index
        entries first (an entry without its state is a no-op wake-up), then the customers, then
        removals (a fired entry disappears only after the state it woke up). Values that a
        read encoded already are not encoded again."""
        encode = stored_codec.encode
        for layer in self.sealed[:layers]:
            for key in list(layer.index_adds):
                yield key, b""
            for key, customer in list(layer.customers.items()):
                yield key, customer if isinstance(customer, bytes) else encode(customer)
            yield from list(layer.writes.items())

    async def write(
        self, changes: list[tuple[bytes, bytes | None]], offset: int | None, layers: int
    ) -> None:
        """Apply ``changes`` (of the first ``layers`` sealed layers, as produced to the
        changelog) to RocksDB in one batch with the changelog ``offset`` they reach, and drop
        those layers. The batch is built in chunks with the event loop free in between, and
        written from a thread (RocksDB releases the GIL while it writes): records go on
        meanwhile, reading the sealed layers until they are dropped."""
        batch = WriteBatch(raw_mode=True)
        for n, (key, value) in enumerate(changes, 1):
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
            if n % WRITE_CHUNK == 0:
                await asyncio.sleep(0)
        if offset is not None:
            batch.put(PERSISTED_OFFSET_KEY, str(offset).encode())
        await asyncio.to_thread(self.db.write, batch)
        del self.sealed[:layers]

    def clear(self) -> None:
        """Forget every transaction not yet written (the partition is no longer this
        worker's)."""
        self.customers.clear()
        self.index_adds.clear()
        self.writes.clear()
        self.first_add = None
        self.sealed.clear()
