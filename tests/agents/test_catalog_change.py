"""A rolling restart with a new catalog, through the real broker: the worker's records are those
of ``percorso simulate --catalog-change``.

A worker fires a window when the wall clock passes its deadline; ``simulate`` with a change at
event time CHANGE fires what is due before CHANGE under the old catalog and the rest under the
new one. For the two to agree, the run below is laid out on the wall clock, with the example
cart journey's durations divided by ``SCALE`` (its one-hour reminder lasts 50 s, version
2's half hour 25 s, and nothing else comes due while the test runs):

- every reminder armed before CHANGE is due either well before it (worker 1 fires it, under
  version 1) or tens of seconds after the moment worker 1 has stopped (worker 2 fires it under
  version 2: migrated, re-armed with version 2's duration);
- worker 1 (catalog v1) gets the touchpoints dated before CHANGE, fires what is due, and stops;
  worker 2 (catalog v2: version 1 draining, its waiting carts migrated) starts on the same state
  folder and group and gets the touchpoints dated from CHANGE on;
- the replay's ``until`` is a time after every deadline of the run, and the records are read
  once the wall clock has passed it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from journeys.lifecycle import LifecycleEngine
from journeys.loader import load_catalog
from journeys.simulate import replay
from percorso.broker import Broker
from percorso.config import Settings
from tests.agents.conftest import (
    REPO,
    Collect,
    Collector,
    action_topics,
    produce,
    workers_on,
)
from tests.agents.oracle import now_ms

SCALE = 72.0  # v1's reminder: 1 h -> 50 s; v2's: 30 min -> 25 s; inactivity: 7 d -> 2.3 h
SECOND = 1000
EVOLVING = REPO / "examples" / "evolving"

_MIGRATION_REASONS = frozenset({"migrated", "stopped", "version_removed"})


def _reminder_ms(version: str) -> int:
    catalog = load_catalog(EVOLVING / version, time_scale=SCALE)
    newest = max(catalog.journeys, key=lambda j: j.version or 0)
    (window,) = newest.windows
    return window.within_ms


@dataclass(frozen=True)
class Timeline:
    """The run's event times, from ``t0`` (the wall clock when the first touchpoints are sent)
    and the lengths of the reminder in version 1 (``w1``) and version 2 (``w2 < w1``)."""

    t0: int
    w1: int
    w2: int

    @property
    def change(self) -> int:
        return self.t0 + 5 * SECOND

    @property
    def early_cart(self) -> int:  # due under version 1 before the change: t0 - 10 s
        return self.t0 - self.w1 - 10 * SECOND

    @property
    def late_cart(self) -> int:  # v2's deadline (t0 + 3 s) before the change, v1's after it
        return self.t0 + 3 * SECOND - self.w2

    @property
    def fresh_cart(self) -> int:  # both deadlines after the change: t0 + 10 s under v2
        return self.t0 + 10 * SECOND - self.w2

    @property
    def first_left_to_worker_2(self) -> int:
        """The earliest deadline of version 1 at or after the change: worker 1 must have
        stopped by then (t0 + 3 s + w1 - w2)."""
        return self.late_cart + self.w1

    @property
    def until(self) -> int:
        """After every deadline of the run: the last is version 1's of the fresh carts, where
        worker 2 wakes the customers left without a touchpoint (nothing else comes due for
        hours: inactivity is 7 days, scaled)."""
        return self.fresh_cart + self.w1 + 2 * SECOND

    def touchpoints(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(touchpoints dated before the change, touchpoints dated from it on). Four customers
        per story (the holdout takes some of them)."""
        s = SECOND
        change = self.change
        before: list[dict[str, Any]] = []
        after: list[dict[str, Any]] = []
        for n in range(4):
            # abandoned under version 1, migrated by a page view after the change
            c = f"early-{n}"
            before.append(_tp(f"{c}-a", c, "cart_add", self.early_cart, cart_id="k1"))
            after.append(_tp(f"{c}-v", c, "page_view", change + 1 * s))
            # in checkout under version 1 (a stage not migrated): buys on version 1
            c = f"checked-{n}"
            before.append(_tp(f"{c}-a", c, "cart_add", self.early_cart, cart_id="k1"))
            before.append(_tp(f"{c}-c", c, "checkout_started", self.early_cart + s, cart_id="k1"))
            after.append(_tp(f"{c}-p", c, "purchase", change + 1 * s, cart_id="k1", amount="30"))
            # bought under version 1; a new cart after the change enters version 2
            c = f"bought-{n}"
            before.append(_tp(f"{c}-a", c, "cart_add", self.early_cart, cart_id="k1"))
            before.append(
                _tp(f"{c}-p", c, "purchase", self.early_cart + 2 * s, cart_id="k1", amount="12")
            )
            after.append(_tp(f"{c}-a2", c, "cart_add", change + 1 * s, cart_id="k2"))
            # waiting at the change, version 2's deadline already past: migrated at the next
            # touchpoint, where the reminder fires at once (then some of them buy)
            c = f"late-{n}"
            before.append(_tp(f"{c}-a", c, "cart_add", self.late_cart, cart_id="k1"))
            if n % 2:
                after.append(_tp(f"{c}-p", c, "purchase", change + 2 * s, cart_id="k1", amount="5"))
            else:
                after.append(_tp(f"{c}-v", c, "page_view", change + 2 * s))
            # waiting at the change, version 2's deadline after it: migrated by a page view,
            # the reminder re-armed and fired by worker 2
            c = f"fresh-{n}"
            before.append(_tp(f"{c}-a", c, "cart_add", self.fresh_cart, cart_id="k1"))
            after.append(_tp(f"{c}-v", c, "page_view", change + 1 * s))
            # the same with no touchpoint after the change: migrated when worker 2 wakes the
            # customer at version 1's deadline, where version 2's reminder fires at once
            c = f"quiet-{n}"
            before.append(_tp(f"{c}-a", c, "cart_add", self.fresh_cart, cart_id="k1"))
            # two carts, one abandoned under version 1, one checked out after the change
            c = f"two-{n}"
            before.append(_tp(f"{c}-a", c, "cart_add", self.early_cart, cart_id="k1"))
            before.append(_tp(f"{c}-b", c, "cart_add", self.fresh_cart, cart_id="k2"))
            after.append(_tp(f"{c}-c", c, "checkout_started", change + 2 * s, cart_id="k2"))
            # new customers after the change: version 2 only
            c = f"new-{n}"
            after.append(_tp(f"{c}-a", c, "cart_add", change + 1 * s, cart_id="k1"))
            if n % 2:
                after.append(_tp(f"{c}-p", c, "purchase", change + 2 * s, cart_id="k1", amount="7"))
        before.sort(key=lambda e: e["occurred_at"])
        after.sort(key=lambda e: e["occurred_at"])
        return before, after


