"""Prometheus metrics of a worker, in one place.

The registry is injected (tests use a fresh one). Names start with ``percorso_``, use base units
(seconds, bytes), counters end in ``_total``, and labels only take values from bounded sets:
journeys, stages, actions and channels of the catalog, reasons and outcomes of the code,
partition numbers. A touchpoint channel outside the catalog's vocabulary is counted as
``other``; customer ids are never labels.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from journeys.engine import Step

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

disable_created_metrics()  # *_created series double the output and nobody alerts on them

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
PROCESSING_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)


class Tally:
    """What one batch did, counted in plain dicts and applied to the Prometheus metrics once per
    batch (``Metrics.apply``): label look-ups and lock round trips per batch, not per record.
    Histogram observations are kept per action or window (each has its own latency)."""

    __slots__ = (
        "actions",
        "conversions",
        "dead_letters",
        "deferred",
        "event_to_action",
        "records",
        "suppressed",
        "ticks",
        "touchpoints",
        "transitions",
        "version_removed",
        "window_lateness",
        "windows",
    )

    def __init__(self) -> None:
        self.touchpoints: dict[tuple[str, str], int] = {}
        self.dead_letters: dict[str, int] = {}
        self.transitions: dict[tuple[str, str, str], int] = {}
        self.version_removed: dict[tuple[str, str], int] = {}  # (journey, version)
        self.conversions: dict[tuple[str, str], int] = {}  # (journey, variant)
        self.actions: dict[tuple[str, str, str], int] = {}
        self.suppressed: dict[tuple[str, str, str], int] = {}
        self.deferred = 0
        self.windows = [0, 0, 0]  # armed, cancelled, fired
        self.event_to_action: list[float] = []
        self.window_lateness: list[float] = []
        self.ticks = 0
        self.records = 0

    def touchpoint(self, channel: str, outcome: str) -> None:
        key = (channel, outcome)
        self.touchpoints[key] = self.touchpoints.get(key, 0) + 1

    def dead_letter(self, error_class: str) -> None:
        self.dead_letters[error_class] = self.dead_letters.get(error_class, 0) + 1

    def step(self, step: Step, now_ms: int, touchpoint: dict[str, Any] | None) -> None:
        """Everything one engine step tells: transitions, actions, policies, windows."""
        if step.transitions:
            for t in step.transitions:
                k3 = (t["journey_id"], t["from_stage"] or "none", t["to_stage"])
                self.transitions[k3] = self.transitions.get(k3, 0) + 1
                if t["reason"] == "version_removed":
                    k2 = (t["journey_id"], str(t.get("version") or "none"))
                    self.version_removed[k2] = self.version_removed.get(k2, 0) + 1
        if step.conversions:
            for c in step.conversions:
                k2 = (c["journey_id"], c["variant"] or "none")
                self.conversions[k2] = self.conversions.get(k2, 0) + 1
        if step.actions:
            for a in step.actions:
                k3 = (a["journey_id"], a["action"], a["channel"])
                self.actions[k3] = self.actions.get(k3, 0) + 1
                if touchpoint is not None and a["trigger_kind"] == "event":
                    self.event_to_action.append(max(0, now_ms - touchpoint["occurred_at"]) / 1000)
        if step.suppressed:
            for s in step.suppressed:
                k3 = (s.journey_id, s.action, s.reason)
                self.suppressed[k3] = self.suppressed.get(k3, 0) + 1
        self.deferred += step.deferred
        w = self.windows
        w[0] += step.windows_armed
        w[1] += step.windows_cancelled
        w[2] += step.windows_fired
        for deadline in step.fired_at:
            self.window_lateness.append(max(0, now_ms - deadline) / 1000)


class Metrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, channels: Iterable[str] = ()
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.channels = frozenset(channels)
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu, open fds
        self.touchpoints = Counter(
            "percorso_touchpoints_total",
            "Touchpoints consumed, by channel and outcome "
            "(processed, duplicate, replayed, late, rejected, repartitioned).",
            ["channel", "outcome"],
            registry=r,
        )
        self.dead_letters = Counter(
            "percorso_dead_letters_total",
            "Records sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.transitions = Counter(
            "percorso_stage_transitions_total",
            "Stage transitions, by journey and stages (from_stage none: entry).",
            ["journey", "from_stage", "to_stage"],
            registry=r,
        )
        self.version_removed = Counter(
            "percorso_version_removed_total",
            "Customers who left a journey because the catalog no longer has the version they "
            "were on (version none: an unversioned journey), by journey and version.",
            ["journey", "version"],
            registry=r,
        )
        self._removed_logged: set[tuple[str, str]] = set()
        self.conversions = Counter(
            "percorso_conversions_total",
            "Journey instances that converted, by journey and experiment variant (holdout "
            "included; none: the journey runs no experiment).",
            ["journey", "variant"],
            registry=r,
        )
        self.actions = Counter(
            "percorso_actions_total",
            "Actions emitted.",
            ["journey", "action", "channel"],
            registry=r,
        )
        self.suppressed = Counter(
            "percorso_actions_suppressed_total",
            "Actions a policy stopped (cap, consent, "
            "suppression, arbitration, holdout, experiment, expired).",
            ["journey", "action", "reason"],
            registry=r,
        )
        self.deferred = Counter(
            "percorso_actions_deferred_total",
            "Actions deferred to the end of quiet hours.",
            registry=r,
        )
        self.windows = Counter(
            "percorso_windows_total",
            "Window events: armed, fired, cancelled.",
            ["event"],
            registry=r,
        )
        self.windows_pending = Gauge(
            "percorso_windows_pending",
            "Entries in the deadline index of the partitions this worker owns (pending "
            "wake-ups: windows, deferrals, inactivity). Entries are hints: one written when a "
            "customer's next due time moved earlier leaves the later one in place, so a "
            "customer can count more than once.",
            registry=r,
        )
        self.windows_overdue = Gauge(
            "percorso_windows_overdue_seconds",
            "How long the oldest due wake-up of this "
            "worker's partitions has been waiting (0 when none is overdue).",
            registry=r,
        )
        self.event_to_action = Histogram(
            "percorso_event_to_action_seconds",
            "From a touchpoint's event time to the action it caused.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.window_lateness = Histogram(
            "percorso_window_lateness_seconds",
            "From a window's deadline to when it fired.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.processing = Histogram(
            "percorso_event_processing_seconds",
            "Time to process one record: the mean over a fetched batch, one observation per batch.",
            buckets=PROCESSING_BUCKETS,
            registry=r,
        )
        self.checkpoint = Histogram(
            "percorso_checkpoint_seconds",
            "Time a checkpoint takes (outputs and changelog delivered, offsets committed, "
            "RocksDB written); it runs beside the partition loop.",
            buckets=(*PROCESSING_BUCKETS, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.last_event = Gauge(
            "percorso_last_event_timestamp_seconds",
            "Event time of the latest processed touchpoint.",
            registry=r,
        )
        self.last_processed = Gauge(
            "percorso_last_processed_timestamp_seconds",
            "Wall-clock time the latest record was processed.",
            registry=r,
        )
        self.lag = Gauge(
            "percorso_consumer_lag_messages",
            "Records of the input not yet processed, by partition.",
            ["partition"],
            registry=r,
        )
        self.lag_seconds = Gauge(
            "percorso_consumer_lag_seconds",
            "How far behind the wall clock the processed "
            "event time is while a partition has a backlog (0 when caught up).",
            ["partition"],
            registry=r,
        )
        self.recovery_remaining = Gauge(
            "percorso_table_recovery_remaining_messages",
            "Changelog records still to restore before this worker's partitions are ready.",
            registry=r,
        )
        self.rebalances = Counter(
            "percorso_rebalances_total",
            "Partition assignments this worker went through.",
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "percorso_assigned_partitions", "Input partitions this worker owns.", registry=r
        )
        self.ready = Gauge(
            "percorso_ready",
            "1 when partitions are assigned and recovery has finished.",
            registry=r,
        )
        self.customers_in_stage = Gauge(
            "percorso_customers_in_stage",
            "Customers currently in each stage, in this "
            "worker's partitions (recounted periodically).",
            ["journey", "stage"],
            registry=r,
        )
        self.state_bytes = Gauge(
            "percorso_state_bytes", "Size of this worker's RocksDB state on disk.", registry=r
        )
        self.rocksdb_memory = Gauge(
            "percorso_rocksdb_memory_bytes",
            "Bytes held by the RocksDB block cache all of this worker's partitions share, "
            "memtables included (bounded by PERCORSO_ROCKSDB_MEMORY_MB).",
            registry=r,
        )
        self.ticks = Counter(
            "percorso_ticks_total", "Rounds of due wake-ups fired, per partition.", registry=r
        )
        self.offset_gaps = Counter(
            "percorso_input_offset_gaps_total",
            "Times a partition's next record came after a jump in offsets. Transactional "
            "producers leave such gaps (their commit markers take offsets); otherwise records "
            "were skipped and this is a bug.",
            ["topic"],
            registry=r,
        )

    def channel(self, name: str) -> str:
        return name if name in self.channels else "other"

    def touchpoint(self, channel: str, outcome: str) -> None:
        self.touchpoints.labels(self.channel(channel), outcome).inc()

    def observe_step(self, step: Step, now_ms: int, touchpoint: dict[str, Any] | None) -> None:
        """One engine step's figures (the partition loop tallies whole batches instead)."""
        tally = Tally()
        tally.step(step, now_ms, touchpoint)
        self.apply(tally)

    def apply(self, tally: Tally, seconds: float | None = None) -> None:
        """Add one batch's figures; ``seconds``: how long the batch took (its records share
        it evenly in ``percorso_event_processing_seconds``)."""
        channel = self.channel
        for (ch, outcome), n in tally.touchpoints.items():
            self.touchpoints.labels(channel(ch), outcome).inc(n)
        for reason, n in tally.dead_letters.items():
            self.dead_letters.labels(reason).inc(n)
        for labels, n in tally.transitions.items():
            self.transitions.labels(*labels).inc(n)
        for labels2, n in tally.conversions.items():
            self.conversions.labels(*labels2).inc(n)
        for (journey, version), n in tally.version_removed.items():
            self.version_removed.labels(journey, version).inc(n)
            if (journey, version) not in self._removed_logged:  # once per journey version
                self._removed_logged.add((journey, version))
                log.warning(
                    "journey %s version %s is not in the catalog: its customers leave the "
                    "journey (reason version_removed) at their next touchpoint or tick",
                    journey,
                    version,
                )
        for labels, n in tally.actions.items():
            self.actions.labels(*labels).inc(n)
        for labels, n in tally.suppressed.items():
            self.suppressed.labels(*labels).inc(n)
        if tally.deferred:
            self.deferred.inc(tally.deferred)
        for event, n in zip(("armed", "cancelled", "fired"), tally.windows, strict=True):
            if n:
                self.windows.labels(event).inc(n)
        for value in tally.event_to_action:
            self.event_to_action.observe(value)
        for value in tally.window_lateness:
            self.window_lateness.observe(value)
        if tally.ticks:
            self.ticks.inc(tally.ticks)
        if seconds is not None and tally.records:
            self.processing.observe(seconds / tally.records)

    def census(self, counts: dict[tuple[str, str], int]) -> None:
        self.customers_in_stage.clear()
        for (journey, stage), n in counts.items():
            self.customers_in_stage.labels(journey, stage).set(n)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
