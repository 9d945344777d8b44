"""The journey engine: one pure step per input.

``Engine(catalog).advance(state, input, now)`` takes a customer's state and either a touchpoint
or a ``Tick`` (the clock reached ``at``) and returns the new state with the stage transitions,
actions and suppressed decisions it caused, and the next instant something is due. No Kafka, no
I/O, no wall clock: ``now`` (the runtime's wall clock) is only stamped on actions as
``created_at``; without it (offline replay) ``created_at`` is the event time of the decision.
The Faust agents and ``percorso simulate`` call this same function.

Time rules (all in event time, epoch milliseconds):
- A touchpoint first fires whatever of this customer was due strictly before its ``occurred_at``
  (a window "up to T" accepts an awaited touchpoint at exactly T), then is applied.
- ``Tick(at)`` fires everything due at or before ``at``, in deadline order, chains included, so
  one tick catches up after any gap. A repeated or stale tick finds nothing due: it is a no-op.
- A touchpoint older than the customer's latest event time minus the allowed lateness is *late*:
  it changes nothing and is reported (outcome ``late``) so the runtime can dead-letter it.
- A touchpoint whose ``event_id`` is among the customer's last ``remember_events`` is a
  duplicate: it changes nothing (outcome ``duplicate``).

``advance`` mutates and returns the state it is given (the runtime decodes a fresh one per step).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from journeys.conditions import NEVER, holds
from journeys.dispatch import SURVEY_RESPONSE, Dispatch, JourneyPlan, TouchpointPlan
from journeys.model import (
    EXIT_STAGES,
    ActionSpec,
    Catalog,
    Journey,
    Outcome,
    Window,
)
from journeys.state import (
    MAX_CHANNEL_CHARS,
    MAX_ENGAGEMENT_CHANNELS,
    MAX_OPTED_OUT,
    MAX_SEEN_CHARS,
    CustomerState,
    JourneyState,
    PendingAction,
    WindowState,
    new_customer,
)

StepOutcome = Literal["processed", "duplicate", "late", "tick", "future"]
SuppressionReason = Literal[
    "holdout", "experiment", "suppression", "consent", "cap", "arbitration", "expired"
]

ACTION_ID_NAMESPACE = uuid.UUID("9b7c2d4e-5f60-4a1b-8c3d-7e9f0a1b2c3d")
_NAMESPACE_BYTES = ACTION_ID_NAMESPACE.bytes
_sha1 = hashlib.sha1
# the RFC 4122 variant: the top two bits of the 9th byte become 10 (hex digit 8, 9, a or b)
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
HOLDOUT = "holdout"
MAX_WINDOWS_PER_JOURNEY = 16
MAX_CONTEXT_ATTRIBUTES = 16
MAX_ATTRIBUTE_CHARS = 256
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TEMPLATE = re.compile(r"\$\{([a-z_]+(?:\.[A-Za-z0-9_\-]+)?)\}")


@dataclass(frozen=True)
class Tick:
    """The clock reached ``at``: fire what is due."""

    at: int


@dataclass(frozen=True)
class Suppressed:
    journey_id: str
    action: str
    reason: SuppressionReason
    trigger: str


@dataclass(slots=True)
class Step:
    state: CustomerState
    outcome: StepOutcome
    transitions: list[dict[str, Any]] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    suppressed: list[Suppressed] = field(default_factory=list)
    deferred: int = 0
    windows_armed: int = 0
    windows_fired: int = 0
    windows_cancelled: int = 0
    fired_at: list[int] = field(default_factory=list)  # deadlines of the windows that fired
    conversions: list[dict[str, Any]] = field(default_factory=list)  # journeys.lifecycle
    next_due: int | None = None


@dataclass(slots=True)
class _Candidate:
    journey: Journey
    rule: str
    spec: ActionSpec
    trigger: str
    trigger_kind: str
    attributes: Mapping[str, str]


def transition_record(
    customer_id: str,
    journey_key: str,
    js: JourneyState,
    to_stage: str,
    at: int,
    cause: str,
    reason: str,
    score: float | None = None,
) -> dict[str, Any]:
    """The StageTransition record of a move of ``js`` to ``to_stage`` (before ``js`` moves)."""
    previous = js["stage"]
    return {
        "customer_id": customer_id,
        "journey_id": journey_key,
        "from_stage": previous,
        "to_stage": to_stage,
        "at": at,
        "cause": cause,
        "reason": reason,
        "time_in_stage_ms": at - js["stage_since"] if previous is not None else None,
        "instance": js["instance"],
        "score": score,
        "touchpoints": js["touchpoints"],
        "channel_switches": js["channel_switches"],
    }


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _ms(dt: datetime) -> int:
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def action_id(journey_id: str, rule: str, trigger: str) -> str:
    """Same journey, rule and trigger: same id, on every run and every worker: the UUID v5 of
    ``journey|rule|trigger`` in ``ACTION_ID_NAMESPACE`` (``uuid.uuid5``, without its objects:
    the SHA-1's first 16 bytes in hex, with the version nibble and the variant bits set)."""
    h = _sha1(_NAMESPACE_BYTES + f"{journey_id}|{rule}|{trigger}".encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def assign_variant(journey: Journey, customer_id: str) -> str | None:
    """Deterministic hash split: ``holdout``, a variant name, or None without an experiment."""
    exp = journey.experiment
    if exp is None:
        return None
    digest = hashlib.sha256(f"{exp.id}:{customer_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < exp.holdout:
        return HOLDOUT
    u = (u - exp.holdout) / (1 - exp.holdout)
    total = sum(w for _, w in exp.variants)
    cumulative = 0.0
    for name, weight in exp.variants:
        cumulative += weight / total
        if u < cumulative:
            return name
    return exp.variants[-1][0]


class Engine:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.policies = catalog.policies
        self.journeys = catalog.journeys
        self._by_id = {j.id: j for j in catalog.journeys}
        self._windows = {j.id: {w.id: w for w in j.windows} for j in catalog.journeys}
        self._chained = {
            j.id: {w.id: [c for c in j.windows if c.after == w.id] for w in j.windows}
            for j in catalog.journeys
        }
        self._inactivity = {
            j.id: j.inactivity_ms for j in catalog.journeys if j.inactivity_ms is not None
        }
        self._longest_cap = max((c.per_ms for c in self.policies.frequency_caps), default=0)
        self._dispatch = Dispatch(catalog)
        self._index = self._dispatch.index
        self._plans = self._dispatch.plans

    # -- public -----------------------------------------------------------------------------

    def new_state(self, customer_id: str) -> CustomerState:
        return new_customer(customer_id)

    def advance(
        self, state: CustomerState | None, item: Mapping[str, Any] | Tick, now: int | None = None
    ) -> Step:
        if isinstance(item, Tick):
            if state is None:
                raise ValueError("a tick needs the state of a known customer")
            step = Step(state, "tick", [], [], [], 0, 0, 0, 0, [])
            self._fire_due(step, item.at, now)
            step.next_due = self.next_due(state)
            return step
        return self._touchpoint(state, item, now)  # it works out next_due as it goes

    def next_due(self, state: CustomerState) -> int | None:
        """The earliest instant something of this customer is due (None: nothing is)."""
        best: int | None = None
        for p in state["pending"]:
            due = p["due"]
            if best is None or due < best:
                best = due
        inactivity = self._inactivity
        for jid, js in state["journeys"].items():
            if js["active"]:
                best = _journey_due(js, inactivity.get(jid), best)
        return best

    # -- touchpoints ------------------------------------------------------------------------

    def _touchpoint(
        self, state: CustomerState | None, tp: Mapping[str, Any], now: int | None
    ) -> Step:
        if state is None:
            state = new_customer(tp["customer_id"])
        step = Step(state, "processed", [], [], [], 0, 0, 0, 0, [])  # positional: cheaper
        event_id = tp["event_id"]
        if event_id in state["seen"]:
            step.outcome = "duplicate"
            step.next_due = self.next_due(state)
            return step
        t = tp["occurred_at"]
        if state["seen"] and t < state["watermark"] - self.policies.allowed_lateness_ms:
            step.outcome = "late"
            step.next_due = self.next_due(state)
            return step
        journeys = state["journeys"]
        if journeys or state["pending"]:
            # what fell due strictly before this touchpoint (one scan when nothing did)
            self._fire_due(step, t - 1, now)
        channel = tp["channel"]
        type_ = tp["type"]
        plan = self._plans.get((channel, type_)) or self._dispatch.plan(channel, type_)
        kept = _kept(tp["attributes"])
        self._observe(state, tp, plan, kept)
        # next_due is gathered from each journey once this touchpoint is done with it (no
        # journey's rules touch another's windows or activity), then from the deferred actions
        best: int | None = None
        inactivity = self._inactivity
        if journeys:
            # active journeys without a rule for this touchpoint: it only counts as activity
            # (they cause nothing, so the order they are updated in does not matter)
            reacting = plan.reacting
            survey = type_ == SURVEY_RESPONSE
            index = self._index
            for jid, js in journeys.items():
                if not js["active"] or jid in reacting:
                    continue
                if jid in index:
                    js["touchpoints"] += 1
                    last = js["last_channel"]
                    if last is not None and last != channel:
                        js["channel_switches"] += 1
                    js["last_channel"] = channel
                    if t > js["last_activity"]:
                        js["last_activity"] = t
                    if survey:
                        satisfaction = _satisfaction(tp)
                        if satisfaction is not None:
                            js["satisfaction"] = satisfaction
                best = _journey_due(js, inactivity.get(jid), best)
        # journeys with a rule this touchpoint may match, in catalog order
        candidates: list[_Candidate] = []
        for jp in plan.journeys:
            self._journey_touchpoint(step, jp, tp, kept, candidates)
            jid = jp.journey.id
            after = journeys.get(jid)
            if after is not None and after["active"]:
                best = _journey_due(after, inactivity.get(jid), best)
        if candidates:
            self._decide(step, candidates, t, now)
        for p in state["pending"]:
            due = p["due"]
            if best is None or due < best:
                best = due
        step.next_due = best
        return step

    def _observe(
        self,
        state: CustomerState,
        tp: Mapping[str, Any],
        plan: TouchpointPlan,
        kept: dict[str, str],
    ) -> None:
        """Customer-level facts: de-duplication, context, time zone, engagement, consent,
        suppressions."""
        p = self.policies
        seen = state["seen"]
        seen.append(tp["event_id"])
        excess = len(seen) - p.remember_events
        if excess > 0:
            del seen[:excess]
        while len(seen) > 1 and sum(map(len, seen)) > MAX_SEEN_CHARS:
            del seen[0]
        t = tp["occurred_at"]
        if t > state["watermark"]:
            state["watermark"] = t
        attributes: Mapping[str, str] = tp["attributes"]
        channel = tp["channel"]
        if p.recent_touchpoints:
            recent = state["recent"]
            recent.insert(
                0,
                {
                    "event_id": tp["event_id"],
                    "channel": channel,
                    "type": tp["type"],
                    "occurred_at": t,
                    "attributes": kept,
                },
            )
            if len(recent) > p.recent_touchpoints:
                del recent[p.recent_touchpoints :]
        tz = attributes.get("timezone")
        if tz and tz != state["timezone"] and _zone(tz) is not None:
            state["timezone"] = tz
        engagement = state["engagement"]
        if channel not in engagement and len(engagement) >= MAX_ENGAGEMENT_CHANNELS:
            del engagement[min(engagement, key=engagement.__getitem__)]  # the least engaged
        engagement[channel] = engagement.get(channel, 0) + 1
        if plan.consent_withdraw is not NEVER and holds(plan.consent_withdraw, attributes):
            target = attributes.get(p.consent_channel_attribute) or channel
            if len(target) > MAX_CHANNEL_CHARS:
                pass  # names no channel
            elif len(state["opted_out"]) >= MAX_OPTED_OUT and target not in state["opted_out"]:
                state["opted_out"] = ["all"]
            elif target not in state["opted_out"]:
                state["opted_out"].append(target)
                state["opted_out"].sort()
        elif plan.consent_grant is not NEVER and holds(plan.consent_grant, attributes):
            target = attributes.get(p.consent_channel_attribute) or channel
            state["opted_out"] = (
                [] if target == "all" else [c for c in state["opted_out"] if c != target]
            )
        for s, end, start in plan.suppressions:
            if s.id in state["suppressions"] and holds(end, attributes):
                del state["suppressions"][s.id]
            if holds(start, attributes):
                state["suppressions"][s.id] = t

    def _journey_touchpoint(
        self,
        step: Step,
        jp: JourneyPlan,
        tp: Mapping[str, Any],
        kept: dict[str, str],
        candidates: list[_Candidate],
    ) -> None:
        journey = jp.journey
        state = step.state
        js = state["journeys"].get(journey.id)
        t = tp["occurred_at"]
        attributes: Mapping[str, str] = tp["attributes"]
        entered = False
        if js is None or not js["active"]:
            entry = jp.entry
            if entry is NEVER or (entry is not None and not entry(attributes)):  # type: ignore[operator]
                return
            if not self._may_enter(journey, js, t):
                return
            js = self._enter(step, jp, js, tp)
            entered = True
        channel = tp["channel"]
        js["touchpoints"] += 1
        if js["last_channel"] is not None and js["last_channel"] != channel:
            js["channel_switches"] += 1
        js["last_channel"] = channel
        if t > js["last_activity"]:
            js["last_activity"] = t
        if jp.satisfaction:
            satisfaction = _satisfaction(tp)
            if satisfaction is not None:
                js["satisfaction"] = satisfaction

        waits = jp.waits
        windows = js["windows"]
        if waits and windows:
            for w in list(windows):
                window_id = w["window"]
                if window_id not in waits or t > w["deadline"]:
                    continue
                test = waits[window_id]
                correlation = w["correlation"]
                if (test is None or test(attributes)) and (
                    not correlation or all(attributes.get(k) == v for k, v in correlation.items())
                ):
                    windows.remove(w)
                    step.windows_cancelled += 1
                    on_match = self._windows[journey.id][window_id].on_match
                    if on_match.goto is not None or on_match.action is not None:
                        self._outcome(
                            step,
                            journey,
                            js,
                            on_match,
                            f"window:{window_id}:match",
                            w,
                            t,
                            candidates,
                        )

        if not entered and jp.stages:
            current = js["stage"]
            for s, test in jp.stages:
                if (
                    s.id != current
                    and (not s.allowed_from or current in s.allowed_from)
                    and (test is None or test(attributes))
                ):
                    self._move(step, journey, js, s.id, t, tp["event_id"], "event")
                    break

        for rule, name, test in jp.actions:
            if (test is None or test(attributes)) and (
                not rule.in_stages or js["stage"] in rule.in_stages
            ):
                candidates.append(
                    _Candidate(journey, name, rule.action, tp["event_id"], "event", attributes)
                )

        for definition, test in jp.starts:
            if test is None or test(attributes):
                self._arm_from_event(step, journey, js, definition, tp, kept)

        if not entered:
            goal = jp.goal
            if goal is not NEVER and (goal is None or goal(attributes)):  # type: ignore[operator]
                self._exit(step, journey, js, "goal", t, tp["event_id"])
            elif jp.exits and any(test is None or test(attributes) for test in jp.exits):
                self._exit(step, journey, js, "exit", t, tp["event_id"])

    def _may_enter(self, journey: Journey, js: JourneyState | None, t: int) -> bool:
        if js is None:
            return True
        if journey.reentry == "always":
            return True
        if journey.reentry == "after":
            exited = js["exited_at"]
            return exited is not None and t >= exited + (journey.reentry_after_ms or 0)
        return False

    def _enter(
        self, step: Step, jp: JourneyPlan, previous: JourneyState | None, tp: Mapping[str, Any]
    ) -> JourneyState:
        t = tp["occurred_at"]
        journey = jp.journey
        attributes = tp["attributes"]
        # `from` restricts moves between stages, not where a customer enters
        first = journey.stages[0]
        for s, test in jp.stages:
            if test is None or test(attributes):
                first = s
                break
        js: JourneyState = {
            "instance": (previous["instance"] if previous else 0) + 1,
            "active": True,
            "stage": None,
            "stage_since": t,
            "entered_at": t,
            "last_activity": t,
            "exited_at": previous["exited_at"] if previous else None,
            "touchpoints": 0,
            "channel_switches": 0,
            "last_channel": None,
            "satisfaction": None,
            "windows": [],
        }
        step.state["journeys"][journey.id] = js
        self._move(step, journey, js, first.id, t, tp["event_id"], "event")
        return js

    # -- windows ----------------------------------------------------------------------------

    def _arm_from_event(
        self,
        step: Step,
        journey: Journey,
        js: JourneyState,
        definition: Window,
        tp: Mapping[str, Any],
        kept: dict[str, str],
    ) -> None:
        attributes: Mapping[str, str] = tp["attributes"]
        correlation: dict[str, str] = {}
        for k in definition.correlate:
            if k not in attributes:
                return  # nothing to correlate on: this touchpoint cannot arm a correlated window
            correlation[k] = attributes[k]
        self._arm(
            step, journey, js, definition, tp["occurred_at"], tp["event_id"], correlation, kept
        )

    def _arm(
        self,
        step: Step,
        journey: Journey,
        js: JourneyState,
        definition: Window,
        start: int,
        origin_event: str,
        correlation: dict[str, str],
        attributes: dict[str, str],
    ) -> None:
        if len(correlation) == 1:
            key = f"{definition.id}:{next(iter(correlation.values()))}"
        elif correlation:
            suffix = "|".join(correlation[k] for k in sorted(correlation))
            key = f"{definition.id}:{suffix}"
        else:
            key = definition.id
        armed: WindowState = {
            "key": key,
            "window": definition.id,
            "instance_id": f"{journey.id}/{key}/{origin_event}",
            "origin_event": origin_event,
            "armed_at": start,
            "deadline": start + definition.within_ms,
            "correlation": correlation,
            "attributes": attributes,
        }
        windows = js["windows"]
        # kept sorted by key, keys unique: replace the same key, else insert in order
        n = 0
        for w in windows:
            if w["key"] >= key:
                break
            n += 1
        if n < len(windows) and windows[n]["key"] == key:
            windows[n] = armed
        elif len(windows) >= MAX_WINDOWS_PER_JOURNEY:
            windows.append(armed)
            windows.sort(key=lambda w: (w["armed_at"], w["key"]))
            del windows[0]
            step.windows_cancelled += 1
            windows.sort(key=lambda w: w["key"])
        else:
            windows.insert(n, armed)
        step.windows_armed += 1

    def _fire_due(self, step: Step, until: int, now: int | None) -> None:
        """Fire everything due at or before ``until``, earliest first, chains included.

        What is due is gathered in one scan and fired in order. Firing an entry never moves
        another's due time; it may remove some (an inactivity exit drops its journey's windows),
        which are skipped, and it may add some: a chained window armed, an action deferred by
        quiet hours. Only then is the state scanned again, so a step that fires one window
        without a chain scans once instead of twice. The order is the same as looking for the
        earliest entry after every firing (tests/journeys/test_fire_due.py holds it to that)."""
        state = step.state
        journeys = state["journeys"]
        while True:
            due = self._all_due(state, until)
            if due is None:
                return
            for at, kind, journey_id, key in due:
                armed, deferred = step.windows_armed, step.deferred
                if kind == 0:
                    self._release(step, key, at, now)
                    continue  # releasing adds nothing
                js = journeys[journey_id]
                if not js["active"]:
                    continue  # exited for inactivity since the scan
                journey = self._by_id[journey_id]
                if kind == 2:
                    self._exit(
                        step,
                        journey,
                        js,
                        "inactivity",
                        at,
                        f"{journey_id}/inactivity/{js['instance']}@{js['last_activity']}",
                    )
                    continue
                windows = js["windows"]
                n = 0
                while windows[n]["key"] != key:
                    n += 1
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
                if step.windows_armed != armed or step.deferred != deferred:
                    break  # something new may be due: scan again
            else:
                return

    def _all_due(self, state: CustomerState, until: int) -> list[tuple[int, int, str, str]] | None:
        """Everything due at or before ``until`` as (due, kind, journey id, key), kind 0 a
        deferred action, 1 a window, 2 an inactivity timeout, in that order (ties: by kind,
        then journey id and key); None when nothing is."""
        due: list[tuple[int, int, str, str]] | None = None
        for p in state["pending"]:
            if p["due"] <= until:
                item = (p["due"], 0, p["journey_id"], p["action_id"])
                if due is None:
                    due = [item]
                else:
                    due.append(item)
        inactivity = self._inactivity
        for jid, js in state["journeys"].items():
            if not js["active"]:
                continue
            for w in js["windows"]:
                if w["deadline"] <= until:
                    item = (w["deadline"], 1, jid, w["key"])
                    if due is None:
                        due = [item]
                    else:
                        due.append(item)
            idle = inactivity.get(jid)
            if idle is not None and js["last_activity"] + idle <= until:
                item = (js["last_activity"] + idle, 2, jid, "")
                if due is None:
                    due = [item]
                else:
                    due.append(item)
        if due is not None and len(due) > 1:
            due.sort()
        return due

    def _outcome(
        self,
        step: Step,
        journey: Journey,
        js: JourneyState,
        outcome: Outcome,
        rule: str,
        w: WindowState,
        at: int,
        candidates: list[_Candidate],
    ) -> None:
        if outcome.goto is not None and outcome.goto != js["stage"]:
            self._move(step, journey, js, outcome.goto, at, w["instance_id"], "window")
        if outcome.action is not None:
            candidates.append(
                _Candidate(
                    journey, rule, outcome.action, w["instance_id"], "window", w["attributes"]
                )
            )

    # -- transitions ------------------------------------------------------------------------

    def _move(
        self,
        step: Step,
        journey: Journey,
        js: JourneyState,
        to_stage: str,
        at: int,
        cause: str,
        reason: str,
        score: float | None = None,
    ) -> None:
        step.transitions.append(
            transition_record(
                step.state["customer_id"], journey.id, js, to_stage, at, cause, reason, score
            )
        )
        js["stage"] = to_stage
        js["stage_since"] = at

    def _exit(
        self, step: Step, journey: Journey, js: JourneyState, reason: str, at: int, cause: str
    ) -> None:
        score = journey_score(journey, js, completed=reason == "goal")
        self._move(step, journey, js, EXIT_STAGES[reason], at, cause, reason, score)
        step.windows_cancelled += len(js["windows"])
        js["windows"] = []
        js["active"] = False
        js["stage"] = None
        js["exited_at"] = at

    # -- decisions: policies ----------------------------------------------------------------

    def _decide(self, step: Step, candidates: list[_Candidate], at: int, now: int | None) -> None:
        """Apply experiments, suppressions, arbitration, consent, caps, channel choice and quiet
        hours to the actions one input caused, decided at event time ``at``."""
        if not candidates:
            return
        state = step.state
        self._prune_sent(state, at)
        survivors: list[tuple[_Candidate, str | None]] = []
        for c in candidates:
            variant = (
                assign_variant(c.journey, state["customer_id"])
                if c.journey.experiment is not None
                else None
            )
            if variant == HOLDOUT:
                self._suppress(step, c, "holdout")
            elif c.spec.variants and variant not in c.spec.variants:
                self._suppress(step, c, "experiment")
            elif state["suppressions"] and self._suppressed_by_policy(state, c.spec.category, at):
                self._suppress(step, c, "suppression")
            else:
                survivors.append((c, variant))
        if len(survivors) > 1:
            survivors.sort(key=lambda cv: (-cv[0].spec.priority, cv[0].journey.id, cv[0].rule))
        marketing = 0
        for c, variant in survivors:
            category = c.spec.category
            if category == "marketing" and marketing >= self.policies.marketing_actions_per_step:
                self._suppress(step, c, "arbitration")
                continue
            channel, reason = self._choose_channel(state, c.spec, at)
            if channel is None:
                self._suppress(step, c, reason)
                continue
            if category == "marketing":
                marketing += 1
            js = state["journeys"].get(c.journey.id)
            stage = js["stage"] if js is not None else None
            decision: PendingAction = {  # a literal: cheaper than calling the TypedDict
                "due": at,
                "decided_at": at,
                "action_id": action_id(c.journey.id, c.rule, c.trigger),
                "journey_id": c.journey.id,
                "action": c.spec.name,
                "channel": channel,
                "priority": c.spec.priority,
                "trigger": c.trigger,
                "trigger_kind": c.trigger_kind,
                "parameters": _render(
                    c.spec.parameters, c.attributes, stage, c.journey.id, variant
                ),
                "category": category,
                "variant": variant,
                "expires_at": at + c.spec.expires_after_ms if c.spec.expires_after_ms else None,
            }
            release = self._quiet_until(state, channel, category, at)
            if release is not None:
                expires_at = decision["expires_at"]
                if expires_at is not None and release > expires_at:
                    self._suppress(step, c, "expired")
                    continue
                decision["due"] = release
                state["pending"].append(decision)
                state["pending"].sort(key=lambda p: (p["due"], p["action_id"]))
                step.deferred += 1
            else:
                self._emit(step, decision, now, not_before=None)
            if category != "transactional":  # a deferred action reserves its cap slot
                state["sent"].append({"at": decision["due"], "channel": channel})

    def _release(self, step: Step, pending_id: str, at: int, now: int | None) -> None:
        """A quiet-hours deferral ends: consent and suppressions are checked again (they may
        have changed); the cap was reserved when the action was deferred."""
        state = step.state
        p = next(x for x in state["pending"] if x["action_id"] == pending_id)
        state["pending"].remove(p)
        reason: SuppressionReason | None = None
        if p["category"] != "transactional" and not self._consented(state, p["channel"]):
            reason = "consent"
        elif self._suppressed_by_policy(state, p["category"], at):
            reason = "suppression"
        if reason is not None:
            step.suppressed.append(Suppressed(p["journey_id"], p["action"], reason, p["trigger"]))
            return
        self._emit(step, p, now, not_before=at)

    def _emit(self, step: Step, d: PendingAction, now: int | None, not_before: int | None) -> None:
        state = step.state
        js = state["journeys"].get(d["journey_id"])
        step.actions.append(
            {
                "action_id": d["action_id"],
                "customer_id": state["customer_id"],
                "journey_id": d["journey_id"],
                "action": d["action"],
                "channel": d["channel"],
                "priority": d["priority"],
                "created_at": now if now is not None else d["due"],
                "trigger": d["trigger"],
                "trigger_kind": d["trigger_kind"],
                "stage": js["stage"] if js is not None else None,
                "parameters": d["parameters"],
                "context": self.context(state),
                "expires_at": d["expires_at"],
                "category": d["category"],
                "variant": d["variant"],
                "not_before": not_before,
            }
        )

    def context(self, state: CustomerState) -> dict[str, Any]:
        """What the next channel needs: current stages and recent touchpoints, bounded."""
        return {
            "stages": {
                jid: js["stage"]
                for jid, js in sorted(state["journeys"].items())
                if js["active"] and js["stage"] is not None
            },
            # entries are never changed once recorded (newer ones are put before them)
            "recent": list(state["recent"]),
        }

    @staticmethod
    def _suppress(step: Step, c: _Candidate, reason: SuppressionReason) -> None:
        step.suppressed.append(Suppressed(c.journey.id, c.spec.name, reason, c.trigger))

    def _suppressed_by_policy(self, state: CustomerState, category: str, at: int) -> bool:
        for s in self.policies.suppressions:
            since = state["suppressions"].get(s.id)
            if since is None or category not in s.categories:
                continue
            if s.max_duration_ms is None or at < since + s.max_duration_ms:
                return True
        return False

    @staticmethod
    def _consented(state: CustomerState, channel: str) -> bool:
        opted_out = state["opted_out"]
        return not opted_out or ("all" not in opted_out and channel not in opted_out)

    def _choose_channel(
        self, state: CustomerState, spec: ActionSpec, at: int
    ) -> tuple[str | None, SuppressionReason]:
        """The allowed channel the customer engages with most (ties: the listed order)."""
        exempt = spec.category == "transactional"
        allowed: Sequence[str] = spec.channels
        if not exempt and state["opted_out"]:
            allowed = [c for c in allowed if self._consented(state, c)]
        if not allowed:
            return None, "consent"
        if not exempt and self.policies.frequency_caps:
            capped = self._capped(state, at)
            if capped:
                allowed = [] if "any" in capped else [c for c in allowed if c not in capped]
                if not allowed:
                    return None, "cap"
        engagement = state["engagement"]
        best, most = allowed[0], -1
        for c in allowed:  # the first of the most engaged, in the listed order
            n = engagement.get(c, 0)
            if n > most:
                best, most = c, n
        return best, "cap"

    def _capped(self, state: CustomerState, at: int) -> set[str]:
        """The channels a cap closes at ``at`` ("any": all of them); one pass over ``sent``."""
        caps = self.policies.frequency_caps
        if not state["sent"]:
            return {cap.channel for cap in caps if cap.max <= 0}
        used = [0] * len(caps)
        floors = [at - cap.per_ms for cap in caps]
        for s in state["sent"]:
            sent_at, sent_channel = s["at"], s["channel"]
            for n, cap in enumerate(caps):
                if sent_at > floors[n] and (cap.channel == "any" or cap.channel == sent_channel):
                    used[n] += 1
        return {cap.channel for n, cap in enumerate(caps) if used[n] >= cap.max}

    def _under_caps(self, state: CustomerState, channel: str, at: int) -> bool:
        """The reference for ``_capped``: is ``channel`` under every cap that applies?"""
        for cap in self.policies.frequency_caps:
            if cap.channel not in (channel, "any"):
                continue
            since = at - cap.per_ms
            used = sum(
                1
                for s in state["sent"]
                if s["at"] > since and (cap.channel == "any" or s["channel"] == channel)
            )
            if used >= cap.max:
                return False
        return True

    def _prune_sent(self, state: CustomerState, at: int) -> None:
        horizon = at - self._longest_cap
        if state["sent"] and state["sent"][0]["at"] <= horizon:
            state["sent"] = [s for s in state["sent"] if s["at"] > horizon]

    def _quiet_until(
        self, state: CustomerState, channel: str, category: str, at: int
    ) -> int | None:
        """End of the quiet hours ``at`` falls in, in the customer's time zone; None if not
        quiet (or the channel/category is not subject to quiet hours)."""
        quiet = self.policies.quiet_hours
        if quiet is None or category == "transactional" or channel not in quiet.channels:
            return None
        zone = _zone(state["timezone"] or quiet.default_timezone) or _zone("UTC")
        local = datetime.fromtimestamp(at / 1000, tz=UTC).astimezone(zone)
        minute = local.hour * 60 + local.minute
        start, end = quiet.start_minute, quiet.end_minute
        inside = start <= minute < end if start < end else (minute >= start or minute < end)
        if not inside:
            return None
        release = local.replace(hour=end // 60, minute=end % 60, second=0, microsecond=0)
        if release <= local:
            release = (release.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=zone)
        return _ms(release.astimezone(UTC))


def _kept(attributes: Mapping[str, str]) -> dict[str, str]:
    """The attributes a touchpoint leaves in the context and in the windows it arms: bounded
    in number and size, by name."""
    if len(attributes) <= MAX_CONTEXT_ATTRIBUTES:
        kept = dict(sorted(attributes.items()))  # names are unique: sorted by name
        if not kept or max(map(len, kept.values())) <= MAX_ATTRIBUTE_CHARS:
            return kept
    return {
        k: attributes[k][:MAX_ATTRIBUTE_CHARS] for k in sorted(attributes)[:MAX_CONTEXT_ATTRIBUTES]
    }


def _journey_due(js: JourneyState, idle: int | None, best: int | None) -> int | None:
    """The earlier of ``best`` and what an active journey has due: its windows' deadlines and,
    with an inactivity timeout of ``idle`` ms, its last activity plus that."""
    for w in js["windows"]:
        due = w["deadline"]
        if best is None or due < best:
            best = due
    if idle is not None:
        due = js["last_activity"] + idle
        if best is None or due < best:
            best = due
    return best


def _satisfaction(tp: Mapping[str, Any]) -> float | None:
    """NPS (0-10) or CSAT (1-5) of a survey response, normalised to [0, 1]."""
    if tp["type"] != "survey_response":
        return None
    attributes = tp["attributes"]
    try:
        score = float(attributes.get("score", ""))
    except ValueError:
        return None
    if attributes.get("survey", "nps").lower() == "csat":
        return min(1.0, max(0.0, (score - 1) / 4))
    return min(1.0, max(0.0, score / 10))


def journey_score(journey: Journey, js: JourneyState, completed: bool) -> float:
    """Weighted mean of completion, satisfaction (when known) and low effort, in [0, 1]."""
    w = journey.score
    effort = 1 - min(1.0, (js["touchpoints"] + js["channel_switches"]) / w.effort_budget)
    done = 1.0 if completed else 0.0
    satisfaction = js["satisfaction"]
    # sum() over the terms in this order, as before: the same float on every Python version
    if satisfaction is None:
        total = sum((w.completion, w.effort))
        value = sum((w.completion * done, w.effort * effort))
    else:
        total = sum((w.completion, w.effort, w.satisfaction))
        value = sum((w.completion * done, w.effort * effort, w.satisfaction * satisfaction))
    if total == 0:
        return 0.0
    return round(value / total, 4)


Placeholder = tuple[bool, str]  # (an attribute?, its name or the value's name)
Template = tuple[tuple[str, str, tuple[str | Placeholder, ...] | None], ...]


@lru_cache(maxsize=4096)
def _template(parameters: tuple[tuple[str, str], ...]) -> Template:
    """Parameters split once into literal text and placeholders (None: a value without any)."""
    out: list[tuple[str, str, tuple[str | Placeholder, ...] | None]] = []
    for k, v in parameters:
        if "${" not in v:
            out.append((k, v, None))
            continue
        parts: list[str | Placeholder] = []
        for n, piece in enumerate(_TEMPLATE.split(v)):
            if n % 2 == 0:
                if piece:
                    parts.append(piece)
            elif piece.startswith("attributes."):
                parts.append((True, piece.split(".", 1)[1]))
            else:
                parts.append((False, piece))
        out.append((k, v, tuple(parts)))
    return tuple(out)


def _render(
    parameters: tuple[tuple[str, str], ...],
    attributes: Mapping[str, str],
    stage: str | None,
    journey_id: str,
    variant: str | None,
) -> dict[str, str]:
    """``${attributes.NAME}``, ``${stage}``, ``${journey}``, ``${variant}``; unknown: empty."""
    values = {"stage": stage or "", "journey": journey_id, "variant": variant or ""}
    rendered = {}
    for k, v, parts in _template(parameters):
        if parts is None:
            rendered[k] = v
            continue
        text = []
        for p in parts:
            if isinstance(p, str):
                text.append(p)
            elif p[0]:
                text.append(attributes.get(p[1], ""))
            else:
                text.append(values.get(p[1], ""))
        rendered[k] = "".join(text)
    return rendered
