"""Reads the transitions, action and dead-letter topics into the aggregator.

Partitions are assigned, not subscribed: the analytics process needs every partition of every
topic, and its position is the one stored in RocksDB with the figures (``store.py``), not a
committed group offset. Topics or partitions created later are picked up on a metadata refresh.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from percorso import clients
from percorso.analytics.aggregator import Aggregator
from percorso.codec import SerializationError
from percorso.config import Settings

log = logging.getLogger(__name__)

METADATA_REFRESH_S = 5.0
RATE_WINDOW_S = 10.0


class Stream:
    def __init__(self, settings: Settings, aggregator: Aggregator, commit_interval_s: float = 0.5):
        self.settings = settings
        self.aggregator = aggregator
        self.commit_interval_s = commit_interval_s
        self.codecs = clients.Codecs.from_settings(settings)
        self.consumed = 0
        self._samples: deque[tuple[float, int]] = deque()
        self._assigned: set[tuple[str, int]] = set()
        self.status: dict[str, Any] = {"events_per_second": 0.0, "lag": None, "partitions": 0}

    def topics(self) -> list[str]:
        t = self.settings.topics
        return [
            t.transitions,
            t.dlq,
            *(t.actions(c) for c in sorted(self.settings.action_channels)),
        ]

    def run(self, stop: threading.Event) -> None:
        consumer = clients.consumer(
            self.settings,
            **{"group.id": f"{self.settings.app_id}-analytics", "enable.partition.eof": False},
        )
        try:
            self._assign_new(consumer)
            refreshed = committed = time.monotonic()
            while not stop.is_set():
                for msg in consumer.consume(500, timeout=0.2):
                    if msg.error():
                        log.warning("consume error: %s", msg.error())
                        continue
                    self._apply(msg)
                    self.consumed += 1
                now = time.monotonic()
                if now - committed >= self.commit_interval_s:
                    self.aggregator.commit()
                    self._measure(consumer, now)
                    committed = now
                if now - refreshed >= METADATA_REFRESH_S:
                    self._assign_new(consumer)
                    refreshed = now
        finally:
            self.aggregator.commit()
            consumer.close()

    def _assign_new(self, consumer: Any) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        metadata = consumer.list_topics(timeout=10)
        new = [
            (topic, p)
            for topic in self.topics()
            if topic in metadata.topics and metadata.topics[topic].error is None
            for p in sorted(metadata.topics[topic].partitions)
            if (topic, p) not in self._assigned
        ]
        if not new:
            return
        stored = self.aggregator.offsets
        consumer.incremental_assign(
            [TopicPartition(t, p, stored.get((t, p), OFFSET_BEGINNING)) for t, p in new]
        )
        self._assigned.update(new)
        self.status = {**self.status, "partitions": len(self._assigned)}

    def _apply(self, msg: Any) -> None:
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        t = self.settings.topics
        if topic == t.dlq:
            headers = {
                k: (v.decode(errors="replace") if v is not None else None)
                for k, v in (msg.headers() or [])
            }
            key = msg.key().decode(errors="replace") if msg.key() is not None else None
            _, timestamp = msg.timestamp()
            self.aggregator.dead_letter(headers, key, timestamp, topic, partition, offset)
            return
        try:
            if topic == t.transitions:
                self.aggregator.transition(
                    self.codecs.transition.decode(msg.value()), topic, partition, offset
                )
            else:
                self.aggregator.action(
                    self.codecs.action.decode(msg.value()), topic, partition, offset
                )
        except SerializationError as exc:
            log.warning("%s[%d]@%d: undecodable, skipped: %s", topic, partition, offset, exc)
            self.aggregator.skipped(topic, partition, offset)

    def _measure(self, consumer: Any, now: float) -> None:
        """Events per second over the last few seconds, and records not yet read (from the
        high watermarks of the latest fetches: no extra request to the broker)."""
        from confluent_kafka import TopicPartition

        self._samples.append((now, self.consumed))
        while self._samples and now - self._samples[0][0] > RATE_WINDOW_S:
            self._samples.popleft()
        first_t, first_n = self._samples[0]
        rate = (self.consumed - first_n) / (now - first_t) if now > first_t else 0.0
        lag = 0
        known = False
        offsets = self.aggregator.offsets
        for topic, partition in self._assigned:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            if high is None or high < 0:
                continue
            known = True
            lag += max(0, high - offsets.get((topic, partition), 0))
        self.status = {
            "events_per_second": round(rate, 1),
            "lag": lag if known else None,
            "partitions": len(self._assigned),
        }
