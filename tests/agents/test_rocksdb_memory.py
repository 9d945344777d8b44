"""RocksDB's memory in a worker is bounded by one setting, whatever the number of partitions or
customers (agents/patches.py ``bound_rocksdb_memory``): a real faust table on real RocksDB."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import faust

from agents import patches

MB = 1 << 20


def _table(tmp_path: Path) -> Any:
    app = faust.App(
        "rocksdb-memory", broker="kafka://localhost:1", store="rocksdb://", datadir=str(tmp_path)
    )
    return app.Table("state", partitions=4, key_type=bytes, value_type=bytes)


def test_every_partition_shares_one_bounded_cache_for_blocks_and_memtables(
    tmp_path: Path,
) -> None:
    table = _table(tmp_path)
    options = patches.bound_rocksdb_memory(table, 16 * MB)
    assert patches.bound_rocksdb_memory(table, 16 * MB) is options  # applying again: the same
    dbs = [patches.partition_db(table, p) for p in range(4)]
    value = os.urandom(1000)  # incompressible: the memtables hold what is written
    peak = 0
    for batch in range(16):  # 64 MB written in all, 16 MB to each partition
        for n, db in enumerate(dbs):
            for i in range(1000):
                db[f"c:{batch}:{i}".encode()] = value + bytes([n])
        peak = max(peak, options.usage())
    # memtables of all four partitions are charged to the one cache, so what it holds never
    # goes far past its capacity (RocksDB's write-buffer manager flushes at 90% of its half,
    # and a block cache may overshoot by the entry being inserted)
    assert 2 * MB < peak <= 16 * MB * 1.25, peak
    for db in dbs:  # memtables to files: what is read next comes from blocks
        db.flush()
    flushed = options.usage()
    for n, db in enumerate(dbs):  # everything is still there, read through the shared cache
        for batch in range(16):
            for i in range(0, 1000, 50):
                assert db[f"c:{batch}:{i}".encode()] == value + bytes([n])
    assert options.usage() > flushed + 2 * MB  # the blocks read are in the one cache
    assert options.usage() <= 16 * MB * 1.25


def test_faust_defaults_would_give_each_partition_its_own_2_gb_cache(tmp_path: Path) -> None:
    """What the bound replaces."""
    table = _table(tmp_path)
    default = table.data.rocksdb_options
    assert not isinstance(default, patches.BoundedRocksDBOptions)
    assert default.block_cache_size == 2 * 1024**3
    assert patches.bound_rocksdb_memory(table, 16 * MB) is table.data.rocksdb_options
