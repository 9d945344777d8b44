"""A local Apache Kafka (KRaft, combined broker+controller nodes) run from its own jars.

The jars of ``org.apache.kafka:kafka_2.13`` (a pinned version) and their dependencies are
resolved once with Maven into a cache outside the repository (``PERCORSO_CACHE_DIR``, else
``$XDG_CACHE_HOME/percorso``, else ``~/.cache/percorso``) and reused by every later run. Each
node gets its own folder (``server.properties``, ``log4j2.yaml``, ``data/``, ``kafka.log``),
is formatted with one cluster id, started on free loopback ports and waited for. A node can be
SIGKILLed and started again on the same folder and ports, which is what the broker-fault tests
do. Everything is removed when the cluster stops, unless ``PERCORSO_KEEP_BROKER_LOG=1``.

Only what is needed to run a real broker for tests, the demo and the benchmarks: production
clusters are deployed and configured by their operators (``KAFKA_BOOTSTRAP_SERVERS``).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from percorso.ports import free_port as _free_port

KAFKA_VERSION = "4.1.1"
SCALA_BINARY = "2.13"
LOG4J_VERSION = "2.24.3"  # the version Kafka 4.1.1 itself depends on; adds the slf4j binding
MIN_JAVA = 17
RESOLVE_TIMEOUT_S = 600.0

log = logging.getLogger("percorso.broker")


class LocalKafkaUnavailable(RuntimeError):
    """Java or Maven is missing, too old, or the jars could not be resolved."""


def cache_root() -> Path:
    explicit = os.environ.get("PERCORSO_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "percorso"


def java_major_version(java: str = "java") -> int:
    """The major version of ``java`` on the PATH; raises LocalKafkaUnavailable if none."""
    path = shutil.which(java)
    if path is None:
        raise LocalKafkaUnavailable("no `java` on the PATH (Apache Kafka 4 needs Java 17+)")
    try:
        out = subprocess.run(
            [path, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalKafkaUnavailable(f"`java -version` failed: {exc}") from exc
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match is None:
        raise LocalKafkaUnavailable(f"cannot read the Java version from: {out.stderr.strip()}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_..." style
        major = int(match.group(2))
    return major


def check_java() -> None:
    major = java_major_version()
    if major < MIN_JAVA:
        raise LocalKafkaUnavailable(
            f"`java` is version {major}; Apache Kafka {KAFKA_VERSION} needs Java {MIN_JAVA}+"
        )


_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.percorso</groupId>
  <artifactId>local-kafka</artifactId>
  <version>{kafka}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{scala}</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""


@contextlib.contextmanager
def resolve_once(home: Path, stamp: str) -> Iterator[bool]:
    """Hold ``home``'s lock for fetching something into the cache once. Yields whether it still
    has to be fetched; it is marked done only if the block finishes without an error, so a
    failed or interrupted fetch is tried again next time, and concurrent callers fetch once."""
    done = home / "resolved"
    if done.exists():
        yield False
        return
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            yield False
            return
        yield True
        done.write_text(stamp + "\n")


def run_maven(
    args: list[str], what: str, timeout: float, error: type[Exception] = LocalKafkaUnavailable
) -> None:
    """Run Maven in batch mode; raise ``error`` naming ``what`` (e.g. "resolve Apache Kafka
    4.1.1") if Maven is missing, times out or fails, with the tail of its output."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise error(f"no `mvn` on the PATH: Maven is needed to {what} on first use")
    try:
        result = subprocess.run(
            [mvn, "-B", "-q", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise error(f"Maven did not {what} within {timeout:.0f} s") from exc
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise error(f"Maven could not {what} (exit {result.returncode}):\n{tail}")


def kafka_jars(cache: Path | None = None, timeout: float = RESOLVE_TIMEOUT_S) -> Path:
    """The folder of Kafka's jars, resolved with Maven on first use."""
    home = (cache or cache_root()) / f"kafka_{SCALA_BINARY}-{KAFKA_VERSION}"
    lib = home / "lib"
    with resolve_once(home, KAFKA_VERSION) as needed:
        if needed:
            (home / "pom.xml").write_text(
                _POM.format(kafka=KAFKA_VERSION, scala=SCALA_BINARY, log4j=LOG4J_VERSION)
            )
            shutil.rmtree(lib, ignore_errors=True)
            log.info("resolving Apache Kafka %s with Maven into %s", KAFKA_VERSION, lib)
            what = f"resolve org.apache.kafka:kafka_{SCALA_BINARY}:{KAFKA_VERSION}"
            run_maven(
                [
                    "-f",
                    str(home / "pom.xml"),
                    "dependency:copy-dependencies",
                    f"-DoutputDirectory={lib}",
                    "-DincludeScope=runtime",
                ],
                what,
                timeout,
            )
            if not (lib / f"kafka_{SCALA_BINARY}-{KAFKA_VERSION}.jar").exists():
                raise LocalKafkaUnavailable(f"Maven could not {what}: no jar in {lib}")
    return lib


def check_available() -> Path:
    """Raise LocalKafkaUnavailable with the reason, or return the jar folder."""
    check_java()
    return kafka_jars()


def _cluster_id() -> str:
    """A random cluster id as Kafka writes them: URL-safe base64 of 16 bytes. Like Kafka's own
    ``Uuid.randomUuid``, never one that starts with "-", which command lines read as an
    option."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


_LOG4J2 = """Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: {root}
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.server.KafkaRaftServer
        level: INFO
      - name: kafka.server.BrokerServer
        level: INFO
      - name: kafka.log.LogCleaner
        level: INFO
"""


@dataclass
class KafkaNode:
    """One combined broker+controller process, its folder and ports fixed for its lifetime."""

    node_id: int
    folder: Path
    port: int
    controller_port: int
    jars: Path
    heap: str = "768m"
    process: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def log_path(self) -> Path:
        return self.folder / "kafka.log"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            "java",
            f"-Xmx{self.heap}",
            "-Xms128m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.folder / 'log4j2.yaml'}",
            "-cp",
            f"{self.jars}/*",
            main,
            *args,
        ]

    def write_config(self, voters: str, replication: int, extra: dict[str, str]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        min_isr = min(2, replication)
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": voters,
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "default.replication.factor": str(replication),
            "min.insync.replicas": str(min_isr),
            "offsets.topic.replication.factor": str(replication),
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": str(replication),
            "transaction.state.log.min.isr": str(min_isr),
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": str(replication),
            "share.coordinator.state.topic.min.isr": str(min_isr),
            # a single-purpose local broker: groups form at once, the cleaner looks often
            "group.initial.rebalance.delay.ms": "0",
            "log.cleaner.backoff.ms": "1000",
            "log.retention.check.interval.ms": "5000",
            "unclean.leader.election.enable": "false",
            **extra,
        }
        text = "".join(f"{k}={v}\n" for k, v in props.items())
        (self.folder / "server.properties").write_text(text)
        root = os.environ.get("PERCORSO_BROKER_LOG_LEVEL", "WARN").upper()
        (self.folder / "log4j2.yaml").write_text(_LOG4J2.format(root=root))

    def format(self, cluster_id: str) -> None:
        result = subprocess.run(
            self._java(
                "kafka.tools.StorageTool",
                "format",
                f"--cluster-id={cluster_id}",
                "-c",
                str(self.folder / "server.properties"),
            ),
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if result.returncode != 0:
            raise LocalKafkaUnavailable(
                f"formatting node {self.node_id} failed:\n{result.stdout}{result.stderr}"
            )

    def start(self) -> None:
        if self.alive():
            return
        with self.log_path.open("ab") as out:
            out.write(f"\n===== start node {self.node_id} at {time.ctime()} =====\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                self._java("kafka.Kafka", str(self.folder / "server.properties")),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no controlled shutdown, no flush of the page cache's view of the logs
        beyond what the OS already has."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class LocalKafka:
    """A local Apache Kafka of one or more KRaft nodes (each broker and controller)."""

    folder: Path
    nodes: list[KafkaNode] = field(default_factory=list)
    cluster_id: str = field(default_factory=_cluster_id)
    owns_folder: bool = True
    extra_config: dict[str, str] = field(default_factory=dict)

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    @property
    def log_path(self) -> Path:
        return self.nodes[0].log_path

    @classmethod
    def create(
        cls,
        folder: Path | None = None,
        nodes: int = 1,
        extra_config: dict[str, str] | None = None,
    ) -> LocalKafka:
        jars = check_available()
        own = folder is None
        root = Path(tempfile.mkdtemp(prefix="percorso-kafka-")) if folder is None else folder
        root.mkdir(parents=True, exist_ok=True)
        cluster = cls(root, owns_folder=own)
        for node_id in range(1, nodes + 1):
            cluster.nodes.append(
                KafkaNode(
                    node_id,
                    root / f"node-{node_id}",
                    _free_port(),
                    _free_port(),
                    jars,
                    heap="768m" if nodes == 1 else "512m",
                )
            )
        cluster.extra_config = dict(extra_config or {})
        cluster.configure()
        return cluster

    def configure(self) -> None:
        """Write every node's configuration and format its log directory."""
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        replication = min(3, len(self.nodes))
        for node in self.nodes:
            node.write_config(voters, replication, self.extra_config)
            node.format(self.cluster_id)

    def start(self, timeout: float = 90.0, attempts: int = 3) -> None:
        """Start every node and wait until all are registered. A node that could not bind its
        port (taken between the probe and the bind by another process) is retried on new
        ports: the whole cluster is re-formatted, since the controller quorum names them."""
        for attempt in range(1, attempts + 1):
            for node in self.nodes:
                node.start()
            try:
                self.wait_ready(timeout, nodes=len(self.nodes))
                return
            except LocalKafkaUnavailable:
                clash = any("Address already in use" in n.log_tail(400) for n in self.nodes)
                if not clash or attempt == attempts:
                    raise
                log.warning("a Kafka port was taken meanwhile; starting again on new ports")
                for node in self.nodes:
                    node.kill()
                    shutil.rmtree(node.data_dir, ignore_errors=True)
                    node.port, node.controller_port = _free_port(), _free_port()
                self.configure()

    def wait_ready(self, timeout: float = 90.0, nodes: int | None = None) -> None:
        """Until ``nodes`` brokers (default: all that are alive) are registered."""
        want = nodes if nodes is not None else sum(1 for n in self.nodes if n.alive())
        bootstrap = ",".join(n.bootstrap for n in self.nodes if n.alive()) or self.bootstrap_servers
        admin = _admin(bootstrap)
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.process is not None and node.process.poll() is not None and want > 0:
                    dead = [n for n in self.nodes if n.process is not None and not n.alive()]
                    if len(self.nodes) - len(dead) < want:
                        raise LocalKafkaUnavailable(
                            f"Kafka node {node.node_id} exited with code "
                            f"{node.process.returncode}; its log ends with:\n{node.log_tail(40)}"
                        )
            try:
                md = admin.list_topics(timeout=1.0)
                last = f"{len(md.brokers)} brokers"
                if len(md.brokers) >= want:
                    return
            except Exception as exc:
                last = exc
            time.sleep(0.2)
        tails = "\n".join(f"--- node {n.node_id}\n{n.log_tail(20)}" for n in self.nodes)
        raise LocalKafkaUnavailable(
            f"Apache Kafka at {self.bootstrap_servers} not ready within {timeout:.0f} s "
            f"(last: {last}):\n{tails}"
        )

    def node(self, node_id: int) -> KafkaNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    def leader_of(self, topic: str, partition: int, timeout: float = 30.0) -> int:
        """The node id leading ``topic``'s ``partition`` now (waits while it has none)."""
        bootstrap = ",".join(n.bootstrap for n in self.nodes if n.alive())
        admin = _admin(bootstrap)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            md = admin.list_topics(topic, timeout=5.0)
            t = md.topics.get(topic)
            if t is not None and t.error is None and partition in t.partitions:
                leader = t.partitions[partition].leader
                if leader >= 0:
                    return int(leader)
            time.sleep(0.2)
        raise TimeoutError(f"{topic}[{partition}] has no leader after {timeout:.0f} s")

    def wait_leader_moved(self, topic: str, partition: int, old: int, timeout: float = 60.0) -> int:
        """The new leader of ``topic``'s ``partition`` once it is not ``old`` (a killed node is
        reported as leader until the controller fences it)."""
        deadline = time.monotonic() + timeout
        while True:
            leader = self.leader_of(topic, partition, timeout=max(1.0, deadline - time.monotonic()))
            if leader != old:
                return leader
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{topic}[{partition}] still led by node {old} after {timeout:.0f} s"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def remove(self) -> None:
        if self.owns_folder and os.environ.get("PERCORSO_KEEP_BROKER_LOG") != "1":
            shutil.rmtree(self.folder, ignore_errors=True)
        else:  # keep the logs, drop the data
            for node in self.nodes:
                shutil.rmtree(node.data_dir, ignore_errors=True)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(f"--- kafka node {n.node_id} ---\n{n.log_tail(lines)}" for n in self.nodes)

    def dump_log_segments(self, topic: str, partition: int) -> str:
        """Kafka's own DumpLogSegments over one partition's segments, on every node that has
        it: batch headers (producer id, epoch, sequence), for tests that check what the broker
        stored."""
        out = []
        for node in self.nodes:
            folder = node.data_dir / f"{topic}-{partition}"
            segments = sorted(str(p) for p in folder.glob("*.log"))
            if not segments:
                continue
            result = subprocess.run(
                node._java("kafka.tools.DumpLogSegments", "--files", ",".join(segments)),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            out.append(result.stdout)
        return "\n".join(out)


@contextlib.contextmanager
def local_kafka(
    folder: Path | None = None,
    nodes: int = 1,
    extra_config: dict[str, str] | None = None,
    timeout: float = 90.0,
) -> Iterator[LocalKafka]:
    """Start a local Apache Kafka; stop it and remove its data afterwards."""
    cluster = LocalKafka.create(folder, nodes, extra_config)
    try:
        cluster.start(timeout)
        yield cluster
    finally:
        # its data is thrown away: no controlled shutdown to wait for
        for node in cluster.nodes:
            node.kill()
        cluster.remove()


def _admin(bootstrap: str) -> Any:
    from confluent_kafka.admin import AdminClient

    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "log_level": 0,
        "logger": _quiet_logger(),
    }
    return AdminClient(conf)


def _quiet_logger() -> logging.Logger:
    logger = logging.getLogger("percorso.broker.librdkafka")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger
