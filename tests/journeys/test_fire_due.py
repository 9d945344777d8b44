"""``Engine._fire_due`` gathers what is due in one scan and scans again only after a firing
that armed a window or deferred an action. The reference below is the loop it replaced: look
for the earliest entry due (deferred action, window, inactivity timeout; ties in that order,
then by journey id and key) after every single firing. Both must take every step identically.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from journeys.engine import Engine, Step, Tick, _Candidate
from journeys.loader import load_catalog
from journeys.state import CustomerState
from percorso.synthetic import SyntheticTraffic, disordered
from tests.journeys.harness import CATALOG_DIR

START = 1_767_225_600_000
HOUR = 3_600_000


def earliest_due(
    engine: Engine, state: CustomerState, until: int
) -> tuple[int, int, str, str] | None:
    best: tuple[int, int, str, str] | None = None
    for p in state["pending"]:
        if p["due"] <= until:
            item = (p["due"], 0, p["journey_id"], p["action_id"])
            if best is None or item < best:
                best = item
    for jid, js in state["journeys"].items():
        if not js["active"]:
            continue
        for w in js["windows"]:
            if w["deadline"] <= until:
                item = (w["deadline"], 1, jid, w["key"])
                if best is None or item < best:
                    best = item
        idle = engine.catalog.journeys[engine._index[jid]].inactivity_ms
        if idle is not None and js["last_activity"] + idle <= until:
            item = (js["last_activity"] + idle, 2, jid, "")
            if best is None or item < best:
                best = item
    return best


class Rescanning(Engine):
    """The engine with the loop that scans the whole state after every firing."""

    def _fire_due(self, step: Step, until: int, now: int | None) -> None:
        state = step.state
        while True:
            due = earliest_due(self, state, until)
            if due is None:
                return
            at, kind, journey_id, key = due
            if kind == 0:
                self._release(step, key, at, now)
                continue
            journey = self._by_id[journey_id]
            js = state["journeys"][journey_id]
            if kind == 1:
                windows = js["windows"]
                n = next(i for i, w in enumerate(windows) if w["key"] == key)
                w = windows.pop(n)
                step.windows_fired += 1
                step.fired_at.append(at)
                definition = self._windows[journey_id][w["window"]]
                candidates: list[_Candidate] = []
                self._outcome(
                    step,
                    journey,
                    js,
                    definition.on_timeout,
                    f"window:{w['window']}:timeout",
                    w,
                    at,
                    candidates,
                )
                for child in self._chained[journey_id][definition.id]:
                    if js["active"]:
                        self._arm(
                            step,
                            journey,
                            js,
                            child,
                            at,
                            w["origin_event"],
                            dict(w["correlation"]),
                            dict(w["attributes"]),
                        )
                if candidates:
                    self._decide(step, candidates, at, now)
            else:
                self._exit(
                    step,
                    journey,
                    js,
                    "inactivity",
                    at,
                    f"{journey_id}/inactivity/{js['instance']}@{js['last_activity']}",
                )


def outputs(step: Step) -> tuple[Any, ...]:
    return (
        step.outcome,
        step.transitions,
        step.actions,
        [asdict(s) for s in step.suppressed],
        step.deferred,
        step.windows_armed,
        step.windows_fired,
        step.windows_cancelled,
        step.fired_at,
        step.next_due,
    )


def test_firing_in_one_scan_takes_every_step_as_rescanning_does() -> None:
    catalog = load_catalog(CATALOG_DIR)
    engine, reference = Engine(catalog), Rescanning(catalog)
    traffic = SyntheticTraffic(300, seed=5, start_ms=START, rate=8000 / (4 * 86_400))
    ours: dict[str, CustomerState] = {}
    theirs: dict[str, CustomerState] = {}
    fired_together = deferred = released = chained = 0
    for n, tp in enumerate(disordered(traffic.take(8000), seed=5)):
        customer = tp["customer_id"]
        a = engine.advance(ours.get(customer), dict(tp, attributes=dict(tp["attributes"])))
        b = reference.advance(theirs.get(customer), dict(tp, attributes=dict(tp["attributes"])))
        assert outputs(a) == outputs(b), tp
        ours[customer], theirs[customer] = a.state, b.state
        fired_together += a.windows_fired > 1
        deferred += a.deferred
        chained += a.windows_fired > 0 and a.windows_armed > 0
        if n % 500 == 499:  # ticks on a clock a few hours behind the traffic, then at the end
            for c in sorted(ours):
                a = engine.advance(ours[c], Tick(tp["occurred_at"] - 4 * HOUR))
                b = reference.advance(theirs[c], Tick(tp["occurred_at"] - 4 * HOUR))
                assert outputs(a) == outputs(b)
                released += a.windows_fired == 0 and bool(a.actions)
    for c in sorted(ours):
        a = engine.advance(ours[c], Tick(START + 45 * 24 * HOUR))
        b = reference.advance(theirs[c], Tick(START + 45 * 24 * HOUR))
        assert outputs(a) == outputs(b)
        fired_together += a.windows_fired > 1
        released += bool(a.actions) and a.windows_fired == 0
    assert ours == theirs
    # the traffic reaches every path: several firings in one step, chained windows armed by
    # a firing, actions deferred by quiet hours and released later
    assert fired_together > 0 and chained > 0 and deferred > 0 and released > 0
