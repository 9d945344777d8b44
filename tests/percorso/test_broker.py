from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from percorso import localkafka
from percorso.broker import (
    EMBEDDED_BROKER_PROFILE,
    PRODUCTION_PROFILE,
    TEST_KAFKA_PROFILE,
    Broker,
    BrokerStartError,
    broker_choice,
    kafka_broker,
    wait_for_metadata,
)


def test_environment_broker_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.delenv("PERCORSO_BROKER", raising=False)
    monkeypatch.delenv("PERCORSO_BROKER_PROFILE", raising=False)
    with kafka_broker() as b:
        assert (b.bootstrap_servers, b.kind, b.profile) == (
            "kafka-1:9092,kafka-2:9092",
            "external",
            PRODUCTION_PROFILE,
        )


def test_production_profile_keeps_production_defaults() -> None:
    assert PRODUCTION_PROFILE.session_timeout_s >= 30
    assert PRODUCTION_PROFILE.recovery_consistency_check
    assert EMBEDDED_BROKER_PROFILE.session_timeout_s <= 6


def test_real_kafka_profile_is_production_but_for_timeouts() -> None:
    """On Apache Kafka nothing of the embedded broker's profile applies."""
    for field in (
        "recovery_consistency_check",
        "supports_idempotent_aiokafka",
        "applies_compaction",
        "fetch_max_wait_ms",
        "fetch_min_bytes",
        "end_offsets_from_fetch",
    ):
        assert getattr(TEST_KAFKA_PROFILE, field) == getattr(PRODUCTION_PROFILE, field), field
    assert TEST_KAFKA_PROFILE.session_timeout_s < PRODUCTION_PROFILE.session_timeout_s


def test_broker_choice_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERCORSO_BROKER", "redis")
    with pytest.raises(ValueError, match="PERCORSO_BROKER='redis'"):
        broker_choice()
    monkeypatch.setenv("PERCORSO_BROKER", "Embedded")
    assert broker_choice() == "embedded"


def test_forced_choice_that_cannot_run_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("PERCORSO_BROKER", "external")
    with pytest.raises(BrokerStartError, match="KAFKA_BOOTSTRAP_SERVERS is unset"), kafka_broker():
        pass


def test_missing_java_is_a_clear_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(localkafka.LocalKafkaUnavailable, match="no `java` on the PATH"):
        localkafka.check_java()


def test_missing_maven_is_a_clear_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(localkafka.LocalKafkaUnavailable, match="no `mvn` on the PATH"):
        localkafka.kafka_jars(cache=tmp_path)


def test_failed_download_is_a_clear_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A Maven that cannot resolve (here: offline with an empty local repository) names the
    artifact and is reported, not hung on."""
    real = localkafka.shutil.which("mvn")
    if real is None:
        pytest.skip("no Maven on this machine")
    wrapper = tmp_path / "bin" / "mvn"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {real} -o -Dmaven.repo.local={tmp_path / "m2"} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}:/usr/bin:/bin")
    with pytest.raises(localkafka.LocalKafkaUnavailable, match="could not resolve"):
        localkafka.kafka_jars(cache=tmp_path / "cache", timeout=120)


def test_java_version_is_read() -> None:
    if localkafka.shutil.which("java") is None:
        pytest.skip("no Java on this machine")
    out = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    assert str(localkafka.java_major_version()) in out.stderr


def test_session_broker_answers(broker: Broker) -> None:
    wait_for_metadata(broker.bootstrap_servers, timeout=10)
    assert broker.kind in ("embedded", "container", "kafka", "external")


def test_unreachable_broker_is_a_clear_error_not_a_hang() -> None:
    with pytest.raises(BrokerStartError, match="no broker answered metadata"):
        wait_for_metadata("127.0.0.1:1", timeout=2)


def test_cluster_ids_never_look_like_options() -> None:
    """A cluster id starting with "-" made `kafka-storage format` fail (1 start in ~60)."""
    ids = {localkafka._cluster_id() for _ in range(3000)}
    assert len(ids) == 3000
    assert not any(i.startswith("-") for i in ids)
    assert all(len(i) == 22 for i in ids)


def test_free_ports_stay_out_of_the_ephemeral_range() -> None:
    """Outgoing connections take their local ports from the ephemeral range: a server port
    probed there can be gone by the time the server binds it."""
    from percorso.ports import ephemeral_range, free_port

    low, high = ephemeral_range()
    ports = {free_port() for _ in range(50)}
    assert all(not low <= p <= high for p in ports)
    assert len(ports) > 40


@pytest.mark.broker
@pytest.mark.real_kafka
def test_a_port_taken_before_the_node_binds_it_is_retried(tmp_path: Path) -> None:
    import socket

    try:
        localkafka.check_available()
    except localkafka.LocalKafkaUnavailable as exc:
        if os.environ.get("CI") == "true":
            raise  # CI machines have Java and Maven: never skipped there
        pytest.skip(f"needs a local Apache Kafka: {exc}")
    cluster = localkafka.LocalKafka.create(tmp_path / "k")
    taken = cluster.nodes[0].port
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    squatter.bind(("127.0.0.1", taken))
    squatter.listen()
    try:
        cluster.start(timeout=60)
        assert cluster.nodes[0].port != taken
        wait_for_metadata(cluster.bootstrap_servers, timeout=10)
    finally:
        squatter.close()
        for node in cluster.nodes:
            node.kill()
        cluster.remove()
