from __future__ import annotations

import pytest

from percorso.broker import (
    EMBEDDED_BROKER_PROFILE,
    PRODUCTION_PROFILE,
    Broker,
    BrokerStartError,
    kafka_broker,
    wait_for_metadata,
)


def test_environment_broker_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
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


def test_session_broker_answers(broker: Broker) -> None:
    wait_for_metadata(broker.bootstrap_servers, timeout=10)
    assert broker.kind in ("embedded", "container", "external")


def test_unreachable_broker_is_a_clear_error_not_a_hang() -> None:
    with pytest.raises(BrokerStartError, match="no broker answered metadata"):
        wait_for_metadata("127.0.0.1:1", timeout=2)
