"""A partition's state transaction (``agents.store``) on a real RocksDB: the deadline index it
answers ``due`` from is exactly the entries added and not removed, whatever the layering of
live, sealed and written transactions; and firing a backlog a round at a time walks each
removed entry a bounded number of times, not once per later round."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rocksdict import Options, Rdict

from agents import stored
from agents.processor import customer_key, index_key
from agents.store import PartitionStore
from agents.stored import Customer
from journeys.engine import Engine
from journeys.loader import load_catalog
from tests.journeys.harness import CATALOG_DIR

PARTITION = 3
STATE = Engine(load_catalog(CATALOG_DIR)).new_state("c")


def open_store(path: Path) -> PartitionStore:
    db = Rdict(str(path), Options(raw_mode=True))
    return PartitionStore(PARTITION, db, stored.decode)


def put(store: PartitionStore, customer: str, due: int | None) -> bytes | None:
    key = index_key(PARTITION, due, customer) if due is not None else None
    store.put_customer(customer_key(customer), Customer(dict(STATE), due), key)
    return key


def checkpoint(store: PartitionStore) -> None:
    """Seal, and write every sealed layer to RocksDB (what a successful checkpoint does)."""
    store.seal()
    layers = len(store.sealed)
    asyncio.run(store.write(list(store.changes(layers)), None, layers))


def live(indexed: set[bytes], until: int, limit: int | None) -> list[bytes]:
    low = b"d:%05d|" % PARTITION
    high = b"d:%05d|%013d}" % (PARTITION, until)
    keys = sorted(k for k in indexed if low <= k < high)
    return keys if limit is None else keys[:limit]


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 7), st.integers(0, 60)),
        st.tuples(st.just("fire"), st.integers(0, 60), st.sampled_from([1, 2, 3, None])),
        st.tuples(st.just("peek"), st.integers(0, 60), st.sampled_from([1, 4, None])),
        st.tuples(st.just("seal")),  # a checkpoint that failed after sealing: layers pile up
        st.tuples(st.just("checkpoint")),
        st.tuples(st.just("restart")),  # everything written, a fresh store on the same files
    ),
    max_size=60,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations=OPERATIONS)
# an entry added below where the scan starts, and written before the next scan
@example(
    operations=[
        ("add", 0, 10),
        ("fire", 60, None),
        ("add", 1, 5),
        ("checkpoint",),
        ("fire", 60, None),
    ]
)
def test_due_answers_exactly_the_entries_added_and_not_removed(
    tmp_path_factory: Any, operations: list[tuple[Any, ...]]
) -> None:
    path = tmp_path_factory.mktemp("store") / "db"
    store = open_store(path)
    indexed: set[bytes] = set()
    try:
        for op in operations:
            if op[0] == "add":
                key = put(store, f"c{op[1]}", op[2])
                assert key is not None
                indexed.add(key)
            elif op[0] in ("fire", "peek"):
                _, until, limit = op
                due = store.due(until, limit)
                assert due == live(indexed, until, limit), op
                if op[0] == "fire":
                    for key in due:
                        store.remove(key)
                        indexed.discard(key)
            elif op[0] == "seal":
                store.seal()
            elif op[0] == "checkpoint":
                checkpoint(store)
            else:
                checkpoint(store)
                store.db.close()
                store = open_store(path)
        assert store.due(10**6) == live(indexed, 10**6, None)
        checkpoint(store)
        assert store.due(10**6) == live(indexed, 10**6, None)
    finally:
        store.db.close()


class CountingDb:
    """The partition's RocksDB, counting the keys its scans walk (unit test only)."""

    def __init__(self, db: Rdict) -> None:
        self.db = db
        self.walked = 0

    def keys(self, from_key: bytes) -> Any:
        for key in self.db.keys(from_key=from_key):
            self.walked += 1
            yield key

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


@pytest.mark.parametrize("written", [False, True], ids=["removals-pending", "removals-written"])
def test_firing_a_backlog_in_rounds_walks_each_fired_entry_a_bounded_number_of_times(
    tmp_path: Path, written: bool
) -> None:
    """2,000 due entries fired 100 at a time. Each round's scan starts where the last one found
    an entry still indexed: the removed ones (pending in the transaction, or deleted from
    RocksDB, whose tombstones a scan from the start of the range would walk) are not walked
    again. Scanning from the start every round walks about 21,000 keys here."""
    store = open_store(tmp_path / "db")
    for n in range(2_000):
        put(store, f"c{n:05d}", 1_000 + n)
    checkpoint(store)
    counting = CountingDb(store.db)
    store.db = counting
    fired = 0
    while True:
        due = store.due(10_000, 100)
        if not due:
            break
        for key in due:
            store.remove(key)
        fired += len(due)
        if written:
            checkpoint(store)
    assert fired == 2_000
    assert counting.walked <= 2 * 2_000 + 40, counting.walked
    counting.db.close()
