"""Shared fixtures: a real broker for the session, unique names per test, settings factories."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from percorso.broker import Broker, kafka_broker
from percorso.config import Settings, TopicNames

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def broker(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[Broker]:
    """KAFKA_BOOTSTRAP_SERVERS, else testcontainers Kafka, else a local Apache Kafka, else
    embedded Tansu (PERCORSO_BROKER picks one). Never skipped: a broker that cannot start fails
    the tests that need it."""
    with kafka_broker(log_dir=tmp_path_factory.mktemp("broker")) as b:
        _say(pytestconfig, f"broker for this session: {b.describe()}")
        yield b


def _say(config: pytest.Config, line: str) -> None:
    """A line on the terminal even while output is captured (fixtures run under capture)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    if capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\n[percorso] {line}")
    else:
        reporter.write_line(f"\n[percorso] {line}")


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Names unique to this test (topics, groups, app ids)."""
    suffix = uuid.uuid4().hex[:10]
    return lambda prefix: f"{prefix}-{suffix}"


@pytest.fixture
def settings_factory(
    broker: Broker, unique: Callable[[str], str], tmp_path: Path
) -> Callable[..., Settings]:
    """Settings against the session broker with topic names unique to this test."""

    def make(**overrides: object) -> Settings:
        return settings_for(broker, unique, tmp_path, **overrides)

    return make


def settings_for(
    broker: Broker, unique: Callable[[str], str], tmp_path: Path, **overrides: object
) -> Settings:
    """Settings against ``broker`` with topic names unique to the test."""
    base = Settings(
        bootstrap_servers=broker.bootstrap_servers,
        data_dir=tmp_path / "data",
        app_id=unique("app"),
        topics=TopicNames(
            touchpoints=unique("touchpoints"),
            actions_prefix=unique("actions") + ".",
            transitions=unique("transitions"),
            dlq=unique("dlq"),
            conversions=unique("conversions"),
        ),
        partitions=4,
        replication_factor=1,
        broker_profile=broker.profile.name,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        # the failure's message as it happens, not only in the FAILURES section at the end: a
        # CI log cut to its head and tail still says why a test failed
        crash = getattr(report.longrepr, "reprcrash", None)
        message = crash.message if crash is not None else str(report.longrepr)[-2000:]
        _say(item.config, f"FAILED {report.nodeid} ({report.when}): {message[:4000]}")
    if report.failed and "broker" in getattr(item, "fixturenames", ()):
        b = item.funcargs.get("broker") if hasattr(item, "funcargs") else None
        if isinstance(b, Broker) and b.log_path is not None:
            report.sections.append(("broker log (tail)", b.log_tail(60)))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.broker)
