"""What a touchpoint can touch, by its (channel, type), worked out once.

Every condition of a catalog names the types and channels it accepts (empty: any), so whether
it can match a touchpoint is known from the touchpoint's channel and type alone, before any
attribute is looked at. ``Dispatch`` answers, for each (channel, type), which journeys can react
and with which rules (entry, stages, window starts and awaited events, event actions, goal, exit
events) and which policy conditions apply (consent, suppression start and end), each with the
compiled attribute test still to run (``journeys.conditions.residual``). A rule whose condition
names no type or no channel (e.g. "any touchpoint") is a wildcard: it is in the answer of every
type or channel; the rest only where their type and channel are.

The catalog is indexed by type and channel when the engine is built; the answer for a (channel,
type) is put together from that index the first time the pair is seen and kept (a catalog meets
a few hundred pairs; past ``MAX_PLANS`` distinct pairs new ones are still answered, just not
kept). Journeys absent from an answer evaluate no rule for that touchpoint; the engine still
counts it as activity of the customer's *active* journeys (and records a survey's score).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from journeys.conditions import NEVER, AttributeTest, Impossible, Residual, residual
from journeys.model import Catalog, Condition, EventAction, Journey, Stage, Suppression, Window

MAX_PLANS = 4096
SURVEY_RESPONSE = "survey_response"  # carries a score every active journey records

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class JourneyPlan:
    """One journey's rules that can match touchpoints of one (channel, type)."""

    index: int  # position in the catalog: journeys are visited in catalog order
    journey: Journey
    entry: Residual  # NEVER: this touchpoint cannot start the journey
    stages: tuple[tuple[Stage, AttributeTest | None], ...]  # stages whose `when` can match
    waits: dict[str, AttributeTest | None]  # window id -> test, for windows it may satisfy
    actions: tuple[tuple[EventAction, str, AttributeTest | None], ...]  # (rule, "action:id", test)
    starts: tuple[tuple[Window, AttributeTest | None], ...]  # windows it may arm
    goal: Residual
    exits: tuple[AttributeTest | None, ...]
    satisfaction: bool  # a survey response: may carry a score

    @property
    def reacts(self) -> bool:
        return bool(
            self.entry is not NEVER
            or self.stages
            or self.waits
            or self.actions
            or self.starts
            or self.goal is not NEVER
            or self.exits
        )


@dataclass(frozen=True, slots=True)
class TouchpointPlan:
    """Everything a touchpoint of one (channel, type) may touch."""

    journeys: tuple[JourneyPlan, ...]  # journeys with a rule that can match, in catalog order
    reacting: frozenset[str]  # their ids
    consent_withdraw: Residual
    consent_grant: Residual
    suppressions: tuple[tuple[Suppression, Residual, Residual], ...]  # (s, end, start)


def _possible(pairs: Iterable[tuple[T, Residual]]) -> list[tuple[T, AttributeTest | None]]:
    return [(item, test) for item, test in pairs if not isinstance(test, Impossible)]


class Dispatch:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.index = {j.id: n for n, j in enumerate(catalog.journeys)}
        # which journeys have a condition naming a type (or none) and a channel (or none)
        self._by_type: dict[str, set[int]] = {}
        self._by_channel: dict[str, set[int]] = {}
        self._any_type: set[int] = set()
        self._any_channel: set[int] = set()
        for n, journey in enumerate(catalog.journeys):
            for c in conditions_of(journey):
                for t in c.types:
                    self._by_type.setdefault(t, set()).add(n)
                if not c.types:
                    self._any_type.add(n)
                for ch in c.channels:
                    self._by_channel.setdefault(ch, set()).add(n)
                if not c.channels:
                    self._any_channel.add(n)
        self.plans: dict[tuple[str, str], TouchpointPlan] = {}  # read directly on the hot path

    def plan(self, channel: str, type_: str) -> TouchpointPlan:
        plan = self.plans.get((channel, type_))
        if plan is None:
            plan = self._build(channel, type_)
            if len(self.plans) < MAX_PLANS:
                self.plans[(channel, type_)] = plan
        return plan

    def _build(self, channel: str, type_: str) -> TouchpointPlan:
        maybe = (self._by_type.get(type_, set()) | self._any_type) & (
            self._by_channel.get(channel, set()) | self._any_channel
        )
        journeys = [
            jp
            for jp in (
                journey_plan(n, self.catalog.journeys[n], channel, type_) for n in sorted(maybe)
            )
            if jp.reacts
        ]
        p = self.catalog.policies
        suppressions = []
        for s in p.suppressions:
            end, start = residual(s.end, channel, type_), residual(s.start, channel, type_)
            if end is not NEVER or start is not NEVER:
                suppressions.append((s, end, start))
        return TouchpointPlan(
            journeys=tuple(journeys),
            reacting=frozenset(jp.journey.id for jp in journeys),
            consent_withdraw=residual(p.consent_withdraw, channel, type_),
            consent_grant=residual(p.consent_grant, channel, type_),
            suppressions=tuple(suppressions),
        )


def journey_plan(n: int, j: Journey, channel: str, type_: str) -> JourneyPlan:
    def r(c: Condition) -> Residual:
        return residual(c, channel, type_)

    return JourneyPlan(
        index=n,
        journey=j,
        entry=r(j.entry),
        stages=tuple(_possible((s, r(s.when)) for s in j.stages if s.when is not None)),
        waits=dict(_possible((w.id, r(w.wait_for)) for w in j.windows)),
        actions=tuple(
            (a, f"action:{a.id}", t) for a, t in _possible((a, r(a.when)) for a in j.actions)
        ),
        starts=tuple(_possible((w, r(w.start)) for w in j.windows if w.start is not None)),
        goal=r(j.goal) if j.goal is not None else NEVER,
        exits=tuple(t for _, t in _possible((c, r(c)) for c in j.exit_on)),
        satisfaction=type_ == SURVEY_RESPONSE,
    )


def conditions_of(journey: Journey) -> list[Condition]:
    out = [journey.entry, *journey.exit_on]
    if journey.goal is not None:
        out.append(journey.goal)
    out += [s.when for s in journey.stages if s.when is not None]
    for w in journey.windows:
        out.append(w.wait_for)
        if w.start is not None:
            out.append(w.start)
    out += [a.when for a in journey.actions]
    return out
