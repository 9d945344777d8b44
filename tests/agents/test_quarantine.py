"""A stored value that cannot be decoded stops nothing: the touchpoint that meets it goes to the
dead-letter topic with the stored bytes, the customer starts afresh, the worker carries on."""

from __future__ import annotations

import time

from agents.app import partition_for
from percorso import clients
from percorso.topics import ensure_topics, internal_topics
from tests.agents.conftest import Cluster, Collect, produce, tp


def _touchpoint(event_id: str, customer: str, at: int) -> dict:
    return dict(tp(event_id, customer, "cart_add", at, sku="S-1"), source=None)


def test_corrupt_stored_state_is_quarantined_not_crash_looped(
    cluster: Cluster, collect: Collect
) -> None:
    settings = cluster.settings
    ensure_topics(
        clients.admin(settings),
        internal_topics(settings, settings.partitions, settings.replication_factor),
    )
    garbage = b"\x09not a customer state"
    producer = clients.producer(settings)
    producer.produce(
        f"{settings.app_id}-state-changelog",
        key=b"c:cust-bad",
        value=garbage,
        partition=partition_for("cust-bad", settings.partitions),
    )
    assert producer.flush(30) == 0

    worker = cluster.worker("w1").start()
    worker.wait_ready()  # recovery restores the corrupt value into RocksDB
    now = int(time.time() * 1000)
    produce(settings, [_touchpoint("e1", "cust-bad", now), _touchpoint("e2", "cust-ok", now)])
    col = collect(settings, [settings.topics.dlq, settings.topics.transitions])
    col.until(
        lambda: any(d["key"] == b"cust-bad" for d in col.records[settings.topics.dlq]),
        60,
        "the quarantined touchpoint in the dead-letter topic",
    )
    [dead] = [d for d in col.records[settings.topics.dlq] if d["key"] == b"cust-bad"]
    headers = dead["headers"]
    assert headers["percorso.error.class"] == b"CorruptState"
    assert headers["percorso.error.stored_state"] == garbage
    assert b"cannot be decoded" in headers["percorso.error.message"]
    assert dead["value"] == clients.Codecs.from_settings(settings).touchpoint.encode(
        _touchpoint("e1", "cust-bad", now)
    )

    # the worker goes on, and the customer is not blackholed: its next touchpoint applies
    produce(settings, [_touchpoint("e3", "cust-bad", now + 1)])
    col.until(
        lambda: {"e2", "e3"} <= {t["cause"] for t in col.records[settings.topics.transitions]},
        60,
        "transitions of the other customer and of the next touchpoint",
    )
    assert worker.alive() and worker.starts == 1
    assert worker.metric("percorso_dead_letters_total") == 1
    assert "e1" not in {t["cause"] for t in col.records[settings.topics.transitions]}
