"""``percorso produce``: JSON-lines or synthetic touchpoints to the input topic, Avro-encoded."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from percorso.clients import Codecs
from percorso.limits import DEFAULT, Limits
from percorso.records import InvalidTouchpoint, touchpoint_from_json


@dataclass
class LineError:
    line: int
    message: str


@dataclass
class ProduceSummary:
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    invalid: list[LineError] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "delivered": self.delivered,
            "failed": self.failed,
            "invalid": len(self.invalid),
            "seconds": round(self.seconds, 3),
        }


def read_jsonl(
    stream: TextIO,
    errors: list[LineError],
    limits: Limits = DEFAULT,
    correlated: Collection[str] = (),
) -> Iterator[dict[str, Any]]:
    """Touchpoints from JSON lines; each invalid line (``limits`` included: see
    ``validate_touchpoint``) is recorded with its number and skipped."""
    for number, line in enumerate(stream, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            yield touchpoint_from_json(json.loads(text), limits, correlated)
        except json.JSONDecodeError as exc:
            errors.append(LineError(number, f"not JSON: {exc.msg} (column {exc.colno})"))
        except InvalidTouchpoint as exc:
            errors.append(LineError(number, str(exc)))


class TouchpointSender:
    """Encodes and sends touchpoints (key = customer id), counting delivery outcomes."""

    def __init__(self, producer: Any, codecs: Codecs, topic: str) -> None:
        self.producer = producer
        self.codec = codecs.touchpoint
        self.topic = topic
        self.summary = ProduceSummary()
        self.first_error: str | None = None

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is None:
            self.summary.delivered += 1
        else:
            self.summary.failed += 1
            self.first_error = self.first_error or str(err)

    def send(self, touchpoint: dict[str, Any]) -> None:
        value = self.codec.encode(touchpoint)
        while True:
            try:
                self.producer.produce(
                    self.topic,
                    key=touchpoint["customer_id"].encode(),
                    value=value,
                    on_delivery=self._delivered,
                )
                break
            except BufferError:
                self.producer.poll(0.05)
        self.summary.sent += 1
        self.producer.poll(0)

    def flush(self, timeout: float = 60.0) -> None:
        remaining = self.producer.flush(timeout)
        if remaining:
            self.summary.failed += remaining
            self.first_error = self.first_error or f"{remaining} messages not delivered in time"


def send_all(
    sender: TouchpointSender,
    events: Iterable[dict[str, Any]],
    rate: float | None = None,
    progress: Any = None,
    total: int | None = None,
) -> ProduceSummary:
    """Send events, paced at ``rate`` per second when given; update a rich progress if given."""
    started = time.monotonic()
    task = progress.add_task("producing", total=total) if progress is not None else None
    for index, event in enumerate(events):
        if rate:
            ahead = started + index / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        sender.send(event)
        if progress is not None and index % 200 == 0:
            progress.update(task, completed=index + 1)
    sender.flush()
    if progress is not None:
        progress.update(task, completed=sender.summary.sent)
    sender.summary.seconds = time.monotonic() - started
    return sender.summary


def open_events(path: str) -> TextIO:
    return sys.stdin if path == "-" else Path(path).open(encoding="utf-8")
