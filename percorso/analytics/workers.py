"""What only the workers' ``/metrics`` know: suppressed decisions and the input lag.

A suppressed decision (cap, consent, suppression, arbitration, holdout, experiment, expired)
produces no record on any topic: the engine reports it and the worker counts it in
``percorso_actions_suppressed_total``. So the analytics process reads those counters from the
workers it is told about (``--worker-metrics URL``, repeatable) and sums them. They are
counters of each worker process: they start from zero when a worker restarts, so the figure
is "since the workers started", not since the topics began.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from collections import Counter
from typing import Any

SUPPRESSED = "percorso_actions_suppressed_total"
LAG = "percorso_consumer_lag_messages"
_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> tuple[Counter[tuple[str, str, str]], float]:
    """(suppressed by (journey, action, reason), input lag) from one exposition."""
    suppressed: Counter[tuple[str, str, str]] = Counter()
    lag = 0.0
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None:
            continue
        if m["name"] == SUPPRESSED:
            labels = dict(_LABEL.findall(m["labels"] or ""))
            key = (labels.get("journey", ""), labels.get("action", ""), labels.get("reason", ""))
            suppressed[key] += int(float(m["value"]))
        elif m["name"] == LAG:
            lag += float(m["value"])
    return suppressed, lag


class WorkerMetrics:
    def __init__(self, urls: list[str], interval_s: float = 2.0) -> None:
        self.urls = urls
        self.interval_s = interval_s
        self._view: dict[str, Any] = {"workers": len(urls), "answered": 0, "lag": None}
        self._suppressed: Counter[tuple[str, str, str]] = Counter()
        self.lock = threading.Lock()

    def run(self, stop: threading.Event) -> None:
        while self.urls and not stop.is_set():
            self.scrape()
            stop.wait(self.interval_s)

    def scrape(self) -> None:
        suppressed: Counter[tuple[str, str, str]] = Counter()
        lag = 0.0
        answered = 0
        for url in self.urls:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    s, worker_lag = parse(response.read().decode())
            except OSError:
                continue
            answered += 1
            suppressed.update(s)
            lag += worker_lag
        with self.lock:
            self._suppressed = suppressed
            self._view = {
                "workers": len(self.urls),
                "answered": answered,
                "lag": int(lag) if answered else None,
                "scraped_at": int(time.time() * 1000),
            }

    def view(self) -> dict[str, Any]:
        with self.lock:
            return dict(self._view)

    def suppressed(self, journey_id: str) -> list[dict[str, Any]] | None:
        """Suppressed decisions of one journey by action and reason; None without workers."""
        if not self.urls:
            return None
        with self.lock:
            return [
                {"action": a, "reason": r, "count": n}
                for (j, a, r), n in sorted(self._suppressed.items())
                if j == journey_id
            ]
