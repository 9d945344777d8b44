"""A raw aiokafka consumer (getmany), the floor under any Faust app."""

from __future__ import annotations

import asyncio
import os
import time

from aiokafka import AIOKafkaConsumer


async def main() -> None:
    target = int(os.environ["BENCH_TARGET"])
    consumer = AIOKafkaConsumer(
        os.environ["BENCH_TOPIC"],
        bootstrap_servers=os.environ["BENCH_BROKER"],
        group_id=os.environ["BENCH_APP_ID"],
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        rebalance_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    await consumer.start()
    n, first = 0, 0.0
    try:
        while n < target:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batches.values():
                if records and n == 0:
                    first = time.monotonic()
                n += len(records)
    finally:
        print(f"BENCH n={n} first={first} last={time.monotonic()}", flush=True)
        await consumer.stop()


asyncio.run(main())
