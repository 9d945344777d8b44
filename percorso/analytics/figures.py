"""Journey figures: pure aggregation of transitions, actions and dead letters. No Kafka, no I/O.

Per-customer facts (current stage, when it was entered, which stages this instance visited)
are passed in and returned as plain dicts; the caller keeps them on disk (``store.py``), so
memory holds only the per-journey aggregates, whose size depends on the catalog, not on the
number of customers.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

EXIT_STAGES = {"completed", "exited", "inactive"}
ENTRY = "(entry)"
LAST_ACTIONS = 20
LAST_DEAD_LETTERS = 5
PERCENTILES = (50, 90, 99)

# Time-in-stage histogram: bucket i holds durations in [GROWTH**(i-1), GROWTH**i) seconds, so
# a percentile read from it is within 10% of the true value, and a journey's histograms stay a
# few hundred integers whatever the traffic.
GROWTH = 1.1

CustomerRecord = dict[str, Any]


def bucket_of(ms: int) -> int:
    seconds = max(ms, 0) / 1000
    return 0 if seconds < 1 else int(math.log(seconds, GROWTH)) + 1


def bucket_upper_ms(index: int) -> int:
    return 1000 if index == 0 else round(GROWTH**index * 1000)


@dataclass
class Histogram:
    buckets: Counter[int] = field(default_factory=Counter)
    count: int = 0
    total_ms: int = 0

    def add(self, ms: int) -> None:
        self.buckets[bucket_of(ms)] += 1
        self.count += 1
        self.total_ms += max(ms, 0)

    def percentile(self, p: float) -> int | None:
        """The upper bound of the bucket holding the p-th percentile, in milliseconds."""
        if not self.count:
            return None
        rank = math.ceil(self.count * p / 100)
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return bucket_upper_ms(index)
        return None  # unreachable: the buckets sum to count

    def view(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "mean_ms": round(self.total_ms / self.count) if self.count else None,
            **{f"p{p}_ms": self.percentile(p) for p in PERCENTILES},
        }

    def dump(self) -> dict[str, Any]:
        return {
            "b": {str(k): v for k, v in self.buckets.items()},
            "n": self.count,
            "t": self.total_ms,
        }

    @classmethod
    def load(cls, d: dict[str, Any]) -> Histogram:
        return cls(Counter({int(k): v for k, v in d["b"].items()}), d["n"], d["t"])


@dataclass
class JourneyFigures:
    """Everything counted for one journey."""

    journey_id: str
    entries: int = 0
    now: Counter[str] = field(default_factory=Counter)  # customers in each stage now
    reached: Counter[str] = field(default_factory=Counter)  # instances that reached each stage
    flows: Counter[str] = field(default_factory=Counter)  # "from\tto" -> transitions
    exits: Counter[str] = field(default_factory=Counter)  # by reason: goal, exit, inactivity
    time_in_stage: dict[str, Histogram] = field(default_factory=dict)
    actions: Counter[str] = field(default_factory=Counter)  # "action\tchannel" -> count
    variants: Counter[str] = field(default_factory=Counter)  # actions by experiment variant
    versions: Counter[str] = field(default_factory=Counter)  # entries by journey version
    deferred: int = 0  # actions released after quiet hours (their not_before is set)
    last_actions: list[dict[str, Any]] = field(default_factory=list)  # newest first

    # -- applying records -------------------------------------------------------------------

    def transition(
        self, t: dict[str, Any], customer: CustomerRecord | None
    ) -> CustomerRecord | None:
        """Apply one StageTransition given the customer's record in this journey (None: never
        seen). Returns the new record, or None when the transition is a repeat of one already
        applied (an at-least-once redelivery) and changed nothing."""
        instance = int(t.get("instance") or 1)
        at = int(t["at"])
        source, target = t.get("from_stage"), t["to_stage"]
        if customer is not None and not _follows(customer, instance, at, source):
            return None
        if source is None:
            self.entries += 1
            if customer is not None and customer["stage"] is not None:
                self.now[customer["stage"]] -= 1  # its exit was never seen: it left anyway
            if t.get("version") is not None:
                self.versions[str(t["version"])] += 1
        elif customer is not None and customer["stage"] == source:
            if self.now[source] > 0:
                self.now[source] -= 1
            spent = t.get("time_in_stage_ms")
            if spent is None:
                spent = at - customer["since"]
            self.time_in_stage.setdefault(source, Histogram()).add(int(spent))
        self.flows[f"{source or ENTRY}\t{target}"] += 1
        new_instance = customer is None or customer["instance"] != instance
        visited = [] if new_instance else list(customer["visited"])  # type: ignore[index]
        if target in EXIT_STAGES:
            self.exits[str(t.get("reason") or "unknown")] += 1
            return {"stage": None, "since": at, "instance": instance, "at": at, "visited": visited}
        self.now[target] += 1
        if target not in visited:
            self.reached[target] += 1
            visited.append(target)
        return {"stage": target, "since": at, "instance": instance, "at": at, "visited": visited}

    def action(self, a: dict[str, Any]) -> None:
        """Apply one Action (the caller has already dropped repeats by ``action_id``)."""
        self.actions[f"{a['action']}\t{a['channel']}"] += 1
        if a.get("variant") is not None:
            self.variants[str(a["variant"])] += 1
        if a.get("not_before") is not None:
            self.deferred += 1
        self.last_actions.insert(0, action_summary(a))
        del self.last_actions[LAST_ACTIONS:]

    # -- reading ----------------------------------------------------------------------------

    def view(self, stage_order: list[str]) -> dict[str, Any]:
        """The JSON the page and the demo read. ``stage_order``: the stages as defined (stages
        seen on the topics but not defined, e.g. from an older definition, come after)."""
        seen = set(self.now) | set(self.reached) | set(self.time_in_stage)
        stages = [s for s in stage_order if s not in EXIT_STAGES]
        stages += sorted(seen - set(stages))
        completions = self.exits["goal"]
        ended = sum(self.exits.values())
        funnel = [{"stage": ENTRY, "reached": self.entries, "now": None, "conversion": None}]
        previous = self.entries
        for stage in stages:
            reached = self.reached[stage]
            funnel.append(
                {
                    "stage": stage,
                    "reached": reached,
                    "now": self.now[stage],
                    "conversion": _ratio(reached, previous),
                }
            )
            previous = reached
        funnel.append(
            {
                "stage": "completed",
                "reached": completions,
                "now": None,
                "conversion": _ratio(completions, self.entries),
            }
        )
        return {
            "journey_id": self.journey_id,
            "entries": self.entries,
            "active": sum(self.now.values()),
            "completions": completions,
            "exits": dict(sorted(self.exits.items())),
            "conversion_rate": _ratio(completions, self.entries),
            "abandonment_rate": _ratio(ended - completions, ended),
            "stages": stages,
            "now": {s: self.now[s] for s in stages},
            "funnel": funnel,
            "flows": [
                {"from": k.split("\t")[0], "to": k.split("\t")[1], "count": n}
                for k, n in sorted(self.flows.items(), key=lambda kv: (-kv[1], kv[0]))
            ],
            "time_in_stage": {s: h.view() for s, h in sorted(self.time_in_stage.items())},
            "actions": [
                {"action": k.split("\t")[0], "channel": k.split("\t")[1], "count": n}
                for k, n in sorted(self.actions.items())
            ],
            "actions_total": sum(self.actions.values()),
            "variants": dict(sorted(self.variants.items())),
            "versions": dict(sorted(self.versions.items())),
            "deferred": self.deferred,
            "last_actions": self.last_actions,
        }

    # -- persistence ------------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        return {
            "journey_id": self.journey_id,
            "entries": self.entries,
            "now": dict(self.now),
            "reached": dict(self.reached),
            "flows": dict(self.flows),
            "exits": dict(self.exits),
            "time_in_stage": {s: h.dump() for s, h in self.time_in_stage.items()},
            "actions": dict(self.actions),
            "variants": dict(self.variants),
            "versions": dict(self.versions),
            "deferred": self.deferred,
            "last_actions": self.last_actions,
        }

    @classmethod
    def load(cls, d: dict[str, Any]) -> JourneyFigures:
        return cls(
            journey_id=d["journey_id"],
            entries=d["entries"],
            now=Counter(d["now"]),
            reached=Counter(d["reached"]),
            flows=Counter(d["flows"]),
            exits=Counter(d["exits"]),
            time_in_stage={s: Histogram.load(h) for s, h in d["time_in_stage"].items()},
            actions=Counter(d["actions"]),
            variants=Counter(d["variants"]),
            versions=Counter(d["versions"]),
            deferred=d["deferred"],
            last_actions=d["last_actions"],
        )


@dataclass
class DeadLetters:
    """Dead letters by ``percorso.error.class``, and the last few with their message."""

    by_class: Counter[str] = field(default_factory=Counter)
    last: list[dict[str, Any]] = field(default_factory=list)

    def add(self, headers: dict[str, str | None], key: str | None, at_ms: int | None) -> None:
        error_class = headers.get("percorso.error.class") or "unknown"
        self.by_class[error_class] += 1
        self.last.insert(
            0,
            {
                "class": error_class,
                "message": (headers.get("percorso.error.message") or "")[:300],
                "source": f"{headers.get('percorso.source.topic')}"
                f"[{headers.get('percorso.source.partition')}]"
                f"@{headers.get('percorso.source.offset')}",
                "key": key,
                "at": at_ms,
            },
        )
        del self.last[LAST_DEAD_LETTERS:]

    def view(self) -> dict[str, Any]:
        return {
            "total": sum(self.by_class.values()),
            "by_class": dict(sorted(self.by_class.items())),
            "last": self.last,
        }

    def dump(self) -> dict[str, Any]:
        return {"by_class": dict(self.by_class), "last": self.last}

    @classmethod
    def load(cls, d: dict[str, Any]) -> DeadLetters:
        return cls(Counter(d["by_class"]), d["last"])


def action_summary(a: dict[str, Any]) -> dict[str, Any]:
    """What the page shows of one action: who, what, where, and the context the channel got."""
    context = a.get("context") or {}
    return {
        "action_id": a["action_id"],
        "customer_id": a["customer_id"],
        "action": a["action"],
        "channel": a["channel"],
        "stage": a.get("stage"),
        "created_at": a.get("created_at"),
        "trigger": a.get("trigger"),
        "variant": a.get("variant"),
        "not_before": a.get("not_before"),
        "parameters": dict(sorted((a.get("parameters") or {}).items())),
        "context": {
            "stages": dict(sorted((context.get("stages") or {}).items())),
            "recent": [
                {
                    "channel": r["channel"],
                    "type": r["type"],
                    "occurred_at": r["occurred_at"],
                    "attributes": dict(sorted((r.get("attributes") or {}).items())),
                }
                for r in (context.get("recent") or [])[:5]
            ],
        },
    }


def _follows(customer: CustomerRecord, instance: int, at: int, source: str | None) -> bool:
    """Whether a transition is the next one for this customer: later (or as late) in event
    time and from the stage the customer is in. A redelivered transition fails this test."""
    if (instance, at) < (customer["instance"], customer["at"]):
        return False
    if instance == customer["instance"]:
        return source is not None and source == customer["stage"]
    return source is None  # a new instance starts with an entry


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None
