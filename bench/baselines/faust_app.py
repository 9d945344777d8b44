"""Faust baselines: a trivial counting agent, or one RocksDB table write per event.

Run: python -m bench.baselines.faust_app count|table  (configured by BENCH_* variables).
Prints ``BENCH n=<count> first=<t> last=<t>`` (monotonic seconds) once it has seen the target.
"""

from __future__ import annotations

import os
import sys
import time

import faust
from faust.worker import Worker

MODE = sys.argv[1]
TARGET = int(os.environ["BENCH_TARGET"])
app = faust.App(
    os.environ["BENCH_APP_ID"],
    broker=f"kafka://{os.environ['BENCH_BROKER']}",
    store="rocksdb://",
    datadir=os.environ["BENCH_DATA"],
    web_enabled=False,
    consumer_auto_offset_reset="earliest",
    broker_session_timeout=6.0,
    broker_rebalance_timeout=6.0,
    broker_heartbeat_interval=1.0,
    recovery_consistency_check=False,
    topic_partitions=int(os.environ["BENCH_PARTITIONS"]),
    producer_linger=0.02,
)
topic = app.topic(os.environ["BENCH_TOPIC"], key_serializer="raw", value_serializer="raw")
table = app.Table("counts", key_type=bytes, value_type=bytes)
table.key_serializer = "raw"  # type: ignore[attr-defined]  # faust falls back to JSON
table.value_serializer = "raw"  # type: ignore[attr-defined]
state = {"n": 0, "first": 0.0}


def done() -> None:
    print(f"BENCH n={state['n']} first={state['first']} last={time.monotonic()}", flush=True)
    os._exit(0)


@app.agent(topic)
async def consume(stream: faust.StreamT) -> None:
    async for event in stream.events():
        if state["n"] == 0:
            state["first"] = time.monotonic()
        state["n"] += 1
        if MODE == "table":
            key = event.message.key or b""
            current = table.get(key)
            table[key] = str(int(current or b"0") + 1).encode()
        if state["n"] >= TARGET:
            done()


if __name__ == "__main__":
    Worker(app, loglevel="warning", quiet=True).execute_from_commandline()
