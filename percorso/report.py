"""``percorso report``: per journey, version and variant, what the journey did and whether it
worked, from stage transitions and conversions (``percorso simulate`` output or the topics).

- entries: transitions into the journey (``from_stage`` null). A migration is not an entry: it
  counts as an exit (reason ``migrated``) of the version the customer left and as
  ``migrated_in`` of the version it moved to, whose conversion rate is over entries plus
  migrated-in instances (a migrated instance converts on the version it is on).
- completions: exits with reason ``goal``; exits by reason: every move to an exit stage
  (completed, exited, inactive) by its reason (goal, exit, inactivity, stopped,
  version_removed).
- conversion rate: conversions / (entries + migrated in) of the row; mean time to convert: mean of
  ``at - entered_at`` over its conversions.
- uplift: a variant's conversion rate minus the holdout's, in the same journey and version,
  with a 95% confidence interval from the normal approximation of the difference of two
  proportions (``1.96 * sqrt(p1 (1 - p1) / n1 + p0 (1 - p0) / n0)``). Rows without entries on
  either side have no uplift.

Variants come from the records: transitions carry ``variant`` on journeys measured by
conversions (``journeys.lifecycle``); elsewhere the variant column is empty.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

log = logging.getLogger(__name__)

EXIT_STAGES = frozenset({"completed", "exited", "inactive"})
HOLDOUT = "holdout"
Z_95 = 1.959963984540054

RowKey = tuple[str, int | None, str | None]  # journey, version, variant


@dataclass
class Row:
    journey_id: str
    version: int | None
    variant: str | None
    entries: int = 0
    migrated_in: int = 0
    exits: dict[str, int] = field(default_factory=dict)
    conversions: int = 0
    time_to_convert_ms: int = 0
    uplift: float | None = None
    uplift_ci: tuple[float, float] | None = None

    @property
    def completions(self) -> int:
        return self.exits.get("goal", 0)

    @property
    def conversion_rate(self) -> float | None:
        return self.conversions / self.population if self.population else None

    @property
    def population(self) -> int:
        return self.entries + self.migrated_in

    @property
    def mean_time_to_convert_ms(self) -> float | None:
        return self.time_to_convert_ms / self.conversions if self.conversions else None

    def as_json(self) -> dict[str, Any]:
        return {
            "journey_id": self.journey_id,
            "version": self.version,
            "variant": self.variant,
            "entries": self.entries,
            "migrated_in": self.migrated_in,
            "completions": self.completions,
            "exits": dict(sorted(self.exits.items())),
            "conversions": self.conversions,
            "conversion_rate": self.conversion_rate,
            "mean_time_to_convert_ms": self.mean_time_to_convert_ms,
            "uplift": self.uplift,
            "uplift_ci95": list(self.uplift_ci) if self.uplift_ci is not None else None,
        }


def _key(record: Mapping[str, Any]) -> RowKey:
    return (record["journey_id"], record.get("version"), record.get("variant"))


def build_report(records: Iterable[Mapping[str, Any]]) -> list[Row]:
    """Rows sorted by journey, version and variant, from records of kind ``transition`` and
    ``conversion`` (others are ignored)."""
    rows: dict[RowKey, Row] = {}

    def row(key: RowKey) -> Row:
        found = rows.get(key)
        if found is None:
            found = rows[key] = Row(*key)
        return found

    for r in records:
        kind = r.get("kind")
        if kind == "transition":
            if r["from_stage"] is None:
                row(_key(r)).entries += 1
            elif r["reason"] == "migrated":
                row(_key(r)).migrated_in += 1
                left = row((r["journey_id"], r.get("from_version"), r.get("variant"))).exits
                left["migrated"] = left.get("migrated", 0) + 1
            elif r["to_stage"] in EXIT_STAGES:
                exits = row(_key(r)).exits
                exits[r["reason"]] = exits.get(r["reason"], 0) + 1
        elif kind == "conversion":
            target = row(_key(r))
            target.conversions += 1
            target.time_to_convert_ms += r["at"] - r["entered_at"]
    for key, target in rows.items():
        journey_id, version, variant = key
        if variant is None or variant == HOLDOUT:
            continue
        holdout = rows.get((journey_id, version, HOLDOUT))
        if holdout is None or not holdout.population or not target.population:
            continue
        p1, n1 = target.conversions / target.population, target.population
        p0, n0 = holdout.conversions / holdout.population, holdout.population
        diff = p1 - p0
        half = Z_95 * math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
        target.uplift, target.uplift_ci = diff, (diff - half, diff + half)
    return [
        rows[k] for k in sorted(rows, key=lambda k: (k[0], k[1] or 0, k[2] is not None, k[2] or ""))
    ]


def read_records(stream: TextIO) -> Iterable[dict[str, Any]]:
    """JSON lines as ``percorso simulate`` prints them; blank lines are skipped."""
    for line in stream:
        if line.strip():
            yield json.loads(line)


def records_from_topics(settings: Any, codecs: Any, idle_timeout: float) -> list[dict[str, Any]]:
    """Every transition and conversion on the deployment's topics, from the beginning, until
    ``idle_timeout`` seconds pass without a record (settings: ``percorso.config.Settings``).
    A record that does not decode is left out, with a warning."""
    from percorso.tail import tail

    topics = settings.topics
    records: list[dict[str, Any]] = []
    for topic, kind in ((topics.transitions, "transition"), (topics.conversions, "conversion")):
        skipped = 0
        for record in tail(settings, topic, codecs, idle_timeout=idle_timeout):
            if "undecodable" in record:
                skipped += 1
                continue
            records.append({"kind": kind, **record})
        if skipped:
            log.warning("%s: %d record(s) that do not decode were left out", topic, skipped)
    return records


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _duration(ms: float | None) -> str:
    if ms is None:
        return "-"
    minutes = ms / 60_000
    if minutes < 120:
        return f"{minutes:.0f}m"
    hours = minutes / 60
    return f"{hours:.1f}h" if hours < 48 else f"{hours / 24:.1f}d"


def table(rows: list[Row]) -> str:
    header = (
        "journey",
        "version",
        "variant",
        "entries",
        "migrated in",
        "completed",
        "exits",
        "conversions",
        "rate",
        "time to convert",
        "uplift vs holdout (95% CI)",
    )
    lines = [header]
    for r in rows:
        uplift = "-"
        if r.uplift is not None and r.uplift_ci is not None:
            low, high = r.uplift_ci
            uplift = f"{100 * r.uplift:+.1f} pts [{100 * low:+.1f}, {100 * high:+.1f}]"
        lines.append(
            (
                r.journey_id,
                "-" if r.version is None else str(r.version),
                r.variant or "-",
                str(r.entries),
                str(r.migrated_in),
                str(r.completions),
                " ".join(f"{k}={n}" for k, n in sorted(r.exits.items())) or "-",
                str(r.conversions),
                _pct(r.conversion_rate),
                _duration(r.mean_time_to_convert_ms),
                uplift,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def render(rows: list[Row], as_json: bool) -> str:
    if as_json:
        return json.dumps({"rows": [r.as_json() for r in rows]}, sort_keys=True, indent=2)
    return table(rows)
