"""Offline replay: JSON-lines touchpoints through the same engine the workers run.

Events are applied in file order with event time as the clock. Each customer's windows fire when
that customer's own event time passes their deadline (so one customer's results never depend on
how other customers' events are interleaved), and, at the end of the input, every customer's
clock is advanced to ``until`` (default: the latest event time in the file). Output is
deterministic: the same input gives the same bytes.

Touchpoints are held to the same limits as on the input topic (``percorso.limits``), and, as a
worker refuses a touchpoint dated more than the allowed skew ahead of its wall clock, the replay
refuses one dated more than the skew ahead of *its* clock: ``--until`` when given (the instant
the replay stands for), else the time the replay starts. Such a touchpoint changes nothing and
is reported with the outcome ``future`` (``--include late`` prints it). Every event time of
a recorded file is behind its replay's clock, so this only refuses what a worker would have.

A catalog change (``--catalog-change TIME=DIR``) replays what a deployment of another catalog
at event time TIME does, customer by customer (so results still do not depend on how
customers are interleaved): when a customer's clock reaches TIME (its first touchpoint at or
after TIME, or the final tick), what was due before TIME fires under the catalog in force
(a tick at TIME - 1), then the new catalog applies to that customer, with the same state:
stops, migrations and removed versions take effect at that touchpoint or tick, as on a worker
restarted with the new catalog. A touchpoint older than TIME that arrives after the customer
crossed TIME is applied under the new catalog, as on the restarted worker.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from journeys.engine import Engine, Step, Tick
from journeys.lifecycle import LifecycleEngine
from journeys.loader import JourneyError, load_catalog
from journeys.state import CustomerState

CatalogChange = tuple[int, Engine]  # (event time it takes effect, the engine of the new catalog)


def replay(
    engine: Engine,
    touchpoints: Iterable[dict[str, Any]],
    until: int | None = None,
    future_after: int | None = None,
    changes: Iterable[CatalogChange] = (),
) -> Iterator[Step]:
    """Every step of the replay, in order; the final ticks come last, by customer id. A
    touchpoint dated after ``future_after`` is not applied: its step has the outcome
    ``future`` (what a worker dead-letters as ``FutureEvent``)."""
    states: dict[str, CustomerState] = {}
    latest: int | None = None
    engines = [engine] + [e for _, e in sorted(changes, key=lambda c: c[0])]
    starts = sorted(at for at, _ in changes)
    phase: dict[str, int] = {}  # customer -> index in engines of the catalog it is under

    def cross(customer: str, t: int) -> Iterator[Step]:
        """The catalog changes this customer's clock passes on its way to ``t``."""
        n = phase.get(customer, 0)
        while n < len(starts) and t >= starts[n]:
            state = states.get(customer)
            if state is not None:  # what was due before the change, under the old catalog
                step = engines[n].advance(state, Tick(starts[n] - 1))
                states[customer] = step.state
                yield step
            n += 1
        phase[customer] = n

    for tp in touchpoints:
        customer = tp["customer_id"]
        t = tp["occurred_at"]
        if future_after is not None and t > future_after:
            known = states.get(customer)
            yield Step(known if known is not None else engine.new_state(customer), "future")
            continue
        if starts:
            yield from cross(customer, t)
        step = engines[phase.get(customer, 0)].advance(states.get(customer), tp)
        states[customer] = step.state
        if step.outcome == "processed":
            latest = t if latest is None else max(latest, t)
        yield step
    end = until if until is not None else latest
    if end is None:
        return
    for customer in sorted(states):
        if starts:
            yield from cross(customer, end)
        step = engines[phase.get(customer, 0)].advance(states[customer], Tick(end))
        yield step


def step_records(step: Step, include: frozenset[str]) -> Iterator[dict[str, Any]]:
    if "transitions" in include:
        for t in step.transitions:
            yield {"kind": "transition", **t}
    if "actions" in include:
        for a in step.actions:
            yield {"kind": "action", **a}
    if "suppressed" in include:
        for s in step.suppressed:
            yield {
                "kind": "suppressed",
                "customer_id": step.state["customer_id"],
                "journey_id": s.journey_id,
                "action": s.action,
                "reason": s.reason,
                "trigger": s.trigger,
            }
    if "conversions" in include:
        for c in step.conversions:
            yield {"kind": "conversion", **c}
    if "late" in include and step.outcome in ("late", "duplicate", "future"):
        yield {"kind": step.outcome, "customer_id": step.state["customer_id"]}


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def run_simulation(
    journeys: Path,
    events: str,
    out: TextIO,
    err: TextIO,
    until: str | None = None,
    include: str = "actions,transitions,conversions",
    catalog_changes: Iterable[str] = (),
) -> int:
    import os
    import time

    from percorso.limits import Limits
    from percorso.produce import LineError, open_events, read_jsonl
    from percorso.records import InvalidTouchpoint, parse_time_ms

    try:
        engine: Engine = LifecycleEngine(load_catalog(journeys))
        changes: list[CatalogChange] = []
        for change in catalog_changes:
            when, sep, folder = change.partition("=")
            if not sep or not folder:
                print(
                    f"percorso simulate: --catalog-change {change!r}: expected TIME=DIR", file=err
                )
                return 1
            at = parse_time_ms(when, "--catalog-change")
            changes.append((at, LifecycleEngine(load_catalog(Path(folder)))))
    except JourneyError as exc:
        for problem in exc.problems:
            print(problem, file=err)
        return 1
    except InvalidTouchpoint as exc:
        print(f"percorso simulate: {exc}", file=err)
        return 1
    try:
        until_ms = parse_time_ms(until, "--until") if until else None
    except InvalidTouchpoint as exc:
        print(f"percorso simulate: {exc}", file=err)
        return 1
    try:
        limits = Limits.from_env(os.environ)
    except ValueError as exc:
        print(f"percorso simulate: {exc}", file=err)
        return 1
    clock = until_ms if until_ms is not None else int(time.time() * 1000)
    # attributes whose values become part of state keys: window correlations, instance keys
    catalogs = [engine.catalog, *(e.catalog for _, e in changes)]
    correlated = frozenset(
        k for c in catalogs for j in c.journeys for w in j.windows for k in w.correlate
    ) | frozenset(
        j.instance_attribute for c in catalogs for j in c.journeys if j.instance_attribute
    )
    wanted = frozenset(p.strip() for p in include.split(",") if p.strip())
    errors: list[LineError] = []
    try:
        stream = open_events(events)
    except OSError as exc:
        print(f"percorso simulate: cannot read {events}: {exc.strerror}", file=err)
        return 1
    with stream:
        touchpoints = read_jsonl(stream, errors, limits, correlated)
        for step in replay(
            engine, touchpoints, until_ms, clock + limits.max_event_skew_ms, changes
        ):
            for record in step_records(step, wanted):
                out.write(dumps(record) + "\n")
    for e in errors:
        print(f"{events}:{e.line}: skipped: {e.message}", file=err)
    return 2 if errors else 0
