"""Synthetic multi-channel traffic, reproducible from a seed.

Each customer has a persona (time zone, preferred digital channel, how likely they are to buy,
call, answer surveys or opt out) and acts in short *scenarios*: browsing, a cart that is bought or
abandoned, a web visit followed by a call on the same topic, a survey answer (detractors later get
their complaint resolved), an app activation after a first purchase, an opt-out. Scenario steps
of different customers interleave the way live traffic does. Event times advance by ``1/rate``
seconds per event from ``start_ms``: the same seed, customers, rate and start give the same events.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

TIMEZONES = (
    "Europe/Rome",
    "Europe/London",
    "America/New_York",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "Australia/Sydney",
    "UTC",
)
TOPICS = ("billing", "delivery", "returns", "product_question", "account")
SKUS = tuple(f"SKU-{n:04d}" for n in range(1, 61))


@dataclass
class Persona:
    customer_id: str
    timezone: str
    digital: str  # web or app
    buy_rate: float
    call_rate: float
    survey_rate: float
    optout_rate: float
    purchases: int = 0
    pending: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)


class SyntheticTraffic:
    def __init__(
        self, customers: int, seed: int = 7, start_ms: int = 1_767_225_600_000, rate: float = 100.0
    ) -> None:
        if customers < 1:
            raise ValueError("customers must be at least 1")
        if rate <= 0:
            raise ValueError("rate must be positive (events per second of event time)")
        self.rng = random.Random(seed)
        self.start_ms = start_ms
        self.step_ms = 1000.0 / rate
        self.seed = seed
        self.personas = [self._persona(i) for i in range(customers)]
        self.emitted = 0

    def _persona(self, index: int) -> Persona:
        r = self.rng
        return Persona(
            customer_id=f"c-{self.seed}-{index:06d}",
            timezone=r.choice(TIMEZONES),
            digital=r.choice(("web", "web", "app")),
            buy_rate=r.uniform(0.2, 0.6),
            call_rate=r.uniform(0.05, 0.35),
            survey_rate=r.uniform(0.05, 0.3),
            optout_rate=r.uniform(0.0, 0.04),
        )

    def _scenario(self, p: Persona) -> list[tuple[str, str, dict[str, str]]]:
        r = self.rng
        tz = {"timezone": p.timezone}
        pick = r.random()
        if pick < 0.30:  # browsing
            topic = r.choice(TOPICS)
            return [
                (p.digital, "page_view", {"page": f"/{topic}", "topic": topic, **tz})
                for _ in range(r.randint(1, 3))
            ]
        if pick < 0.60:  # a cart: bought, abandoned, or bought after a reminder
            sku = r.choice(SKUS)
            steps = [
                (p.digital, "page_view", {"page": f"/p/{sku}", "sku": sku, **tz}),
                (p.digital, "cart_add", {"sku": sku, "amount": str(r.randint(10, 400)), **tz}),
            ]
            if r.random() < p.buy_rate:
                steps.append((p.digital, "checkout_started", {"sku": sku}))
                steps.append(
                    (p.digital, "purchase", {"sku": sku, "order_id": f"o-{r.getrandbits(40):010x}"})
                )
                p.purchases += 1
                if p.purchases == 1 and r.random() < 0.6:
                    steps.append(("app", r.choice(("app_login", "product_activated")), tz))
            return steps
        if pick < 0.72:  # digital contact then a call about the same topic
            topic = r.choice(TOPICS)
            first = r.choice((p.digital, "chat"))
            kind = "chat_started" if first == "chat" else "page_view"
            steps = [(first, kind, {"topic": topic, "page": f"/help/{topic}", **tz})]
            if r.random() < p.call_rate * 2:
                steps.append(
                    ("call_center", "call_started", {"topic": topic, "ivr_path": f"menu/{topic}"})
                )
            return steps
        if pick < 0.82:  # marketing engagement
            channel = r.choice(("email", "push", "sms"))
            kind = {
                "email": r.choice(("email_opened", "email_clicked")),
                "push": "push_opened",
                "sms": "sms_clicked",
            }[channel]
            return [(channel, kind, {"campaign": f"cmp-{r.randint(1, 9)}"})]
        if pick < 0.82 + p.survey_rate * 0.5:  # survey answer
            score = r.choices(range(11), weights=(2, 1, 1, 1, 2, 2, 3, 5, 8, 9, 8))[0]
            steps = [("email", "survey_response", {"survey": "nps", "score": str(score), **tz})]
            if score <= 6 and r.random() < 0.7:
                steps.append(("call_center", "complaint_resolved", {"ticket": "auto"}))
            return steps
        if pick < 0.95:
            return [(p.digital, "app_login" if p.digital == "app" else "page_view", tz)]
        if r.random() < p.optout_rate * 10:
            channel = r.choice(("email", "sms", "push"))
            return [(channel, "consent_withdrawn", {"channel": channel})]
        return [("store", "store_visit", {"store": f"s-{r.randint(1, 40):03d}"})]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            yield self.next_event()

    def next_event(self) -> dict[str, Any]:
        p = self.rng.choice(self.personas)
        if not p.pending:
            p.pending = self._scenario(p)
        channel, kind, attributes = p.pending.pop(0)
        occurred = self.start_ms + int(self.emitted * self.step_ms)
        self.emitted += 1
        return {
            "event_id": f"e-{self.seed}-{self.emitted:09d}",
            "customer_id": p.customer_id,
            "channel": channel,
            "type": kind,
            "occurred_at": occurred,
            "attributes": dict(attributes),
            "source": "synthetic",
        }

    def take(self, count: int) -> list[dict[str, Any]]:
        return [self.next_event() for _ in range(count)]


def disordered(
    touchpoints: list[dict[str, Any]],
    seed: int = 7,
    duplicates: float = 0.02,
    delayed: float = 0.03,
    late: float = 0.01,
    late_by_ms: int = 2 * 3_600_000,
) -> list[dict[str, Any]]:
    """The same traffic as a real topic delivers it: some events repeated by a retrying
    producer, some delivered up to a few hundred positions later than their event time says
    (out of order, and late when that lands behind the customer's allowed lateness), and some
    sent with an event time ``late_by_ms`` in the past. Deterministic for a seed."""
    r = random.Random(seed)
    out: list[dict[str, Any]] = []
    held: list[tuple[int, dict[str, Any]]] = []  # (release at position, event)
    for n, tp in enumerate(touchpoints):
        pick = r.random()
        if pick < delayed:
            held.append((n + r.randint(1, 400), tp))
        else:
            out.append(tp)
            if pick < delayed + duplicates:
                held.append((n + r.randint(0, 100), {**tp, "attributes": dict(tp["attributes"])}))
            elif pick < delayed + duplicates + late:
                out.append(
                    {
                        **tp,
                        "event_id": f"{tp['event_id']}-late",
                        "occurred_at": tp["occurred_at"] - late_by_ms,
                        "attributes": dict(tp["attributes"]),
                    }
                )
        due = [h for h in held if h[0] <= n]
        if due:
            held = [h for h in held if h[0] > n]
            out.extend(tp for _, tp in due)
    out.extend(tp for _, tp in held)
    return out
