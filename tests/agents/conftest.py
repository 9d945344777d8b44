"""Real workers (subprocesses, so they can be SIGKILLed) against the session broker."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from agents.launcher import WorkerProcess, worker_env
from percorso import clients
from percorso.broker import Broker, free_port
from percorso.config import Settings
from percorso.produce import TouchpointSender
from percorso.tail import subject_for
from percorso.topics import ensure_topics, percorso_topics

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Cluster:
    """Workers of one app id, sharing topics; stopped when the test ends."""

    broker: Broker
    settings: Settings
    tmp: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def worker(self, name: str = "w1", **extra_env: str) -> WorkerProcess:
        settings = replace(
            self.settings,
            data_dir=self.tmp / name / "data",
            web_port=free_port(),
            tick_interval_s=0.3,
        )
        env = worker_env(settings, self.broker.profile.name, **extra_env)
        w = WorkerProcess(env, self.tmp / f"{name}.log", cwd=REPO)
        self.workers.append(w)
        return w

    def stop_all(self) -> None:
        for w in self.workers:
            w.stop()


@pytest.fixture
def cluster(
    broker: Broker,
    settings_factory: Callable[..., Settings],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Cluster]:
    settings = settings_factory(journeys_dir=REPO / "journeys" / "catalog")
    with workers_on(broker, settings, tmp_path, request) as c:
        yield c


@contextlib.contextmanager
def workers_on(
    broker: Broker, settings: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Cluster]:
    """A Cluster of workers on ``broker``; their logs are printed if the test failed."""
    ensure_topics(clients.admin(settings), percorso_topics(settings))
    c = Cluster(broker, settings, tmp_path)
    try:
        yield c
    finally:
        c.stop_all()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            for w in c.workers:
                print(f"----- {w.log_path.name} -----\n{w.log_tail(80)}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def tp(
    event_id: str, customer: str, type_: str, at: int, channel: str = "web", **attributes: str
) -> dict[str, Any]:
    """A touchpoint as a channel system sends it (``source`` left to its default)."""
    return {
        "event_id": event_id,
        "customer_id": customer,
        "channel": channel,
        "type": type_,
        "occurred_at": at,
        "attributes": attributes,
    }


def produce(settings: Settings, events: Iterable[dict[str, Any]]) -> int:
    sender = TouchpointSender(
        clients.producer(settings),
        clients.Codecs.from_settings(settings),
        settings.topics.touchpoints,
    )
    for e in events:
        sender.send(e)
    sender.flush()
    assert sender.summary.failed == 0, sender.first_error
    return sender.summary.delivered


def produce_raw(settings: Settings, records: Iterable[tuple[bytes | None, bytes]]) -> None:
    producer = clients.producer(settings)
    for key, value in records:
        producer.produce(settings.topics.touchpoints, key=key, value=value)
    assert producer.flush(30) == 0


class Collector:
    """Reads output topics from the beginning, by assignment, decoding Percorso records."""

    def __init__(self, settings: Settings, topics: list[str]) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self.settings = settings
        self.codecs = clients.Codecs.from_settings(settings)
        self.consumer = Consumer(
            {
                **settings.kafka_config(),
                "group.id": "test-collector",
                "enable.auto.commit": False,
                "logger": _librdkafka_log,
            }
        )
        metadata = self.consumer.list_topics(timeout=10)
        assignment = []
        for topic in topics:
            if topic in metadata.topics:
                assignment += [
                    TopicPartition(topic, p, OFFSET_BEGINNING)
                    for p in metadata.topics[topic].partitions
                ]
        self.consumer.assign(assignment)
        self.records: dict[str, list[dict[str, Any]]] = {t: [] for t in topics}

    def poll(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for msg in self.consumer.consume(500, timeout=0.1):
                if msg.error():
                    continue
                subject = subject_for(self.settings, msg.topic())
                headers = {k: v for k, v in (msg.headers() or [])}
                if subject is None:
                    value: dict[str, Any] = {
                        "key": msg.key(),
                        "value": msg.value(),
                        "headers": headers,
                    }
                else:
                    value = self.codecs.for_subject(subject).decode(msg.value())
                    value["_headers"] = headers
                self.records[msg.topic()].append(value)

    def until(
        self,
        condition: Callable[[], bool],
        timeout: float,
        what: str,
        explain: Callable[[], str] | None = None,
        every: float = 0.3,
    ) -> None:
        """Poll until ``condition`` holds, looking at it every ``every`` seconds (a small
        value: after every batch of at most 500 records)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                detail = f": {explain()}" if explain is not None else ""
                raise AssertionError(f"timed out after {timeout} s waiting for {what}{detail}")
            self.poll(every)

    def close(self) -> None:
        self.consumer.close()


_librdkafka_log = logging.getLogger("tests.librdkafka")


Collect = Callable[[Settings, list[str]], "Collector"]


@pytest.fixture
def collect() -> Iterator[Collect]:
    """Collectors closed when the test ends, whatever happened."""
    made: list[Collector] = []

    def make(settings: Settings, topics: list[str]) -> Collector:
        made.append(Collector(settings, topics))
        return made[-1]

    yield make
    for c in made:
        c.close()


def action_topics(settings: Settings) -> list[str]:
    return [settings.topics.actions(c) for c in settings.action_channels]


def jsonl(path: Path, events: Iterable[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path
