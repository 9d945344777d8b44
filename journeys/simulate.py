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
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from journeys.engine import Engine, Step, Tick
from journeys.loader import JourneyError, load_catalog
from journeys.state import CustomerState


def replay(
    engine: Engine,
    touchpoints: Iterable[dict[str, Any]],
    until: int | None = None,
    future_after: int | None = None,
) -> Iterator[Step]:
    """Every step of the replay, in order; the final ticks come last, by customer id. A
    touchpoint dated after ``future_after`` is not applied: its step has the outcome
    ``future`` (what a worker dead-letters as ``FutureEvent``)."""
    states: dict[str, CustomerState] = {}
    latest: int | None = None
    for tp in touchpoints:
        customer = tp["customer_id"]
        t = tp["occurred_at"]
        if future_after is not None and t > future_after:
            known = states.get(customer)
            yield Step(known if known is not None else engine.new_state(customer), "future")
            continue
        step = engine.advance(states.get(customer), tp)
        states[customer] = step.state
        if step.outcome == "processed":
            latest = t if latest is None else max(latest, t)
        yield step
    end = until if until is not None else latest
    if end is None:
        return
    for customer in sorted(states):
        step = engine.advance(states[customer], Tick(end))
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
    include: str = "actions,transitions",
) -> int:
    import os
    import time

    from percorso.limits import Limits
    from percorso.produce import LineError, open_events, read_jsonl
    from percorso.records import InvalidTouchpoint, parse_time_ms

    try:
        engine = Engine(load_catalog(journeys))
    except JourneyError as exc:
        for problem in exc.problems:
            print(problem, file=err)
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
    correlated = frozenset(
        k for j in engine.catalog.journeys for w in j.windows for k in w.correlate
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
        for step in replay(engine, touchpoints, until_ms, clock + limits.max_event_skew_ms):
            for record in step_records(step, wanted):
                out.write(dumps(record) + "\n")
    for e in errors:
        print(f"{events}:{e.line}: skipped: {e.message}", file=err)
    return 2 if errors else 0
