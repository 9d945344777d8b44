"""Applies decoded records to the figures and commits them with their offsets. No Kafka here:
the consumer (``stream.py``) hands over what it read; the HTTP server reads the views."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from percorso.analytics.figures import JourneyFigures
from percorso.analytics.store import AnalyticsStore

SOURCE_HEADERS = ("topic", "partition", "offset")


class Aggregator:
    def __init__(self, store: AnalyticsStore, stage_order: dict[str, list[str]]) -> None:
        self.store = store
        self.stage_order = stage_order
        self.lock = threading.Lock()  # the HTTP threads read while the consumer writes
        self.journeys = store.journeys()
        self.dead_letters = store.dead_letters()
        self.totals: Counter[str] = Counter(store.totals())
        self.offsets = store.offsets()  # next offset to read, as of the last commit
        self._dirty: set[str] = set()
        self._read: dict[tuple[str, int], int] = {}  # next offsets read since the last commit

    def _journey(self, journey_id: str) -> JourneyFigures:
        figures = self.journeys.get(journey_id)
        if figures is None:
            figures = self.journeys[journey_id] = JourneyFigures(journey_id)
        self._dirty.add(journey_id)
        return figures

    # -- records ------------------------------------------------------------------------------

    def transition(self, t: dict[str, Any], topic: str, partition: int, offset: int) -> None:
        with self.lock:
            journey_id, customer_id = t["journey_id"], t["customer_id"]
            if t.get("instance_key") is not None:  # one customer, several instances (carts)
                customer_id = f"{customer_id}#{t['instance_key']}"
            customer = self.store.customer(journey_id, customer_id)
            updated = self._journey(journey_id).transition(t, customer)
            if updated is None:
                self.totals["repeated_transitions"] += 1
            else:
                self.store.put_customer(journey_id, customer_id, updated)
                self.totals["transitions"] += 1
            self._read[(topic, partition)] = offset + 1

    def action(self, a: dict[str, Any], topic: str, partition: int, offset: int) -> None:
        with self.lock:
            if self.store.first_time("action", a["action_id"]):
                self._journey(a["journey_id"]).action(a)
                self.totals["actions"] += 1
            else:
                self.totals["repeated_actions"] += 1
            self._read[(topic, partition)] = offset + 1

    def dead_letter(
        self,
        headers: dict[str, str | None],
        key: str | None,
        timestamp_ms: int | None,
        topic: str,
        partition: int,
        offset: int,
    ) -> None:
        """A dead letter, counted once per source record: a worker that reprocesses after a
        crash dead-letters the same source offset again."""
        source = "|".join(str(headers.get(f"percorso.source.{h}")) for h in SOURCE_HEADERS)
        if source == "None|None|None":
            source = f"{topic}|{partition}|{offset}"
        with self.lock:
            if self.store.first_time("dead_letter", source):
                self.dead_letters.add(headers, key, timestamp_ms)
                self.totals["dead_letters"] += 1
            self._read[(topic, partition)] = offset + 1

    def skipped(self, topic: str, partition: int, offset: int) -> None:
        """A record that could not be decoded: counted, and its offset moves on."""
        with self.lock:
            self.totals["undecodable"] += 1
            self._read[(topic, partition)] = offset + 1

    def commit(self) -> bool:
        """Write what changed, with the offsets read so far; False when nothing did."""
        with self.lock:
            if not self._read:
                return False
            self.store.commit(
                [self.journeys[j] for j in sorted(self._dirty)],
                self.dead_letters,
                dict(self.totals),
                self._read,
            )
            self.offsets.update(self._read)
            self._read = {}
            self._dirty.clear()
            return True

    # -- views --------------------------------------------------------------------------------

    def journey_ids(self) -> list[str]:
        with self.lock:
            return sorted(set(self.stage_order) | set(self.journeys))

    def journey_view(self, journey_id: str) -> dict[str, Any] | None:
        with self.lock:
            figures = self.journeys.get(journey_id)
            if figures is None:
                if journey_id not in self.stage_order:
                    return None
                figures = JourneyFigures(journey_id)
            return figures.view(self.stage_order.get(journey_id, []))

    def dead_letter_view(self) -> dict[str, Any]:
        with self.lock:
            return self.dead_letters.view()

    def totals_view(self) -> dict[str, int]:
        with self.lock:
            return dict(sorted(self.totals.items()))
