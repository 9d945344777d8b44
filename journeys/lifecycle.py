"""Journeys that evolve and are measured: versions, drain and stop, migration, a version that
disappears, and conversions with attribution, around the unchanged engine.

``LifecycleEngine`` is the engine the runtime and ``percorso simulate`` build. It runs the
engine's step (``journeys.engine.Engine.advance``) and adds, in separate code around it:

- **Versions.** Each version of a journey is a journey of its own in the catalog, whose ``id`` is
  its state key (``journeys.model.state_key``: ``cart`` for version 1 or an unversioned file,
  ``cart@2`` for version 2), so a customer's windows, stage and counters stay with the version
  it entered. Records leave with the journey id the author wrote and a ``version`` field.
- **Pinning and draining.** New entries go only to the newest ``active`` version; a customer
  active in one version of a journey enters no other (re-entry rules look at its latest exit
  from any version).
- **Stop and removal.** Before a customer's next touchpoint or tick is applied, its instances
  of a ``stopped`` version leave with reason ``stopped``, and those of a version the catalog no
  longer has leave with reason ``version_removed`` (to stage ``exited``): their windows are
  cancelled, their deferred actions dropped, nothing is sent.
- **Migration.** A version with ``migrate: {from: N, stages: {old: new}}`` takes the customers
  of version N whose stage is listed, at their next touchpoint or tick, before it is applied:
  one transition (reason ``migrated``) from the old stage to the new one. Armed windows whose id
  the new version also has are kept under the new definition: same arming time and origin, new
  deadline ``armed_at + within`` (a deadline already past fires at once, at that deadline in
  event time); the others are cancelled. Customers in a stage the map does not list stay on
  version N. A migration applies even when version N is stopped.
- **Instances.** A journey with ``instance_key: "${attributes.NAME}"`` holds one instance per
  value of that attribute, stored under ``<state key>#<value>``; a step sees only the instances
  it is about (see ``_advance_keyed``). Policies stay per customer.
- **Conversions.** A journey with ``conversion`` records, for the customer's latest instance of
  the journey, the first touchpoint matching ``when`` within ``within`` of its entry (active or
  already exited): one conversion record, attributed to the last action that instance sent
  before that touchpoint and to the customer's experiment variant (``holdout`` included, since
  holdout customers enter and convert but are sent nothing). Transitions of such a journey carry
  ``variant`` so entries can be counted per variant.

A catalog without versions, stops, instance keys or conversions gives exactly the engine's
records (``tests/journeys/test_golden.py``); only a journey missing from the catalog changes
anything there: its customers leave with reason ``version_removed`` instead of failing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from journeys.conditions import matches
from journeys.engine import (
    Engine,
    Step,
    Suppressed,
    Tick,
    _render,
    assign_variant,
    journey_score,
    transition_record,
)
from journeys.model import Catalog, Journey, Migration, split_state_key, state_key
from journeys.state import CustomerState, JourneyState, WindowState

STOPPED = "stopped"
VERSION_REMOVED = "version_removed"
MIGRATED = "migrated"
EXITED_STAGE = "exited"


class LifecycleEngine(Engine):
    def __init__(self, catalog: Catalog) -> None:
        super().__init__(catalog)
        families: dict[str, list[Journey]] = {}
        for j in catalog.journeys:
            families.setdefault(j.public_id, []).append(j)
        # state key -> (journey id, version) for every journey whose records carry a version
        self._public: dict[str, tuple[str, int]] = {
            j.id: (j.public_id, j.version) for j in catalog.journeys if j.version is not None
        }
        # state key -> the state keys of every version of its journey (versioned journeys only)
        self._siblings: dict[str, tuple[str, ...]] = {}
        self._entry_key: dict[str, str | None] = {}  # journey id -> the version taking entries
        self._conversion_families: list[tuple[str, tuple[str, ...]]] = []
        for public_id, versions in families.items():
            versions.sort(key=lambda j: j.version or 0)
            keys = tuple(j.id for j in versions)
            if any(j.version is not None for j in versions):
                for j in versions:
                    self._siblings[j.id] = keys
            active = [j for j in versions if j.status == "active"]
            self._entry_key[public_id] = active[-1].id if active else None
            if any(j.conversion is not None for j in versions):
                self._conversion_families.append((public_id, keys))
        self._stopped = frozenset(j.id for j in catalog.journeys if j.status == "stopped")
        # state key of an older version -> (newer journey, its migration), newest first
        self._migrations: dict[str, list[tuple[Journey, Migration]]] = {}
        for j in sorted(catalog.journeys, key=lambda j: -(j.version or 0)):
            if j.migrate is not None:
                old = state_key(j.public_id, j.migrate.from_version)
                self._migrations.setdefault(old, []).append((j, j.migrate))
        self._converting = frozenset(
            j.id for j in catalog.journeys if j.conversion is not None
        ) | frozenset(k for _, keys in self._conversion_families for k in keys)
        self._entering: CustomerState | None = None  # the state being advanced, for entries
        # state key -> the touchpoint attribute whose values key its instances
        self._keyed: dict[str, str] = {
            j.id: j.instance_attribute for j in catalog.journeys if j.instance_attribute
        }
        self._values: dict[str, str] = {}  # slot -> key value of the touchpoint being applied
        self._parked: dict[str, JourneyState] = {}  # instances set aside during a step
        # state keys whose customers nothing can stop, remove or migrate
        self._settled = frozenset(
            j.id for j in catalog.journeys if j.id not in self._stopped
        ) - frozenset(self._migrations)
        # nothing to label, convert or key: the engine's step as it is
        self._plain = not (self._public or self._converting or self._keyed)

    # -- the step ---------------------------------------------------------------------------

    def advance(
        self, state: CustomerState | None, item: Mapping[str, Any] | Tick, now: int | None = None
    ) -> Step:
        early: list[dict[str, Any]] = []
        cancelled = 0
        if (
            state is not None
            and state["journeys"]
            and self._evolving(state)
            and self._applies(state, item)
        ):
            at = item.at if isinstance(item, Tick) else item["occurred_at"]
            cancelled = self._evolve(state, at, early)
        if self._plain:
            step = super().advance(state, item, now)
        elif self._keyed:
            step = self._advance_keyed(state, item, now)
        else:
            step = self._advance_one(state, item, now, {})
        if early:  # already labelled
            step.transitions[:0] = early
            step.windows_cancelled += cancelled
        return step

    def _advance_one(
        self,
        state: CustomerState | None,
        item: Mapping[str, Any] | Tick,
        now: int | None,
        instances: dict[str, str],
    ) -> Step:
        """The engine's step, then conversions and labels; ``instances``: the instance of
        each keyed journey (state key -> key value) that is in its journey's slot."""
        before = (
            self._latest_instances(state)
            if state is not None and self._conversion_families and not isinstance(item, Tick)
            else None
        )
        self._entering = state
        try:
            step = super().advance(state, item, now)
        finally:
            self._entering = None
        if self._conversion_families:
            if step.outcome == "processed" and not isinstance(item, Tick):
                self._convert(step, item, before or {}, instances)
            self._remember_actions(step)
        if self._public or self._converting or instances:
            self._relabel(step, instances)
        return step

    # -- instances --------------------------------------------------------------------------
    #
    # At rest, the instance with key value V of the journey at state key K is stored under
    # ``K#V``; the slot ``K`` itself stays empty. For one step, the engine sees only the
    # instances that step is about, moved into their slots, and none of the others (they are
    # set aside and put back afterwards), so everything it does by journey id (windows,
    # inactivity, stages, action ids) applies to that instance.

    def _advance_keyed(
        self, state: CustomerState | None, item: Mapping[str, Any] | Tick, now: int | None
    ) -> Step:
        parked = self._set_aside(state) if state is not None else {}
        self._parked = parked
        steps: list[Step] = []
        journeys = state["journeys"] if state is not None else None
        try:
            if state is not None and journeys is not None and self._applies(state, item):
                limit = item.at if isinstance(item, Tick) else item["occurred_at"] - 1
                due = sorted(
                    (d, key)
                    for key, js in parked.items()
                    if (d := self._instance_due(key, js)) is not None and d <= limit
                )
                for _, key in due:  # instances with something due fire first, one by one
                    slot, value = _split_instance(key)
                    one = {slot: value or ""}
                    journeys[slot] = parked.pop(key)
                    steps.append(self._advance_one(state, Tick(limit), now, one))
                    self._put_back(state, one, parked)
            instances: dict[str, str] = {}
            if not isinstance(item, Tick):
                attributes: Mapping[str, str] = item["attributes"]
                for slot, attribute in self._keyed.items():
                    value = attributes.get(attribute)
                    if value is None:
                        continue
                    instances[slot] = value
                    if journeys is not None and f"{slot}#{value}" in parked:
                        journeys[slot] = parked.pop(f"{slot}#{value}")
            self._values = instances
            main = self._advance_one(state, item, now, instances)
            state = main.state
            self._put_back(state, instances, parked)
        finally:
            self._values = {}
            self._parked = {}
            if state is not None:
                state["journeys"].update(parked)
        if state is not None:
            self._prune_instances(state)
        for sub in reversed(steps):
            main.transitions[:0] = sub.transitions
            main.actions[:0] = sub.actions
            main.suppressed[:0] = sub.suppressed
            main.conversions[:0] = sub.conversions
            main.fired_at[:0] = sub.fired_at
            main.deferred += sub.deferred
            main.windows_armed += sub.windows_armed
            main.windows_fired += sub.windows_fired
            main.windows_cancelled += sub.windows_cancelled
        main.next_due = self.next_due(main.state)
        return main

    def _set_aside(self, state: CustomerState) -> dict[str, JourneyState]:
        """Take every instance of a keyed journey out of the state. One that was stored in
        the slot itself (before the journey had an instance key) becomes the instance with the
        empty key: its windows and inactivity go on; no touchpoint carries its key."""
        journeys = state["journeys"]
        parked: dict[str, JourneyState] = {}
        for key in [k for k in journeys if _split_instance(k)[0] in self._keyed]:
            slot, value = _split_instance(key)
            parked[f"{slot}#{value or ''}"] = journeys.pop(key)
            if key == slot:
                for p in state["pending"]:
                    if p["journey_id"] == slot:
                        p["journey_id"] = f"{slot}#"
        return parked

    @staticmethod
    def _put_back(
        state: CustomerState, instances: dict[str, str], parked: dict[str, JourneyState]
    ) -> None:
        journeys = state["journeys"]
        for slot, value in instances.items():
            js = journeys.pop(slot, None)
            if js is not None:
                parked[f"{slot}#{value}"] = js
            for p in state["pending"]:
                if p["journey_id"] == slot:
                    p["journey_id"] = f"{slot}#{value}"

    def _instance_due(self, key: str, js: JourneyState) -> int | None:
        if not js["active"]:
            return None
        best = min((w["deadline"] for w in js["windows"]), default=None)
        idle = self._inactivity.get(_split_instance(key)[0])
        if idle is not None:
            due = js["last_activity"] + idle
            best = due if best is None else min(best, due)
        return best

    def _prune_instances(self, state: CustomerState) -> None:
        """Keep the most recent ``max_instances`` ended instances of each keyed journey (they
        hold re-entry and conversion facts); older ones are dropped."""
        journeys = state["journeys"]
        ended: dict[str, list[tuple[int, str]]] = {}
        for key, js in journeys.items():
            slot, value = _split_instance(key)
            if value is not None and not js["active"]:
                ended.setdefault(slot, []).append((js["exited_at"] or 0, key))
        for slot, keys in ended.items():
            bound = self._by_id[slot].max_instances if slot in self._by_id else 0
            for _, key in sorted(keys)[: max(0, len(keys) - bound)]:
                del journeys[key]

    def next_due(self, state: CustomerState) -> int | None:
        best = super().next_due(state)
        if self._keyed:  # the inactivity of instances stored under K#V
            best = self._instances_due(state, best)
        return best

    def _instances_due(self, state: CustomerState, best: int | None) -> int | None:
        for key, js in state["journeys"].items():
            if "#" in key:
                due = self._instance_due(key, js)
                if due is not None and (best is None or due < best):
                    best = due
        return best

    def _applies(self, state: CustomerState, item: Mapping[str, Any] | Tick) -> bool:
        """Whether the engine will apply this input (a duplicate or late touchpoint changes
        nothing, so it does not stop or migrate anyone either)."""
        if isinstance(item, Tick):
            return True
        if item["event_id"] in state["seen"]:
            return False
        late = state["watermark"] - self.policies.allowed_lateness_ms
        return not (state["seen"] and item["occurred_at"] < late)

    # -- versions ---------------------------------------------------------------------------

    def _may_enter(self, journey: Journey, js: JourneyState | None, t: int) -> bool:
        if journey.id in self._keyed:
            if journey.id not in self._values:
                return False  # a touchpoint without the key opens no instance
            family = self._siblings.get(journey.id, (journey.id,))
            open_ = sum(
                1
                for key, other in self._parked.items()
                if other["active"] and _split_instance(key)[0] in family
            )
            if open_ >= journey.max_instances:
                return False  # at the bound: the touchpoint is ignored by this journey
        siblings = self._siblings.get(journey.id)
        if siblings is None:
            if journey.status != "active":
                return False
            return super()._may_enter(journey, js, t)
        if self._entry_key.get(journey.public_id) != journey.id:
            return False
        state = self._entering
        latest = js
        if state is not None:
            for key in siblings:
                other = state["journeys"].get(key)
                if other is None:
                    continue
                if other["active"]:
                    return False  # pinned to the version it entered
                if latest is None or (other["exited_at"] or 0) > (latest["exited_at"] or 0):
                    latest = other
        return super()._may_enter(journey, latest, t)

    def _evolving(self, state: CustomerState) -> bool:
        """Whether an active instance is on a stopped, removed or migrating version."""
        settled = self._settled
        if state["journeys"].keys() <= settled:  # the usual case, in one set operation
            return False
        for key, js in state["journeys"].items():
            if js["active"] and key not in settled and key.partition("#")[0] not in settled:
                return True
        return False

    def _evolve(self, state: CustomerState, at: int, out: list[dict[str, Any]]) -> int:
        """Migrations, then stops and removals, before the input is applied; returns the windows
        cancelled."""
        cancelled = 0
        journeys = state["journeys"]
        if self._migrations:
            moved = True
            while moved:  # version 1 -> 2 -> 3 in one step when each version migrates
                moved = False
                for key in [k for k, js in journeys.items() if js["active"]]:
                    for target, migration in self._migrations.get(_split_instance(key)[0], ()):
                        stages = dict(migration.stages)
                        js = journeys[key]
                        if js["stage"] in stages:
                            cancelled += self._migrate(state, key, target, stages, at, out)
                            moved = True
                            break
        for key, js in journeys.items():
            if not js["active"]:
                continue
            slot = _split_instance(key)[0]
            if slot in self._stopped:
                cancelled += self._end(state, key, js, STOPPED, at, out)
            elif slot not in self._by_id:
                cancelled += self._end(state, key, js, VERSION_REMOVED, at, out)
        return cancelled

    def _end(
        self,
        state: CustomerState,
        key: str,
        js: JourneyState,
        reason: str,
        at: int,
        out: list[dict[str, Any]],
    ) -> int:
        slot, value = _split_instance(key)
        journey = self._by_id.get(slot)
        record = transition_record(
            state["customer_id"], key, js, EXITED_STAGE, at, f"{key}/{reason}", reason
        )
        if journey is not None:
            record["score"] = journey_score(journey, js, completed=False)
            self._label(record, key)
        else:
            public_id, version = split_state_key(slot)
            if version is None and public_id in self._public_family_ids():
                version = 1
            record["journey_id"] = public_id
            if version is not None:
                record["version"] = version
            if value is not None:
                record["instance_key"] = value
        out.append(record)
        cancelled = len(js["windows"])
        js["windows"] = []
        js["active"] = False
        js["stage"] = None
        js["exited_at"] = at
        state["pending"] = [p for p in state["pending"] if p["journey_id"] != key]
        return cancelled

    def _public_family_ids(self) -> frozenset[str]:
        return frozenset(public_id for public_id, _ in self._public.values())

    def _migrate(
        self,
        state: CustomerState,
        key: str,
        target: Journey,
        stages: dict[str, str],
        at: int,
        out: list[dict[str, Any]],
    ) -> int:
        old = state["journeys"][key]
        definitions = {w.id: w for w in target.windows}
        kept: list[WindowState] = []
        for w in old["windows"]:
            definition = definitions.get(w["window"])
            if definition is not None:
                kept.append({**w, "deadline": w["armed_at"] + definition.within_ms})
        new: JourneyState = {**old, "stage": stages[old["stage"] or ""], "windows": kept}
        new["stage_since"] = at
        cancelled = len(old["windows"]) - len(kept)
        record = transition_record(
            state["customer_id"], key, old, new["stage"] or "", at, f"{key}/migrate", MIGRATED
        )
        slot = _split_instance(key)[0]
        suffix = key[len(slot) :]  # the instance key, if any, stays
        self._label(record, target.id + suffix)
        record["from_version"] = self._by_id[slot].version or 1
        out.append(record)
        state["journeys"][target.id + suffix] = new
        old["active"] = False
        old["stage"] = None
        old["windows"] = []
        old["exited_at"] = at
        for p in state["pending"]:  # deferred actions go on, under the version they now belong to
            if p["journey_id"] == key:
                p["journey_id"] = target.id + suffix
        return cancelled

    # -- conversions ------------------------------------------------------------------------

    def _latest_instances(self, state: CustomerState) -> dict[str, tuple[str, JourneyState]]:
        """journey id -> (state key, state) of the customer's latest instance of it."""
        latest: dict[str, tuple[str, JourneyState]] = {}
        journeys = state["journeys"]
        for public_id, keys in self._conversion_families:
            best: tuple[str, JourneyState] | None = None
            for key in keys:
                js = journeys.get(key)
                if js is None:
                    continue
                # the latest entry; of one entry migrated to a newer version, the newer one
                if best is None or (js["entered_at"], js["active"]) >= (
                    best[1]["entered_at"],
                    best[1]["active"],
                ):
                    best = (key, js)
            if best is not None:
                latest[public_id] = (best[0], best[1].copy())
        return latest

    def _convert(
        self,
        step: Step,
        tp: Mapping[str, Any],
        before: dict[str, tuple[str, JourneyState]],
        instances: dict[str, str],
    ) -> None:
        state = step.state
        t = tp["occurred_at"]
        after = self._latest_instances(state)
        for public_id, _ in self._conversion_families:
            found = before.get(public_id) or after.get(public_id)
            if found is None:
                continue
            key, seen = found
            journey = self._by_id.get(key)
            spec = journey.conversion if journey is not None else None
            if journey is None or spec is None or seen.get("converted_at") is not None:
                continue
            entered = seen["entered_at"]
            if not entered <= t <= entered + spec.within_ms or not matches(spec.when, tp):
                continue
            live = state["journeys"].get(key)
            if live is not None and live["entered_at"] == entered:
                live["converted_at"] = t
            variant = assign_variant(journey, state["customer_id"])
            value = None
            if spec.value is not None:
                value = _render(
                    (("value", spec.value),), tp["attributes"], seen["stage"], public_id, variant
                )["value"]
            step.conversions.append(
                {
                    "customer_id": state["customer_id"],
                    "journey_id": public_id,
                    "version": journey.version,
                    "instance": instances.get(key),
                    "at": t,
                    "cause": tp["event_id"],
                    "value": value,
                    "variant": variant,
                    "attributed_action_id": seen.get("last_action"),
                    "entered_at": entered,
                }
            )

    def _remember_actions(self, step: Step) -> None:
        journeys = step.state["journeys"]
        for a in step.actions:
            jid = a["journey_id"]
            if _split_instance(jid)[0] in self._converting:
                # a deferred action released for an instance set aside this step: K#V
                js = journeys.get(jid) or self._parked.get(jid)
                if js is not None:
                    js["last_action"] = a["action_id"]

    # -- records ----------------------------------------------------------------------------

    def _label(self, record: dict[str, Any], key: str, value: str | None = None) -> None:
        """A record of the journey at state ``key`` gets the author's journey id, the version,
        the instance key, and (transitions of journeys measured by conversions) the variant."""
        slot, stored_value = _split_instance(key)
        if slot in self._converting and "action_id" not in record:
            record["variant"] = assign_variant(self._by_id[slot], record["customer_id"])
        names = self._public.get(slot)
        if names is not None:
            record["journey_id"], record["version"] = names
        elif slot != key:
            record["journey_id"] = slot
        if slot in self._keyed:
            record["instance_key"] = value if value is not None else stored_value

    def _relabel(self, step: Step, instances: dict[str, str]) -> None:
        """Records leave with the author's journey id, the version, the instance key and (for
        journeys measured by conversions) the variant; the state keeps its keys."""
        public = self._public
        for t in step.transitions:
            self._label(t, t["journey_id"], instances.get(t["journey_id"]))
        if not public and not self._keyed:
            return
        for a in step.actions:
            jid = a["journey_id"]
            aside = self._parked.get(jid)
            if aside is not None:  # released for an instance set aside: the engine saw no stage
                a["stage"] = aside["stage"]
            self._label(a, jid, instances.get(jid))
            stages = a["context"]["stages"]
            if any(k in public for k in stages):
                a["context"]["stages"] = {public.get(k, (k, 0))[0]: v for k, v in stages.items()}
        step.suppressed = [
            Suppressed(self._public_id(s.journey_id), s.action, s.reason, s.trigger)
            for s in step.suppressed
        ]

    def _public_id(self, key: str) -> str:
        slot = _split_instance(key)[0]
        names = self._public.get(slot)
        return names[0] if names is not None else slot


def _split_instance(key: str) -> tuple[str, str | None]:
    """(the journey's state key, the instance key value or None) of a state key ``K#V``."""
    slot, sep, value = key.partition("#")
    return slot, value if sep else None