def _tp(event_id: str, customer: str, type_: str, at: int, **attributes: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "customer_id": customer,
        "channel": "web",
        "type": type_,
        "occurred_at": at,
        "attributes": attributes,
        "source": "test",
    }


def _moved(t: dict[str, Any]) -> tuple[Any, ...]:
    """A transition; a migration's time is the customer's next touchpoint or wake-up, which a
    worker and the replay see at different times: compared without it."""
    at = None if t["reason"] in _MIGRATION_REASONS else t["at"]
    keep = ("customer_id", "journey_id", "version", "instance_key", "from_stage", "to_stage")
    return (*(t.get(k) for k in keep), t["reason"], t["cause"] if at is not None else None, at)


def _conversion(c: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted((k, v) for k, v in c.items() if k != "_headers"))


class _Want:
    """The records of a replay."""

    def __init__(self, steps: Any) -> None:
        self.actions: set[str] = set()
        self.transitions: Counter[tuple[Any, ...]] = Counter()
        self.conversions: Counter[tuple[Any, ...]] = Counter()
        self.action_versions: Counter[int | None] = Counter()
        for step in steps:
            for a in step.actions:
                self.actions.add(a["action_id"])
                self.action_versions[a.get("version")] += 1
            self.transitions.update(_moved(t) for t in step.transitions)
            self.conversions.update(_conversion(c) for c in step.conversions)


class _Got:
    def __init__(self, col: Collector) -> None:
        s = col.settings
        self.actions = [a for t in action_topics(s) for a in col.records[t]]
        self.action_ids = {a["action_id"] for a in self.actions}
        self.transitions = Counter(_moved(t) for t in col.records[s.topics.transitions])
        self.conversions = Counter(_conversion(c) for c in col.records[s.topics.conversions])

    def covers(self, want: _Want) -> bool:
        return (
            want.actions <= self.action_ids
            and sum(self.transitions.values()) >= sum(want.transitions.values())
            and sum(self.conversions.values()) >= sum(want.conversions.values())
        )


def _replay(events: list[dict[str, Any]], until: int, change: int | None) -> _Want:
    v1 = LifecycleEngine(load_catalog(EVOLVING / "v1", time_scale=SCALE))
    changes = []
    if change is not None:
        changes = [(change, LifecycleEngine(load_catalog(EVOLVING / "v2", time_scale=SCALE)))]
    copies = [dict(e, attributes=dict(e["attributes"])) for e in events]
    return _Want(replay(v1, copies, until, changes=changes))


