"""Every topic Percorso owns, declared once; created idempotently, conflicts reported clearly."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from percorso.config import Settings

Role = Literal["input", "actions", "transitions", "conversions", "dlq", "internal"]

TOUCHPOINT_SUBJECT = "io.percorso.Touchpoint"
ACTION_SUBJECT = "io.percorso.Action"
TRANSITION_SUBJECT = "io.percorso.StageTransition"
CONVERSION_SUBJECT = "io.percorso.Conversion"

WEEK_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its name, what its records are, and how it must be configured.

    ``config`` is applied when Percorso creates the topic; ``required`` is the part of it that an
    existing topic must match (Percorso reports a conflict otherwise). Partition counts must match
    only where ``fixed_partitions`` (the input topic: state is partitioned like it).
    """

    name: str
    role: Role
    key: str
    value_subject: str | None  # None: raw bytes (the dead-letter topic keeps originals unchanged)
    partitions: int
    replication_factor: int
    config: Mapping[str, str] = field(default_factory=dict)
    required: Mapping[str, str] = field(default_factory=dict)
    fixed_partitions: bool = False


def percorso_topics(settings: Settings, channels: Iterable[str] | None = None) -> list[TopicSpec]:
    """The topics of one deployment, derived from its settings."""
    t = settings.topics
    rf = settings.replication_factor
    delete = {"cleanup.policy": "delete"}
    retained = {**delete, "retention.ms": str(WEEK_MS)}
    specs = [
        TopicSpec(
            t.touchpoints,
            "input",
            "customer_id",
            TOUCHPOINT_SUBJECT,
            settings.partitions,
            rf,
            retained,
            {},
            fixed_partitions=True,
        ),
        TopicSpec(
            t.transitions,
            "transitions",
            "customer_id",
            TRANSITION_SUBJECT,
            settings.partitions,
            rf,
            retained,
            delete,
        ),
        TopicSpec(
            t.conversions,
            "conversions",
            "customer_id",
            CONVERSION_SUBJECT,
            settings.partitions,
            rf,
            retained,
            delete,
        ),
        TopicSpec(
            t.dlq,
            "dlq",
            "original key",
            None,
            1,
            rf,
            {**delete, "retention.ms": str(4 * WEEK_MS)},
            delete,
        ),
    ]
    for channel in sorted(set(channels or settings.action_channels)):
        specs.append(
            TopicSpec(
                t.actions(channel),
                "actions",
                "customer_id",
                ACTION_SUBJECT,
                settings.partitions,
                rf,
                retained,
                delete,
            )
        )
    return specs


def internal_topics(
    settings: Settings, partitions: int, replication_factor: int
) -> list[TopicSpec]:
    """The worker's own topics, partitioned exactly like the input (Faust co-partitions them).
    Created before Faust starts: left to Faust, a topic created moments earlier can show fewer
    partitions in metadata than it has, and the worker refuses to run on it."""
    app = settings.app_id
    delete = {"cleanup.policy": "delete"}
    return [
        TopicSpec(
            f"{app}-repartition",
            "internal",
            "customer_id",
            TOUCHPOINT_SUBJECT,
            partitions,
            replication_factor,
            {**delete, "retention.ms": str(WEEK_MS)},
            delete,
            fixed_partitions=True,
        ),
        # faust names a table's changelog <app id>-<table>-changelog; compacted, kept forever
        TopicSpec(
            f"{app}-state-changelog",
            "internal",
            "state key",
            None,
            partitions,
            replication_factor,
            {"cleanup.policy": "compact"},
            {"cleanup.policy": "compact"},
            fixed_partitions=True,
        ),
    ]


def wait_for_partitions(admin: Any, specs: list[TopicSpec], timeout: float = 60.0) -> None:
    """Block until metadata shows every partition of every topic in ``specs``."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        metadata = admin.list_topics(timeout=10)
        short = [
            s.name
            for s in specs
            if s.name not in metadata.topics
            or len(metadata.topics[s.name].partitions) < s.partitions
        ]
        if not short:
            return
        if time.monotonic() > deadline:
            raise TopicConflictError(
                [f"{name}: not all partitions visible after {timeout:.0f} s" for name in short]
            )
        time.sleep(0.2)


class TopicConflictError(Exception):
    """Existing topics whose settings contradict what Percorso needs."""

    def __init__(self, conflicts: list[str]) -> None:
        self.conflicts = conflicts
        super().__init__(
            "existing topics conflict with Percorso's declaration:\n  " + "\n  ".join(conflicts)
        )


@dataclass(frozen=True)
class EnsureReport:
    created: list[str]
    existing: list[str]


def _metadata_showing(admin: Any, names: list[str], timeout: float) -> Any:
    """Metadata once it lists every topic in ``names`` (or at ``timeout``). A broker answers
    CreateTopics before every broker's metadata cache has the topic (Apache Kafka does; the
    embedded broker does not), and a topic that another client has just created can look
    missing the same way."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        metadata = admin.list_topics(timeout=timeout)
        if all(n in metadata.topics for n in names) or time.monotonic() > deadline:
            return metadata
        time.sleep(0.1)


def ensure_topics(admin: Any, specs: list[TopicSpec], timeout: float = 30.0) -> EnsureReport:
    """Create missing topics, check existing ones; raise TopicConflictError listing every conflict.

    ``admin`` is a ``confluent_kafka.admin.AdminClient``.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import ConfigResource, NewTopic

    metadata = admin.list_topics(timeout=timeout)
    missing = [s for s in specs if s.name not in metadata.topics]
    created: list[str] = []
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(
                    s.name,
                    num_partitions=s.partitions,
                    replication_factor=s.replication_factor,
                    config=dict(s.config),
                )
                for s in missing
            ],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        for name, future in futures.items():
            try:
                future.result()
                created.append(name)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # lost a race: fine
                    raise
        metadata = _metadata_showing(admin, [s.name for s in specs], timeout)

    existing = [s for s in specs if s.name not in created]
    conflicts: list[str] = []
    for spec in existing:
        topic = metadata.topics.get(spec.name)
        if topic is None:
            conflicts.append(f"{spec.name}: missing after creation")
            continue
        if spec.fixed_partitions and len(topic.partitions) != spec.partitions:
            conflicts.append(
                f"{spec.name}: has {len(topic.partitions)} partitions, expected "
                f"{spec.partitions} (set PERCORSO_PARTITIONS={len(topic.partitions)} "
                f"or recreate the topic)"
            )
    to_describe = [s for s in existing if s.required and s.name in metadata.topics]
    if to_describe:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, s.name) for s in to_describe]
        described = admin.describe_configs(resources, request_timeout=timeout)
        by_name = {s.name: s for s in to_describe}
        for resource, future in described.items():
            actual = {k: v.value for k, v in future.result().items()}
            for key, want in by_name[resource.name].required.items():
                have = actual.get(key)
                if have is not None and have != want:
                    conflicts.append(f"{resource.name}: {key}={have}, expected {key}={want}")
    if conflicts:
        raise TopicConflictError(conflicts)
    return EnsureReport(created=sorted(created), existing=sorted(s.name for s in existing))
