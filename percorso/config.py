"""Settings: one frozen, typed object read from the environment (every field has a CLI option)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from percorso.limits import DEFAULT as DEFAULT_LIMITS
from percorso.limits import Limits

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]

DEFAULT_ACTION_CHANNELS = ("email", "sms", "push", "agent", "web", "app")


def shipped_catalog() -> Path:
    return Path(__file__).resolve().parent.parent / "journeys" / "catalog"


@dataclass(frozen=True)
class TopicNames:
    touchpoints: str = "touchpoints"
    actions_prefix: str = "percorso.actions."
    transitions: str = "percorso.transitions"
    dlq: str = "percorso.touchpoints.dlq"
    conversions: str = "percorso.conversions"

    def actions(self, channel: str) -> str:
        return f"{self.actions_prefix}{channel}"


@dataclass(frozen=True)
class KafkaSecurity:
    protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None

    def librdkafka(self) -> dict[str, Any]:
        """Settings for confluent-kafka clients."""
        conf: dict[str, Any] = {"security.protocol": self.protocol}
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username is not None:
            conf["sasl.username"] = self.sasl_username
            conf["sasl.password"] = self.sasl_password or ""
        if self.ssl_cafile:
            conf["ssl.ca.location"] = self.ssl_cafile
        return conf


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str | None = None
    schema_registry_url: str | None = None
    journeys_dir: Path = field(default_factory=shipped_catalog)
    data_dir: Path = Path("data")
    web_port: int = 6066
    app_id: str = "percorso"
    topics: TopicNames = TopicNames()
    partitions: int = 8
    replication_factor: int = -1  # -1: the cluster's default.replication.factor
    action_channels: tuple[str, ...] = DEFAULT_ACTION_CHANNELS
    security: KafkaSecurity = KafkaSecurity()
    broker_profile: str = "production"
    group_instance_id: str | None = None  # static membership (e.g. the pod name)
    tick_interval_s: float = 1.0
    window_grace_ms: int = 0
    time_scale: float = 1.0  # >1 compresses every journey duration (the demo only)
    # the worker's garbage-collector thresholds (gc.set_threshold); None: Python's (700, 10, 10)
    gc_threshold: tuple[int, int, int] | None = (20_000, 20, 10)
    # RocksDB's memory in the worker, all partitions together: one block cache, with the
    # memtables (at most half of it) charged to it (agents/patches.py bound_rocksdb_memory)
    rocksdb_memory_mb: int = 256
    limits: Limits = DEFAULT_LIMITS  # input, state and dead-letter bounds (percorso/limits.py)

    @classmethod
    def from_env(cls, env: os._Environ[str] | dict[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        base = cls()
        security = KafkaSecurity(
            protocol=e.get("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper(),  # type: ignore[arg-type]
            sasl_mechanism=e.get("KAFKA_SASL_MECHANISM") or None,
            sasl_username=e.get("KAFKA_SASL_USERNAME") or None,
            sasl_password=e.get("KAFKA_SASL_PASSWORD") or None,
            ssl_cafile=e.get("KAFKA_SSL_CAFILE") or None,
        )
        if security.protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={security.protocol!r}: expected one of "
                f"PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"
            )
        channels = e.get("PERCORSO_ACTION_CHANNELS")
        return replace(
            base,
            bootstrap_servers=e.get("KAFKA_BOOTSTRAP_SERVERS") or None,
            schema_registry_url=e.get("SCHEMA_REGISTRY_URL") or None,
            journeys_dir=Path(e["PERCORSO_JOURNEYS"])
            if e.get("PERCORSO_JOURNEYS")
            else base.journeys_dir,
            data_dir=Path(e.get("PERCORSO_DATA_DIR", str(base.data_dir))),
            web_port=int(e.get("PERCORSO_WEB_PORT", base.web_port)),
            app_id=e.get("PERCORSO_APP_ID", base.app_id),
            topics=TopicNames(
                touchpoints=e.get("PERCORSO_TOPIC_TOUCHPOINTS", base.topics.touchpoints),
                actions_prefix=e.get("PERCORSO_TOPIC_ACTIONS_PREFIX", base.topics.actions_prefix),
                transitions=e.get("PERCORSO_TOPIC_TRANSITIONS", base.topics.transitions),
                dlq=e.get("PERCORSO_TOPIC_DLQ", base.topics.dlq),
                conversions=e.get("PERCORSO_TOPIC_CONVERSIONS", base.topics.conversions),
            ),
            partitions=int(e.get("PERCORSO_PARTITIONS", base.partitions)),
            replication_factor=int(e.get("PERCORSO_REPLICATION_FACTOR", base.replication_factor)),
            action_channels=tuple(c.strip() for c in channels.split(",") if c.strip())
            if channels
            else base.action_channels,
            security=security,
            broker_profile=e.get("PERCORSO_BROKER_PROFILE", base.broker_profile),
            group_instance_id=e.get("PERCORSO_GROUP_INSTANCE_ID") or None,
            tick_interval_s=float(e.get("PERCORSO_TICK_INTERVAL", base.tick_interval_s)),
            window_grace_ms=int(e.get("PERCORSO_WINDOW_GRACE_MS", base.window_grace_ms)),
            time_scale=float(e.get("PERCORSO_TIME_SCALE", base.time_scale)),
            gc_threshold=_gc_threshold(e.get("PERCORSO_GC_THRESHOLD"), base.gc_threshold),
            rocksdb_memory_mb=_positive(
                "PERCORSO_ROCKSDB_MEMORY_MB",
                e.get("PERCORSO_ROCKSDB_MEMORY_MB"),
                base.rocksdb_memory_mb,
            ),
            limits=Limits.from_env(e),
        )

    def kafka_config(self) -> dict[str, Any]:
        """Base configuration for confluent-kafka clients."""
        if not self.bootstrap_servers:
            raise ValueError("no Kafka bootstrap servers: set KAFKA_BOOTSTRAP_SERVERS")
        return {"bootstrap.servers": self.bootstrap_servers, **self.security.librdkafka()}


def _positive(name: str, value: str | None, default: int) -> int:
    if value is None or not value.strip():
        return default
    if not value.strip().isdigit() or int(value) <= 0:
        raise ValueError(f"{name}={value!r}: expected a positive integer")
    return int(value)


def _gc_threshold(
    value: str | None, default: tuple[int, int, int] | None
) -> tuple[int, int, int] | None:
    """``PERCORSO_GC_THRESHOLD``: three integers (``20000,20,10``), or ``python`` for Python's
    own thresholds."""
    if value is None or not value.strip():
        return default
    if value.strip().lower() == "python":
        return None
    parts = [p.strip() for p in value.split(",")]
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(
            f"PERCORSO_GC_THRESHOLD={value!r}: expected three positive integers "
            f"(generation 0, 1, 2 thresholds, e.g. 20000,20,10) or 'python'"
        )
    return int(parts[0]), int(parts[1]), int(parts[2])
