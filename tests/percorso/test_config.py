"""Settings read from the environment: the worker's garbage-collector thresholds."""

from __future__ import annotations

import pytest

from percorso.config import Settings


def test_the_gc_threshold_defaults_to_the_measured_one_and_can_be_pythons() -> None:
    assert Settings.from_env({}).gc_threshold == (20_000, 20, 10)
    assert Settings.from_env({"PERCORSO_GC_THRESHOLD": "python"}).gc_threshold is None
    assert Settings.from_env({"PERCORSO_GC_THRESHOLD": " 700, 10,10"}).gc_threshold == (700, 10, 10)


@pytest.mark.parametrize("value", ["lots", "1,2", "1,2,3,4", "0,10,10", "-1,10,10", "1.5,2,3"])
def test_a_malformed_gc_threshold_is_refused_with_the_variable_named(value: str) -> None:
    with pytest.raises(ValueError, match="PERCORSO_GC_THRESHOLD"):
        Settings.from_env({"PERCORSO_GC_THRESHOLD": value})


def test_the_rocksdb_memory_is_256_mb_unless_set() -> None:
    assert Settings.from_env({}).rocksdb_memory_mb == 256
    assert Settings.from_env({"PERCORSO_ROCKSDB_MEMORY_MB": "64"}).rocksdb_memory_mb == 64


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "lots"])
def test_a_malformed_rocksdb_memory_is_refused_with_the_variable_named(value: str) -> None:
    with pytest.raises(ValueError, match="PERCORSO_ROCKSDB_MEMORY_MB"):
        Settings.from_env({"PERCORSO_ROCKSDB_MEMORY_MB": value})
