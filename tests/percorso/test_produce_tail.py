"""produce -> broker -> tail through the real command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from percorso.config import Settings


def run_cli(
    settings: Settings, *args: str, stdin: str | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers or "",
        "PERCORSO_TOPIC_TOUCHPOINTS": settings.topics.touchpoints,
        "PERCORSO_TOPIC_ACTIONS_PREFIX": settings.topics.actions_prefix,
        "PERCORSO_TOPIC_TRANSITIONS": settings.topics.transitions,
        "PERCORSO_TOPIC_DLQ": settings.topics.dlq,
        "PERCORSO_PARTITIONS": str(settings.partitions),
        "PERCORSO_REPLICATION_FACTOR": str(settings.replication_factor),
    }
    return subprocess.run(
        [sys.executable, "-m", "percorso.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def test_produce_file_then_tail(settings_factory: Callable[..., Settings], tmp_path: Path) -> None:
    settings = settings_factory()
    events = tmp_path / "events.jsonl"
    lines = [
        {
            "event_id": "e1",
            "customer_id": "c1",
            "channel": "web",
            "type": "cart_add",
            "occurred_at": "2026-03-01T10:00:00Z",
            "attributes": {"sku": "A1", "amount": 30},
        },
        "this is not json",
        {
            "event_id": "e2",
            "customer_id": "c2",
            "channel": "app",
            "type": "app_login",
            "occurred_at": 1772359200000,
        },
        {
            "event_id": "e3",
            "customerId": "c3",
            "channel": "web",
            "type": "page_view",
            "occurred_at": 1772359200000,
        },
        {
            "event_id": "e4",
            "customer_id": "c1",
            "channel": "web",
            "type": "purchase",
            "occurred_at": "2026-03-01T10:05:00Z",
        },
    ]
    events.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    produced = run_cli(settings, "produce", "--events", str(events), "--ensure-topics")
    assert produced.returncode == 2, produced.stderr  # 2: some lines were invalid
    summary = json.loads(produced.stdout)
    assert summary["sent"] == summary["delivered"] == 3
    assert summary["invalid"] == 2 and summary["failed"] == 0
    assert f"{events}:2: skipped: not JSON" in produced.stderr
    assert f"{events}:4: skipped: customerId: unknown field" in produced.stderr

    tailed = run_cli(
        settings, "tail", settings.topics.touchpoints, "--max", "3", "--idle-timeout", "20"
    )
    assert tailed.returncode == 0, tailed.stderr
    records = [json.loads(line) for line in tailed.stdout.splitlines()]
    assert sorted(r["event_id"] for r in records) == ["e1", "e2", "e4"]
    first = next(r for r in records if r["event_id"] == "e1")
    assert first == {
        "event_id": "e1",
        "customer_id": "c1",
        "channel": "web",
        "type": "cart_add",
        "occurred_at": 1772359200000,
        "attributes": {"sku": "A1", "amount": "30"},
        "source": None,
    }
    # the key is the customer id, so one customer's events stay in order on one partition
    meta = run_cli(
        settings,
        "tail",
        settings.topics.touchpoints,
        "--max",
        "3",
        "--idle-timeout",
        "20",
        "--with-meta",
    )
    rows = [json.loads(line) for line in meta.stdout.splitlines()]
    by_customer = {r["key"]: r["partition"] for r in rows if r["key"] == "c1"}
    assert all(r["key"] == r["value"]["customer_id"] for r in rows)
    assert len(by_customer) == 1


def test_produce_synthetic_is_reproducible(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory()
    out = run_cli(
        settings,
        "produce",
        "--synthetic",
        "--customers",
        "20",
        "--count",
        "300",
        "--seed",
        "9",
        "--start-ms",
        "1772359200000",
        "--ensure-topics",
        "--quiet",
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["delivered"] == 300
    tailed = run_cli(
        settings, "tail", settings.topics.touchpoints, "--max", "300", "--idle-timeout", "20"
    )
    got = sorted(
        (json.loads(line) for line in tailed.stdout.splitlines()), key=lambda r: r["event_id"]
    )
    from percorso.synthetic import SyntheticTraffic

    want = SyntheticTraffic(20, seed=9, start_ms=1772359200000).take(300)
    assert got == sorted(want, key=lambda r: r["event_id"])


def test_tail_refuses_unknown_topics(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory()
    out = run_cli(settings, "tail", "not-percorso", "--max", "1", "--idle-timeout", "2")
    assert out.returncode != 0
    assert "is not a Percorso topic" in out.stderr


def test_commands_without_a_broker_say_so() -> None:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    out = subprocess.run(
        [sys.executable, "-m", "percorso.cli", "tail", "touchpoints"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert out.returncode != 0 and "no broker" in out.stderr


def test_unpaced_synthetic_traffic_is_not_dated_ahead_of_the_clock() -> None:
    """``--count N`` sent as fast as possible ends now: workers refuse event times more than
    the allowed skew ahead of their clock. Paced traffic is live and starts now."""
    import argparse
    import time

    from percorso.cli import _synthetic_start

    now = int(time.time() * 1000)
    start = _synthetic_start(argparse.Namespace(count=60_000, rate=None))
    assert abs(start - (now - 600_000)) < 5_000
    assert abs(_synthetic_start(argparse.Namespace(count=None, rate=None)) - now) < 5_000
    assert abs(_synthetic_start(argparse.Namespace(count=500, rate=50.0)) - now) < 5_000


def test_tail_keeps_a_null_dead_letter_value_apart_from_an_empty_one() -> None:
    from percorso.tail import decode_message

    class Message:
        def __init__(self, value: bytes | None) -> None:
            self._value = value

        def value(self) -> bytes | None:
            return self._value

        def key(self) -> bytes | None:
            return None

        def headers(self) -> list[tuple[str, bytes]]:
            return [("percorso.error.class", b"SerializationError")]

        def topic(self) -> str:
            return "percorso.touchpoints.dlq"

        def partition(self) -> int:
            return 0

        def offset(self) -> int:
            return 1

    assert decode_message(Message(None), None, True)["value_base64"] is None
    assert decode_message(Message(b""), None, True)["value_base64"] == ""
    assert decode_message(Message(b"\x01"), None, True)["value_base64"] == "AQ=="