def _sleep_until(t: int) -> None:
    while (left := t - now_ms()) > 0:
        time.sleep(min(left, 500) / 1000)


@pytest.mark.parametrize("restart", ["stop", "sigkill"])
def test_a_rolling_restart_with_a_new_catalog_through_the_broker_equals_simulate(
    restart: str,
    broker: Broker,
    settings_factory: Callable[..., Settings],
    collect: Collect,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """Worker 1 runs version 1 of the example cart journey, worker 2 (same state folder, same
    group) version 2 with version 1 draining and its waiting carts migrated: together they send
    the actions, conversions and transitions of ``simulate --catalog-change CHANGE=v2``.
    Worker 1 is stopped (SIGTERM), or SIGKILLed once a whole checkpoint has passed after its
    last record was seen (so that worker 2 has nothing of worker 1 to do again)."""
    settings = settings_factory(journeys_dir=EVOLVING / "v1")
    with workers_on(broker, settings, tmp_path, request) as cluster:
        worker = cluster.worker("w1", PERCORSO_TIME_SCALE=str(SCALE)).start()
        worker.wait_ready()
        col = collect(
            settings,
            [*action_topics(settings), settings.topics.transitions, settings.topics.conversions],
        )
        run = Timeline(now_ms(), _reminder_ms("v1"), _reminder_ms("v2"))
        t0, change, until = run.t0, run.change, run.until
        # worker 1 stops a few seconds after t0: this leaves it tens of seconds to spare
        assert run.first_left_to_worker_2 - t0 >= 25 * SECOND
        before, after = run.touchpoints()
        events = before + after
        assert max(e["occurred_at"] for e in before) <= t0  # none ahead of the clock
        assert max(e["occurred_at"] for e in before) < change
        assert min(e["occurred_at"] for e in after) >= change

        want_1 = _replay(before, change - 1, None)  # what worker 1 must have sent
        want = _replay(events, until, change)
        without_change = _replay(events, until, None)
        # the run proves something: the change moves reminders to version 2, migrates carts
        # waiting at the change, and the records differ from a run without it
        assert want.actions != without_change.actions
        assert want.transitions != without_change.transitions
        reasons = Counter(t[6] for t in want.transitions.elements())
        assert reasons["migrated"] >= 20, reasons
        assert want.action_versions[1] >= 4 and want.action_versions[2] >= 8, want.action_versions
        assert want_1.actions and want_1.actions < want.actions
        versions = Counter(dict(c)["version"] for c in want.conversions.elements())
        assert versions[1] >= 4 and versions[2] >= 2, versions

        produce(settings, before)
        col.until(
            lambda: _Got(col).covers(want_1),
            60,
            f"worker 1: {len(want_1.actions)} actions, {sum(want_1.transitions.values())} "
            f"transitions, {sum(want_1.conversions.values())} conversions",
        )
        if restart == "sigkill":
            checkpoints = worker.metric("percorso_checkpoint_seconds_count")
            deadline = time.monotonic() + 20
            while worker.metric("percorso_checkpoint_seconds_count") < checkpoints + 2:
                assert time.monotonic() < deadline, "worker 1 made no checkpoint in 20 s"
                time.sleep(0.2)
            worker.kill()
        else:
            worker.stop()
        stopped_at = now_ms()
        assert stopped_at < run.first_left_to_worker_2, (
            f"worker 1 stopped {(stopped_at - t0) / 1000:.1f} s after t0, later than version "
            f"1's first deadline left to worker 2 ({(run.first_left_to_worker_2 - t0) / 1000} s)"
        )
        col.poll(1)
        got_1 = _Got(col)  # worker 1 fired what was due before the change, and nothing else
        assert got_1.action_ids == want_1.actions
        assert got_1.transitions == want_1.transitions
        assert got_1.conversions == want_1.conversions

        worker.env["PERCORSO_JOURNEYS"] = str(EVOLVING / "v2")  # the rolling restart
        worker.start()
        _sleep_until(max(e["occurred_at"] for e in after))  # none dated ahead of the clock
        produce(settings, after)
        worker.wait_ready()
        _sleep_until(until + settings.window_grace_ms + SECOND)
        col.until(
            lambda: _Got(col).covers(want),
            60,
            f"{len(want.actions)} actions, {sum(want.transitions.values())} transitions, "
            f"{sum(want.conversions.values())} conversions",
        )
        col.poll(2)  # anything beyond the replay would show up now
        got = _Got(col)
        assert got.action_ids == want.actions
        assert got.conversions == want.conversions
        assert got.transitions == want.transitions
        assert len(got.actions) == len(got.action_ids), "an action sent twice"
