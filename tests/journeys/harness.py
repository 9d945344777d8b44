"""Given/when/then on a virtual clock: one customer, the real engine, no Kafka."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from journeys.engine import Engine, Step, Tick
from journeys.loader import load_catalog
from journeys.model import Catalog
from journeys.state import CustomerState

CATALOG_DIR = Path(__file__).resolve().parents[2] / "journeys" / "catalog"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday, 10:00 in Rome

_ids = itertools.count(1)


def ms(dt: datetime) -> int:
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def catalog_from(tmp_path: Path, *documents: str) -> Catalog:
    for n, text in enumerate(documents):
        (tmp_path / f"doc{n}.yaml").write_text(text)
    return load_catalog(tmp_path)


class Customer:
    """A customer living through journeys on a virtual clock."""

    def __init__(self, engine: Engine, customer_id: str = "cust-1", start: datetime = T0) -> None:
        self.engine = engine
        self.customer_id = customer_id
        self.clock = start
        self.state: CustomerState | None = None
        self.steps: list[Step] = []

    def wait(self, **delta: float) -> Customer:
        self.clock += timedelta(**delta)
        return self

    def does(
        self,
        type_: str,
        channel: str = "web",
        event_id: str | None = None,
        attrs: dict[str, str] | None = None,
        **attributes: str,
    ) -> Step:
        """A touchpoint now; attributes as keywords, or ``attrs`` for names like channel."""
        tp: dict[str, Any] = {
            "event_id": event_id or f"{self.customer_id}-e{next(_ids)}",
            "customer_id": self.customer_id,
            "channel": channel,
            "type": type_,
            "occurred_at": ms(self.clock),
            "attributes": {**(attrs or {}), **attributes},
            "source": None,
        }
        return self._step(tp)

    def replay(self, touchpoint: dict[str, Any]) -> Step:
        return self._step(touchpoint)

    def tick(self) -> Step:
        assert self.state is not None
        return self._step(Tick(ms(self.clock)))

    def _step(self, item: dict[str, Any] | Tick) -> Step:
        step = self.engine.advance(self.state, item)
        self.state = step.state
        self.steps.append(step)
        return step

    @property
    def actions(self) -> list[dict[str, Any]]:
        return [a for s in self.steps for a in s.actions]

    @property
    def transitions(self) -> list[dict[str, Any]]:
        return [t for s in self.steps for t in s.transitions]

    def action_names(self, journey: str | None = None) -> list[str]:
        return [a["action"] for a in self.actions if journey in (None, a["journey_id"])]

    def stages(self, journey: str) -> list[str]:
        return [t["to_stage"] for t in self.transitions if t["journey_id"] == journey]

    def suppressed(self) -> list[tuple[str, str]]:
        return [(s.action, s.reason) for step in self.steps for s in step.suppressed]

    def stage(self, journey: str) -> str | None:
        assert self.state is not None
        js = self.state["journeys"].get(journey)
        return js["stage"] if js is not None and js["active"] else None
