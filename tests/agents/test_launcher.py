"""A worker started by the demo, the tests or the benchmarks runs with the caller's settings."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from agents.launcher import worker_env
from percorso.config import Settings, TopicNames


def test_the_worker_environment_gives_back_every_setting_it_carries() -> None:
    settings = replace(
        Settings(),
        bootstrap_servers="127.0.0.1:9",
        journeys_dir=Path("/j"),
        data_dir=Path("/d"),
        web_port=7001,
        app_id="app-x",
        topics=TopicNames(
            touchpoints="tp-x",
            actions_prefix="act-x.",
            transitions="tr-x",
            dlq="dlq-x",
            conversions="conv-x",
        ),
        partitions=3,
        replication_factor=1,
        tick_interval_s=0.3,
        window_grace_ms=250,
        time_scale=60.0,
        gc_threshold=(5000, 7, 9),
        rocksdb_memory_mb=48,
    )
    seen = Settings.from_env(worker_env(settings, "embedded"))
    assert seen.topics == settings.topics  # the conversions topic included
    assert seen.gc_threshold == (5000, 7, 9)
    assert seen.rocksdb_memory_mb == 48
    assert (
        Settings.from_env(worker_env(replace(settings, gc_threshold=None), "x")).gc_threshold
        is None
    )
    for name in (
        "bootstrap_servers",
        "journeys_dir",
        "data_dir",
        "web_port",
        "app_id",
        "partitions",
        "replication_factor",
        "tick_interval_s",
        "window_grace_ms",
        "time_scale",
        "limits",
    ):
        assert getattr(seen, name) == getattr(settings, name), name
    assert seen.broker_profile == "embedded"
