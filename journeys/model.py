"""Journey definitions as the engine sees them: frozen, validated, compiled from YAML files."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Category = Literal["marketing", "service", "transactional"]
Reentry = Literal["never", "always", "after"]
Comparison = Literal["eq", "ne", "in", "not_in", "exists", "gt", "gte", "lt", "lte"]
Status = Literal["active", "draining", "stopped"]

EXIT_STAGES = {"goal": "completed", "exit": "exited", "inactivity": "inactive"}


@dataclass(frozen=True)
class Predicate:
    attribute: str
    op: Comparison
    value: str | float | bool | tuple[str, ...]


@dataclass(frozen=True)
class Condition:
    """Matches a touchpoint; empty sets match anything."""

    types: frozenset[str] = frozenset()
    channels: frozenset[str] = frozenset()
    predicates: tuple[Predicate, ...] = ()


@dataclass(frozen=True)
class ActionSpec:
    name: str
    channels: tuple[str, ...]
    priority: int
    category: Category
    expires_after_ms: int | None = None
    parameters: tuple[tuple[str, str], ...] = ()
    variants: frozenset[str] = frozenset()  # empty: every variant


@dataclass(frozen=True)
class Outcome:
    """What happens when a window times out or its awaited event arrives."""

    goto: str | None = None
    action: ActionSpec | None = None


@dataclass(frozen=True)
class Stage:
    id: str
    when: Condition | None  # None: reached only through a window's goto (or as the first stage)
    allowed_from: frozenset[str] = frozenset()  # empty: from any stage


@dataclass(frozen=True)
class Window:
    id: str
    within_ms: int
    wait_for: Condition
    start: Condition | None = None  # armed by a matching event ...
    after: str | None = None  # ... or by the timeout of another window
    correlate: tuple[str, ...] = ()
    on_timeout: Outcome = Outcome()
    on_match: Outcome = Outcome()


@dataclass(frozen=True)
class EventAction:
    id: str
    when: Condition
    action: ActionSpec
    in_stages: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Experiment:
    id: str
    holdout: float
    variants: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Migration:
    """Customers of version ``from_version`` move to the version that declares this, at their
    next touchpoint or tick, when their stage is a key of ``stages``."""

    from_version: int
    stages: tuple[tuple[str, str], ...]  # (stage of the old version, stage of this one)


@dataclass(frozen=True)
class ConversionSpec:
    """An instance converts when a touchpoint matching ``when`` arrives within ``within_ms`` of
    its entry; ``value`` is a template like action parameters (``${attributes.amount}``)."""

    when: Condition
    within_ms: int
    value: str | None = None


@dataclass(frozen=True)
class ScoreWeights:
    completion: float = 0.5
    satisfaction: float = 0.3
    effort: float = 0.2
    effort_budget: int = 20


@dataclass(frozen=True)
class Journey:
    id: str
    name: str
    category: Category
    priority: int
    entry: Condition
    reentry: Reentry
    reentry_after_ms: int | None
    stages: tuple[Stage, ...]
    windows: tuple[Window, ...] = ()
    actions: tuple[EventAction, ...] = ()
    goal: Condition | None = None
    exit_on: tuple[Condition, ...] = ()
    inactivity_ms: int | None = None
    experiment: Experiment | None = None
    score: ScoreWeights = ScoreWeights()
    source: str = ""
    # lifecycle (journeys.lifecycle); ``id`` is the state key: the journey id for an unversioned
    # file or version 1, ``<id>@<version>`` for later versions (see ``state_key``)
    journey_id: str = ""  # the id authors write; empty: same as ``id``
    version: int | None = None
    status: Status = "active"
    migrate: Migration | None = None
    conversion: ConversionSpec | None = None
    instance_attribute: str | None = None  # instance_key: ${attributes.NAME}; None: one instance
    max_instances: int = 8  # open instances per customer; a touchpoint opening one more is ignored

    @property
    def public_id(self) -> str:
        return self.journey_id or self.id

    def stage(self, stage_id: str) -> Stage:
        return next(s for s in self.stages if s.id == stage_id)


@dataclass(frozen=True)
class FrequencyCap:
    channel: str  # a channel, or "any" for all channels together
    max: int
    per_ms: int


@dataclass(frozen=True)
class QuietHours:
    start_minute: int  # minutes after local midnight
    end_minute: int
    channels: frozenset[str]
    default_timezone: str


@dataclass(frozen=True)
class Suppression:
    id: str
    start: Condition
    end: Condition
    max_duration_ms: int | None
    categories: frozenset[str]


@dataclass(frozen=True)
class Policies:
    frequency_caps: tuple[FrequencyCap, ...] = ()
    quiet_hours: QuietHours | None = None
    consent_withdraw: Condition = Condition(types=frozenset({"consent_withdrawn"}))
    consent_grant: Condition = Condition(types=frozenset({"consent_granted"}))
    consent_channel_attribute: str = "channel"
    suppressions: tuple[Suppression, ...] = ()
    marketing_actions_per_step: int = 1
    recent_touchpoints: int = 10
    allowed_lateness_ms: int = 3_600_000
    remember_events: int = 256
    event_types: frozenset[str] = frozenset()
    source: str = ""


@dataclass(frozen=True)
class Catalog:
    journeys: tuple[Journey, ...]
    policies: Policies = field(default_factory=Policies)

    def journey(self, journey_id: str) -> Journey:
        return next(j for j in self.journeys if j.id == journey_id)

    def channels(self) -> frozenset[str]:
        """Every channel an action of the catalog may be sent to."""
        specs = [
            o.action
            for j in self.journeys
            for w in j.windows
            for o in (w.on_timeout, w.on_match)
            if o.action is not None
        ]
        specs += [a.action for j in self.journeys for a in j.actions]
        return frozenset(c for spec in specs for c in spec.channels)


def state_key(journey_id: str, version: int | None) -> str:
    """Where a customer's instance of a journey version lives in ``CustomerState.journeys``:
    the journey id for an unversioned journey and for version 1 (so state written before
    versions existed stays on version 1), ``<id>@<version>`` for later versions."""
    return journey_id if version is None or version == 1 else f"{journey_id}@{version}"


def split_state_key(key: str) -> tuple[str, int | None]:
    """(journey id, version) of a state key; version None when the key does not say."""
    journey_id, _, version = key.partition("@")
    return journey_id, int(version) if version.isdigit() else None
