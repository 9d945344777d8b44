"""A real Schema Registry for the tests: Apicurio Registry with its Confluent-compatible API.

Apicurio publishes its runnable Quarkus distribution on Maven Central
(``io.apicurio:apicurio-registry-app:VERSION:tar.gz:all``). It is fetched once with Maven into
the cache the local Apache Kafka uses, outside the repository (``PERCORSO_CACHE_DIR``, else
``$XDG_CACHE_HOME/percorso``, else ``~/.cache/percorso``), unpacked there and reused. Each server
runs on a free loopback port with its in-memory storage (H2), keeps its log in a folder the caller
gives, and answers the Confluent Schema Registry REST API under ``/apis/ccompat/v7``: that URL is
what ``SCHEMA_REGISTRY_URL`` takes.

Version 3.0.9 is the newest whose classes run on Java 17 (3.3.x needs Java 21, which Debian 12
does not package). Its parent POM is not on Maven Central, so only the archive itself is fetched
(``dependency:get -Dtransitive=false``), never its dependency tree.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from percorso.broker import free_port
from percorso.localkafka import (
    LocalKafkaUnavailable,
    cache_root,
    java_major_version,
    resolve_once,
    run_maven,
)

APICURIO_VERSION = "3.0.9"
APICURIO_ARTIFACT = f"io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:tar.gz:all"
CCOMPAT_PATH = "/apis/ccompat/v7"
MIN_JAVA = 17
RESOLVE_TIMEOUT_S = 600.0
START_TIMEOUT_S = 90.0


class RegistryUnavailable(RuntimeError):
    """Java or Maven is missing, or the registry's distribution could not be fetched."""


class RegistryStartError(RuntimeError):
    """The registry was installed but did not start (its log says why)."""


def _java() -> str:
    """The `java` to run, checked to be Java 17+ (the same check as the local Apache Kafka's)."""
    try:
        major = java_major_version()
    except LocalKafkaUnavailable as exc:
        raise RegistryUnavailable(str(exc).replace("Apache Kafka 4", "Apicurio Registry")) from exc
    if major < MIN_JAVA:
        raise RegistryUnavailable(
            f"`java` is version {major}; "
            f"Apicurio Registry {APICURIO_VERSION} needs Java {MIN_JAVA}+"
        )
    return shutil.which("java") or "java"


def apicurio_dist(cache: Path | None = None, timeout: float = RESOLVE_TIMEOUT_S) -> Path:
    """The unpacked distribution (the folder of the runner jar), fetched on first use."""
    home = (cache or cache_root()) / f"apicurio-registry-{APICURIO_VERSION}"
    dist = home / "dist"
    with resolve_once(home, APICURIO_VERSION) as needed:
        if needed:
            # A repository of its own, so the archive's path is known whatever settings.xml
            # says; it is removed once the archive is unpacked.
            repo = home / "m2"
            run_maven(
                [
                    f"-Dmaven.repo.local={repo}",
                    "dependency:get",
                    f"-Dartifact={APICURIO_ARTIFACT}",
                    "-Dtransitive=false",
                ],
                f"fetch {APICURIO_ARTIFACT}",
                timeout,
                RegistryUnavailable,
            )
            archive = (
                repo
                / "io/apicurio/apicurio-registry-app"
                / APICURIO_VERSION
                / f"apicurio-registry-app-{APICURIO_VERSION}-all.tar.gz"
            )
            if not archive.exists():
                raise RegistryUnavailable(
                    f"Maven could not fetch {APICURIO_ARTIFACT}: no {archive}"
                )
            shutil.rmtree(dist, ignore_errors=True)
            with tarfile.open(archive) as tar:
                tar.extractall(dist, filter="data")
            if not _runner_jar(dist).exists():
                raise RegistryUnavailable(f"{archive} holds no {_runner_jar(dist).name}")
            shutil.rmtree(repo, ignore_errors=True)
    return dist


def _runner_jar(dist: Path) -> Path:
    return dist / f"apicurio-registry-app-{APICURIO_VERSION}-runner.jar"


@dataclass
class RegistryServer:
    """A running registry: ``url`` is what SCHEMA_REGISTRY_URL takes."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One call to the REST API; returns the decoded JSON answer (None if empty)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/subjects", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def apicurio_registry(
    log_dir: Path, dist: Path | None = None, start_timeout: float = START_TIMEOUT_S
) -> Iterator[RegistryServer]:
    """Start Apicurio Registry on a free loopback port, wait until ``GET /subjects`` answers,
    and stop it on exit. Its log stays at ``log_dir/apicurio.log``."""
    java = _java()
    dist = dist or apicurio_dist()
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "apicurio.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                java,
                # A short-lived test server: the quick JIT tier and one GC thread start it in
                # about half the time on two cores.
                "-XX:TieredStopAtLevel=1",
                "-XX:+UseSerialGC",
                "-Xmx512m",
                "-Dquarkus.http.host=127.0.0.1",
                f"-Dquarkus.http.port={port}",
                "-Dquarkus.http.access-log.enabled=false",
                "-jar",
                str(_runner_jar(dist)),
            ],
            cwd=log_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = RegistryServer(f"http://127.0.0.1:{port}{CCOMPAT_PATH}", process, log_path)
    try:
        deadline = time.monotonic() + start_timeout
        while not _answers(server.url):
            if process.poll() is not None:
                raise RegistryStartError(
                    f"Apicurio Registry exited with {process.returncode} before answering:\n"
                    f"{server.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RegistryStartError(
                    f"Apicurio Registry did not answer GET /subjects within {start_timeout:.0f} s:"
                    f"\n{server.log_tail()}"
                )
            time.sleep(0.25)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
