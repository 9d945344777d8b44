"""Quix Streams: a per-key count in RocksDB state (runs in its own virtualenv: Quix pins an
older confluent-kafka than Percorso)."""

from __future__ import annotations

import os
import time
from typing import Any

from quixstreams import Application

target = int(os.environ["BENCH_TARGET"])
app = Application(
    broker_address=os.environ["BENCH_BROKER"],
    consumer_group=os.environ["BENCH_APP_ID"],
    auto_offset_reset="earliest",
    state_dir=os.environ["BENCH_DATA"],
    processing_guarantee="at-least-once",
    consumer_extra_config={"session.timeout.ms": 6000},
)
topic = app.topic(os.environ["BENCH_TOPIC"], key_deserializer="bytes", value_deserializer="bytes")
counts = {"n": 0, "first": 0.0}


def count(value: bytes, state: Any) -> None:
    state.set("n", state.get("n", 0) + 1)
    if counts["n"] == 0:
        counts["first"] = time.monotonic()
    counts["n"] += 1
    if counts["n"] >= target:
        print(f"BENCH n={counts['n']} first={counts['first']} last={time.monotonic()}", flush=True)
        os._exit(0)


app.dataframe(topic).update(count, stateful=True)
app.run()
