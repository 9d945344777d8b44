"""``make bench``: Percorso's speed against baselines measured in the same run.

Scenarios, on the broker ``percorso/broker.py`` picks (a local Apache Kafka where Java and Maven
are present, else the embedded broker; KAFKA_BOOTSTRAP_SERVERS or PERCORSO_BROKER to choose);
every result file records which broker it came from:
  throughput  Percorso with the shipped journeys vs. a trivial Faust agent, a Faust agent with
              one table write per event, Quix Streams per-key state, Quix Streams running
              Percorso's own engine (the headline ratio: the same work in the peer's runtime,
              its outputs checked against the pure engine's), a raw aiokafka consumer, and the
              pure engine without Kafka: the same events, the same broker.
  latency     event->action and event->transition percentiles at 25/50/75% of the max rate.
  lateness    fire time - deadline over many armed windows spread over time.
  recovery    SIGKILL a worker holding many customers: time to ready, with and without its
              local RocksDB; RSS and state bytes per customer.
  scaling     1 vs 2 workers on the same input, with the CPU the workers and the broker spent
              per event (what the output producer costs the broker shows here).
  engine      the engine alone (no broker): this commit's against the engine of 2d286cc, taken
              from git in the same run, with the 5 shipped journeys and with 50 (bench/engine.py):
              decode+advance events/s, Engine.advance µs p50/p99, decode and output encode µs.

``python -m bench --quick`` uses small sizes (minutes); without it, the sizes of the
performance targets (much longer). Results: a table on stdout and bench/results/<date>.json.
The Quix Streams baselines run in their own virtualenv, bench/.quix-venv (Quix pins an older
confluent-kafka than Percorso), created on first use with quixstreams and the packages
Percorso's engine and codecs import (fastavro, PyYAML, jsonschema, at pyproject.toml's
versions); the engine baseline imports Percorso from the repository, not from an install.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agents.launcher import WorkerProcess, worker_env
from percorso import clients
from percorso.broker import Broker, free_port, kafka_broker
from percorso.config import Settings, TopicNames
from percorso.synthetic import SyntheticTraffic
from percorso.topics import ensure_topics, percorso_topics

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
QUIX_VENV = REPO / "bench" / ".quix-venv"
DAY = 86_400_000
# The first second after a worker is ready costs up to ~0.5 s once (first fetches, the
# producer's first metadata for every output topic): latency is measured after this warm-up.
LATENCY_WARMUP_S = 3.0
# Restoring a whole changelog from the embedded broker slows down as its partitions grow (about
# 500 records/s per worker at 2M records): past this, the figure is reported as not reached.
CHANGELOG_ONLY_LIMIT_S = 600.0
ALL_SCENARIOS = ("throughput", "latency", "lateness", "recovery", "scaling", "engine")
BROKERLESS = ("engine",)


@dataclass(frozen=True)
class Sizes:
    events: int
    customers: int
    latency_seconds: float
    windows: int
    window_spread_s: float
    recovery_customers: int


QUICK = Sizes(
    events=30_000,
    customers=8_000,
    latency_seconds=15,
    windows=10_000,
    window_spread_s=20,
    recovery_customers=20_000,
)
FULL = Sizes(
    events=200_000,
    customers=50_000,
    latency_seconds=30,
    windows=1_000_000,
    window_spread_s=100,  # 1,000,000 windows over 100 s: 10,000 a second (issue target)
    recovery_customers=1_000_000,
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- plumbing ---------------------------------------------------------------------------------


class Run:
    """One benchmark run: a broker, a scratch folder, unique names."""

    def __init__(self, broker: Broker, scratch: Path) -> None:
        self.broker = broker
        self.scratch = scratch
        self.counter = 0

    def name(self, prefix: str) -> str:
        self.counter += 1
        return f"bench-{prefix}-{os.getpid()}-{self.counter}"

    def settings(self, partitions: int = 8) -> Settings:
        app = self.name("app")
        return Settings(
            bootstrap_servers=self.broker.bootstrap_servers,
            app_id=app,
            data_dir=self.scratch / app,
            partitions=partitions,
            replication_factor=1,
            web_port=free_port(),
            topics=TopicNames(
                touchpoints=f"{app}-touchpoints",
                actions_prefix=f"{app}-actions.",
                transitions=f"{app}-transitions",
                dlq=f"{app}-dlq",
            ),
        )

    def produce(
        self, settings: Settings, records: list[tuple[bytes, bytes]], rate: float | None = None
    ) -> float:
        ensure_topics(clients.admin(settings), percorso_topics(settings))
        producer = clients.producer(
            settings,
            **{"linger.ms": 50, "batch.size": 1_000_000, "queue.buffering.max.messages": 2_000_000},
        )
        started = time.monotonic()
        for n, (key, value) in enumerate(records):
            if rate:
                ahead = started + n / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            while True:
                try:
                    producer.produce(settings.topics.touchpoints, key=key, value=value)
                    break
                except BufferError:
                    producer.poll(0.05)
            if n % 10_000 == 0:
                producer.poll(0)
        assert producer.flush(120) == 0
        return time.monotonic() - started


class Worker(WorkerProcess):
    """A worker of this run, with its settings."""

    def __init__(self, run: Run, settings: Settings, **env: str) -> None:
        tuned = replace(settings, tick_interval_s=0.25)
        super().__init__(
            worker_env(tuned, run.broker.profile.name, **env),
            run.scratch / f"{settings.app_id}-{settings.web_port}.log",
            cwd=REPO,
        )
        self.settings = settings

    def wait_ready(self, timeout: float = 900.0) -> float:  # recovery of 1M customers
        return super().wait_ready(timeout)


def processed_rate(
    workers: list[WorkerProcess], target: int, timeout: float = 3600
) -> dict[str, Any]:
    """Poll the workers' counters: events/s from the first processed record to the target."""
    first_t = first_n = None
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        n = sum(w.metric("percorso_touchpoints_total") for w in workers)
        now = time.monotonic()
        if first_t is None and n > 0:
            first_t, first_n = now, n
        if n >= target and first_t is not None:
            elapsed = max(1e-6, now - first_t)
            return {
                "events": int(n),
                "seconds": round(elapsed, 2),
                "events_per_s": round((n - (first_n or 0)) / elapsed, 1),
            }
        time.sleep(0.2)
    raise RuntimeError(f"only {n} of {target} processed in {timeout} s")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def run_baseline(command: list[str], env: dict[str, str], timeout: float = 3600) -> dict[str, Any]:
    out = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
    )
    # faust redirects stdout to its log (stderr): look in both
    match = re.search(r"BENCH n=(\d+) first=([\d.]+) last=([\d.]+)", out.stdout + out.stderr)
    if not match:
        raise RuntimeError(f"{command[-1]} gave no result: {out.stdout[-500:]}{out.stderr[-2000:]}")
    n, first, last = int(match[1]), float(match[2]), float(match[3])
    result: dict[str, Any] = {
        "events": n,
        "seconds": round(last - first, 2),
        "events_per_s": round(n / max(1e-6, last - first), 1),
    }
    outputs = re.search(r"BENCH-OUTPUTS ((?:\w+=\d+ ?)+)", out.stdout + out.stderr)
    if outputs:  # what the baseline says it produced, checked against the broker by the caller
        for pair in outputs[1].split():
            name, count = pair.split("=")
            result[name] = int(count)
    return result


QUIX_STREAMS = "quixstreams==3.28.1"
# What bench/baselines/quix_engine.py imports of Percorso (codecs, records, journeys) needs
# beyond the standard library, with the versions pyproject.toml declares. Percorso itself is
# not installed there: the baseline runs from the repository (python -m, cwd = the repo).
QUIX_ENGINE_PACKAGES = ("fastavro", "PyYAML", "jsonschema")


def quix_requirements() -> list[str]:
    """Quix Streams, plus Percorso's engine dependencies as pinned in pyproject.toml."""
    import tomllib

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = []
    for name in QUIX_ENGINE_PACKAGES:
        found = [d for d in declared if re.match(rf"{re.escape(name)}\b", d, re.IGNORECASE)]
        if len(found) != 1:
            raise RuntimeError(f"pyproject.toml declares {name} {len(found)} times, not once")
        wanted.append(found[0])
    return [QUIX_STREAMS, *wanted]


def quix_python() -> str | None:
    """The Quix Streams virtualenv (bench/.quix-venv): created on first use, and brought up to
    date when the requirements change (they are recorded in it), so repeated runs are cheap."""
    python = QUIX_VENV / "bin" / "python"
    recorded = QUIX_VENV / "bench-requirements.txt"
    requirements = quix_requirements()
    wanted = "\n".join(requirements) + "\n"
    if python.exists() and recorded.exists() and recorded.read_text() == wanted:
        return str(python)
    if not python.exists():
        log("creating the Quix Streams virtualenv (bench only) ...")
        subprocess.run([sys.executable, "-m", "venv", str(QUIX_VENV)], check=True)
    log(f"installing into {QUIX_VENV.relative_to(REPO)}: {', '.join(requirements)}")
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *requirements],
        capture_output=True,
        text=True,
        check=False,
    )
    if install.returncode != 0:
        log(f"Quix Streams unavailable: {install.stderr[-300:]}")
        shutil.rmtree(QUIX_VENV, ignore_errors=True)
        return None
    recorded.write_text(wanted)
    return str(python)


# -- scenarios ---------------------------------------------------------------------------------


def synthetic_records(
    settings: Settings, events: int, customers: int, span_ms: int, start_ms: int
) -> tuple[list[dict[str, Any]], list[tuple[bytes, bytes]]]:
    codec = clients.Codecs.from_settings(settings).touchpoint
    traffic = SyntheticTraffic(customers, seed=1, start_ms=start_ms, rate=events / (span_ms / 1000))
    touchpoints = traffic.take(events)
    return touchpoints, [(t["customer_id"].encode(), codec.encode(t)) for t in touchpoints]


def throughput(run: Run, sizes: Sizes, with_quix: bool) -> dict[str, Any]:
    settings = run.settings()
    start = int(time.time() * 1000) - 30 * DAY
    _touchpoints, records = synthetic_records(
        settings, sizes.events, sizes.customers, 7 * DAY, start
    )
    log(f"throughput: producing {len(records)} touchpoints of {sizes.customers} customers")
    run.produce(settings, records)
    results: dict[str, Any] = {}

    from journeys.engine import Engine, Tick
    from journeys.loader import load_catalog

    engine = Engine(load_catalog(settings.journeys_dir))
    codec = clients.Codecs.from_settings(settings).touchpoint
    states: dict[str, Any] = {}
    expected = {"transitions": 0, "actions": 0}  # what the touchpoints alone cause, no ticks
    began = time.perf_counter()
    for _, value in records:  # decode + engine, as the worker does, without Kafka
        tp = codec.decode(value)
        step = engine.advance(states.get(tp["customer_id"]), tp)
        states[tp["customer_id"]] = step.state
        expected["transitions"] += len(step.transitions)
        expected["actions"] += len(step.actions)
    for state in states.values():
        engine.advance(state, Tick(start + 8 * DAY))
    elapsed = time.perf_counter() - began
    results["pure engine (no Kafka)"] = {
        "events": len(records),
        "seconds": round(elapsed, 2),
        "events_per_s": round(len(records) / elapsed, 1),
    }
    log(f"  pure engine: {results['pure engine (no Kafka)']['events_per_s']}/s")

    base_env = {
        **os.environ,
        "BENCH_BROKER": run.broker.bootstrap_servers,
        "BENCH_TOPIC": settings.topics.touchpoints,
        "BENCH_TARGET": str(len(records)),
        "BENCH_PARTITIONS": str(settings.partitions),
    }
    for label, command in (
        ("raw aiokafka consumer", [sys.executable, "-m", "bench.baselines.aiokafka_raw"]),
        (
            "Faust trivial count",
            [sys.executable, "-m", "bench.baselines.faust_app", "count", "worker"],
        ),
        (
            "Faust one table write/event",
            [sys.executable, "-m", "bench.baselines.faust_app", "table", "worker"],
        ),
    ):
        app_id = run.name("baseline")
        env = {**base_env, "BENCH_APP_ID": app_id, "BENCH_DATA": str(run.scratch / app_id)}
        results[label] = run_baseline(command, env)
        log(f"  {label}: {results[label]['events_per_s']}/s")
    if with_quix and (python := quix_python()):
        app_id = run.name("quix")
        env = {**base_env, "BENCH_APP_ID": app_id, "BENCH_DATA": str(run.scratch / app_id)}
        try:
            results["Quix Streams per-key state"] = run_baseline(
                [python, str(REPO / "bench" / "baselines" / "quix_count.py")], env
            )
            log(f"  Quix: {results['Quix Streams per-key state']['events_per_s']}/s")
        except RuntimeError as exc:
            results["Quix Streams per-key state"] = {"error": str(exc)[-300:]}
        results[QUIX_ENGINE] = quix_engine(run, settings, python, base_env, len(records), expected)

    worker = Worker(run, settings).start()
    try:
        worker.wait_ready()
        results["Percorso (shipped journeys)"] = processed_rate([worker], len(records))
        log(f"  Percorso: {results['Percorso (shipped journeys)']['events_per_s']}/s")
    finally:
        worker.stop()
    # After the stop (a graceful one flushes): every output the worker produced, ticks included
    try:
        results["Percorso (shipped journeys)"] |= produced(
            settings, clients.Codecs.from_settings(settings)
        )
        log(f"  Percorso's outputs: {results['Percorso (shipped journeys)']['outputs']}")
    except RuntimeError as exc:  # bookkeeping: the measured rate stands without it
        results["Percorso (shipped journeys)"]["outputs_error"] = str(exc)[-300:]
        log(f"  Percorso's outputs not read back: {exc}")
    if (
        "outputs" in results.get(QUIX_ENGINE, {})
        and "outputs" in results["Percorso (shipped journeys)"]
    ):
        # The worker also fires windows from its ticks (this traffic is weeks old, so all of
        # them are due): actions an event triggered are the ones both must agree on.
        log(
            "  actions triggered by an event: Percorso "
            f"{results['Percorso (shipped journeys)']['outputs']['event_actions']}, "
            f"{QUIX_ENGINE} {results[QUIX_ENGINE]['outputs']['event_actions']}"
        )
    percorso = results["Percorso (shipped journeys)"]["events_per_s"]
    for r in results.values():
        if "events_per_s" in r:
            r["percorso_ratio"] = round(percorso / r["events_per_s"], 3)
    return results


QUIX_ENGINE = "Quix Streams running Percorso's engine"
HEADLINE = f"Percorso ÷ {QUIX_ENGINE}"


def quix_engine(
    run: Run,
    settings: Settings,
    python: str,
    base_env: dict[str, str],
    events: int,
    expected: dict[str, int],
) -> dict[str, Any]:
    """The headline baseline (bench/baselines/quix_engine.py), on outputs of its own, checked:
    it must process every event and produce what the pure engine says those events cause."""
    app_id = run.name("quix-engine")
    own = replace(
        settings,
        topics=TopicNames(
            touchpoints=settings.topics.touchpoints,
            actions_prefix=f"{app_id}-actions.",
            transitions=f"{app_id}-transitions",
            dlq=f"{app_id}-dlq",
        ),
    )
    ensure_topics(clients.admin(own), percorso_topics(own))
    env = {
        **base_env,
        "BENCH_APP_ID": app_id,
        "BENCH_DATA": str(run.scratch / app_id),
        "BENCH_TRANSITIONS": own.topics.transitions,
        "BENCH_ACTIONS_PREFIX": own.topics.actions_prefix,
        "BENCH_DLQ": own.topics.dlq,
        "BENCH_CHANNELS": ",".join(own.action_channels),
    }
    try:
        result = run_baseline([python, "-m", "bench.baselines.quix_engine"], env)
        result |= produced(own, clients.Codecs.from_settings(own))
        log(f"  {QUIX_ENGINE}: {result['events_per_s']}/s; outputs {result['outputs']}")
        problems = []
        if result["events"] != events:
            problems.append(f"processed {result['events']} of {events} events")
        outputs = result["outputs"]
        if not outputs["actions"] > 0:
            problems.append("no action produced")
        for kind in ("transitions", "actions"):
            if not result.get(kind) == outputs[kind] == expected[kind]:
                problems.append(
                    f"{kind}: {result.get(kind)} emitted, {outputs[kind]} on the broker, "
                    f"{expected[kind]} expected from the pure engine"
                )
        if problems:
            raise RuntimeError("; ".join(problems))
        result["expected_from_pure_engine"] = expected
        return result
    except RuntimeError as exc:
        log(f"  {QUIX_ENGINE} failed: {exc}")
        return {"error": str(exc)[-300:]}


def produced(settings: Settings, codecs: clients.Codecs) -> dict[str, Any]:
    """What is on a deployment's output topics: transitions and dead letters (counted from the
    offsets), actions (read back and decoded, with how many of them an event triggered)."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    consumer = clients.consumer(settings, **{"group.id": f"{settings.app_id}-bench-outputs"})
    try:
        action_topics = sorted({settings.topics.actions(c) for c in settings.action_channels})
        counts = {"transitions": 0, "actions": 0, "event_actions": 0, "dead_letters": 0}
        ends: dict[tuple[str, int], int] = {}
        for topic in (settings.topics.transitions, settings.topics.dlq, *action_topics):
            md = consumer.list_topics(topic, timeout=10).topics[topic]
            for p in md.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                if topic == settings.topics.transitions:
                    counts["transitions"] += high - low
                elif topic == settings.topics.dlq:
                    counts["dead_letters"] += high - low
                elif high > low:
                    ends[(topic, p)] = high
        consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in ends])
        deadline = time.monotonic() + 120
        while ends and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, timeout=1):
                if msg.error():
                    continue
                counts["actions"] += 1
                if codecs.action.decode(msg.value())["trigger_kind"] == "event":
                    counts["event_actions"] += 1
            for tp in consumer.position([TopicPartition(t, p) for t, p in ends]):
                if tp.offset >= ends[(tp.topic, tp.partition)]:
                    del ends[(tp.topic, tp.partition)]
        if ends:
            raise RuntimeError(f"could not read back the actions of {sorted(ends)}")
        return {"outputs": counts}
    finally:
        consumer.close()


def headline(throughput: dict[str, Any]) -> dict[str, Any]:
    """Percorso ÷ Quix Streams running Percorso's engine: the same work, the same run."""
    percorso = throughput.get("Percorso (shipped journeys)", {})
    quix = throughput.get(QUIX_ENGINE, {})
    if "events_per_s" not in percorso or "events_per_s" not in quix:
        return {"label": HEADLINE, "ratio": None, "note": quix.get("error", "not measured")}
    return {
        "label": HEADLINE,
        "ratio": round(percorso["events_per_s"] / quix["events_per_s"], 3),
        "percorso_events_per_s": percorso["events_per_s"],
        "baseline_events_per_s": quix["events_per_s"],
    }


def latency(run: Run, sizes: Sizes, max_rate: float) -> dict[str, Any]:
    from confluent_kafka import OFFSET_END, Consumer, TopicPartition

    results: dict[str, Any] = {}
    for share in (0.25, 0.5, 0.75):
        rate = max(10.0, max_rate * share)
        settings = run.settings()
        codecs = clients.Codecs.from_settings(settings)
        ensure_topics(clients.admin(settings), percorso_topics(settings))
        worker = Worker(run, settings).start()
        try:
            worker.wait_ready()
            consumer = Consumer(
                {
                    **settings.kafka_config(),
                    "group.id": run.name("lat"),
                    "enable.auto.commit": False,
                    "fetch.wait.max.ms": 10,  # the embedded broker holds fetches until this
                }
            )
            topics = [
                settings.topics.transitions,
                *(settings.topics.actions(c) for c in settings.action_channels),
            ]
            md = consumer.list_topics(timeout=10)
            consumer.assign(
                [TopicPartition(t, p, OFFSET_END) for t in topics for p in md.topics[t].partitions]
            )
            consumer.consume(1, timeout=1)
            sent: dict[str, int] = {}
            traffic = SyntheticTraffic(sizes.customers, seed=2, rate=rate)
            warmup = int(rate * LATENCY_WARMUP_S)  # sent, not measured: the steady state is
            count = warmup + int(rate * sizes.latency_seconds)
            stop = threading.Event()
            action_lat: list[float] = []
            transition_lat: list[float] = []

            collector = threading.Thread(
                target=_collect,
                args=(consumer, settings, codecs, sent, stop, action_lat, transition_lat),
                daemon=True,
            )
            collector.start()
            producer = clients.producer(settings, **{"linger.ms": 1})
            started = time.monotonic()
            for n in range(count):
                ahead = started + n / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
                tp = traffic.next_event()
                tp["occurred_at"] = int(time.time() * 1000)
                if n >= warmup:
                    sent[tp["event_id"]] = tp["occurred_at"]
                producer.produce(
                    settings.topics.touchpoints,
                    key=tp["customer_id"].encode(),
                    value=codecs.touchpoint.encode(tp),
                )
                producer.poll(0)
            producer.flush(30)
            time.sleep(3)
            stop.set()
            collector.join()
            consumer.close()
            results[f"{int(share * 100)}% ({rate:.0f}/s)"] = {
                "event_to_action_s": {
                    q: percentile(action_lat, p)
                    for q, p in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
                },
                "event_to_transition_s": {
                    q: percentile(transition_lat, p)
                    for q, p in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
                },
                "actions": len(action_lat),
                "transitions": len(transition_lat),
            }
            log(f"latency at {share:.0%}: {results[f'{int(share * 100)}% ({rate:.0f}/s)']}")
        finally:
            worker.stop()
    return results


def _collect(
    consumer: Any,
    settings: Settings,
    codecs: clients.Codecs,
    sent: dict[str, int],
    stop: threading.Event,
    action_lat: list[float],
    transition_lat: list[float],
) -> None:
    """Latencies of event-caused actions (worker side) and transitions (until received)."""
    while not stop.is_set():
        # poll, not consume(n, timeout): consume waits out its timeout for a short batch,
        # which would add up to that timeout to every measured transition
        msg = consumer.poll(0.1)
        if msg is not None:
            if msg.error():
                continue
            received = time.time() * 1000
            if msg.topic() == settings.topics.transitions:
                t = codecs.transition.decode(msg.value())
                if t["reason"] == "event" and t["cause"] in sent:
                    transition_lat.append((received - t["at"]) / 1000)
            else:
                a = codecs.action.decode(msg.value())
                if a["trigger_kind"] == "event" and a["trigger"] in sent:
                    action_lat.append((a["created_at"] - sent[a["trigger"]]) / 1000)


def lateness(run: Run, sizes: Sizes, max_rate: float) -> dict[str, Any]:
    """Arm many cart windows (30 min scaled to 30 s) whose deadlines are spread over time."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    settings = run.settings()
    codec = clients.Codecs.from_settings(settings)
    ingest = sizes.windows / max(1.0, max_rate) * 1.5 + 20
    first_deadline = int(time.time() * 1000 + ingest * 1000)
    step = sizes.window_spread_s * 1000 / sizes.windows
    window_ms = 30_000  # 30 min / time scale 60
    occurred: dict[str, int] = {}
    records: list[tuple[bytes, bytes]] = []
    for n in range(sizes.windows):
        at = int(first_deadline - window_ms + n * step)
        tp: dict[str, Any] = {
            "event_id": f"w{n}",
            "customer_id": f"wc{n}",
            "channel": "web",
            "type": "cart_add",
            "occurred_at": at,
            "attributes": {"sku": "S"},
            "source": None,
        }
        occurred[tp["event_id"]] = at
        records.append((tp["customer_id"].encode(), codec.touchpoint.encode(tp)))
    worker = Worker(run, settings, PERCORSO_TIME_SCALE="60").start()
    try:
        worker.wait_ready()
        log(
            f"lateness: arming {sizes.windows} windows due over {sizes.window_spread_s} s, "
            f"starting in {ingest:.0f} s"
        )
        run.produce(settings, records)
        processed = worker.metric("percorso_touchpoints_total")
        if time.time() * 1000 > first_deadline:
            log(f"  warning: ingest took longer than planned ({processed} processed)")
        consumer = Consumer(
            {**settings.kafka_config(), "group.id": run.name("late"), "enable.auto.commit": False}
        )
        topic = settings.topics.actions("email")
        md = consumer.list_topics(timeout=10)
        consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.topics[topic].partitions]
        )
        late: list[float] = []
        deadline = time.monotonic() + ingest + sizes.window_spread_s + 300
        while len(late) < sizes.windows and time.monotonic() < deadline:
            for msg in consumer.consume(5000, timeout=0.5):
                if msg.error():
                    continue
                a = codec.action.decode(msg.value())
                event_id = a["trigger"].rsplit("/", 1)[1]
                late.append((a["created_at"] - occurred[event_id] - window_ms) / 1000)
        consumer.close()
        return {
            "windows": sizes.windows,
            "fired": len(late),
            "lateness_s": {
                "p50": percentile(late, 0.5),
                "p99": percentile(late, 0.99),
                "max": max(late) if late else None,
            },
            "fired_before_deadline": sum(1 for x in late if x < 0),
        }
    finally:
        worker.stop()


def recovery(run: Run, sizes: Sizes) -> dict[str, Any]:
    settings = run.settings()
    codec = clients.Codecs.from_settings(settings).touchpoint
    now = int(time.time() * 1000) - DAY
    records = [
        (
            f"r{n}".encode(),
            codec.encode(
                {
                    "event_id": f"r{n}",
                    "customer_id": f"r{n}",
                    "channel": "web",
                    "type": "page_view",
                    "occurred_at": now + n % 1000,
                    "attributes": {"page": "/"},
                    "source": None,
                }
            ),
        )
        for n in range(sizes.recovery_customers)
    ]
    worker = Worker(run, settings).start()
    result: dict[str, Any] = {"customers": len(records)}
    try:
        worker.wait_ready()
        # RSS at two sizes, same worker: a fifth of the customers, then all of them. With the
        # RocksDB memory bounded (PERCORSO_ROCKSDB_MEMORY_MB) and the transactions bounded by
        # the checkpoint, the second should not be 5x the first.
        fifth = len(records) // 5
        rss_at: dict[str, int] = {}
        cache_at: dict[str, int] = {}
        for start, loaded in ((0, fifth), (fifth, len(records))):
            log(f"recovery: loading customers {start} to {loaded}")
            run.produce(settings, records[start:loaded])
            processed_rate([worker], loaded)
            time.sleep(8)  # let the worker commit and flush its changelog
            rss_at[str(loaded)] = int(worker.metric("process_resident_memory_bytes"))
            cache_at[str(loaded)] = int(worker.metric("percorso_rocksdb_memory_bytes"))
        rss = rss_at[str(len(records))]
        state_bytes = sum(f.stat().st_size for f in settings.data_dir.rglob("*") if f.is_file())
        result["rss_bytes"] = rss
        result["rss_bytes_by_customers"] = rss_at
        result["rss_growth_5x_customers"] = round(rss / rss_at[str(fifth)], 2)
        # what the RocksDB cache held (memtables included): RSS less it is the rest of the
        # worker, which should not grow with the customers
        result["rocksdb_cache_bytes_by_customers"] = cache_at
        result["rocksdb_memory_bytes"] = settings.rocksdb_memory_mb * 1024 * 1024
        result["state_bytes"] = state_bytes
        result["rss_bytes_per_customer"] = round(rss / len(records), 1)
        result["state_bytes_per_customer"] = round(state_bytes / len(records), 1)
        worker.kill()
        worker.start()
        result["restart_to_ready_s"] = round(worker.wait_ready(), 2)
        result["restart_to_lag_zero_s"] = round(
            _until_lag_zero(worker) + result["restart_to_ready_s"], 2
        )
        worker.kill()
        shutil.rmtree(settings.data_dir)
        worker.start()
        try:
            result["changelog_only_to_ready_s"] = round(
                worker.wait_ready(CHANGELOG_ONLY_LIMIT_S), 2
            )
        except RuntimeError:
            if not worker.alive():
                raise
            remaining = worker.metric("percorso_table_recovery_remaining_messages")
            result["changelog_only_to_ready_s"] = None
            result["changelog_only_note"] = (
                f"not ready after {CHANGELOG_ONLY_LIMIT_S:.0f} s, "
                f"{remaining:.0f} changelog records still to restore"
            )
        log(f"recovery: {result}")
    finally:
        worker.stop()
    return result


def _until_lag_zero(worker: WorkerProcess) -> float:
    started = time.monotonic()
    while (
        worker.metric("percorso_consumer_lag_messages") > 0
        or worker.metric("percorso_assigned_partitions") == 0
    ):
        time.sleep(0.2)
        if time.monotonic() - started > 600:
            break
    return time.monotonic() - started


def scaling(run: Run, sizes: Sizes) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for count in (1, 2):
        settings = run.settings()
        start = int(time.time() * 1000) - 30 * DAY
        _unused, records = synthetic_records(
            settings, sizes.events, sizes.customers, 7 * DAY, start
        )
        workers = [
            Worker(
                run, replace(settings, web_port=free_port(), data_dir=settings.data_dir / str(i))
            ).start()
            for i in range(count)
        ]
        try:
            for w in workers:
                w.wait_ready()
            # produced once every worker is ready: a worker that is ready first would otherwise
            # drain the input alone before the measurement starts
            run.produce(settings, records)
            worker_pids = [w.process.pid for w in workers if w.process is not None]
            broker_cpu = cpu_seconds(run.broker.process_ids())
            worker_cpu = cpu_seconds(worker_pids)
            r = results[f"{count} worker(s)"] = processed_rate(workers, len(records))
            if run.broker.process_ids():
                r["broker_cpu_ms_per_event"] = round(
                    (cpu_seconds(run.broker.process_ids()) - broker_cpu) * 1000 / r["events"], 3
                )
            r["worker_cpu_ms_per_event"] = round(
                (cpu_seconds(worker_pids) - worker_cpu) * 1000 / r["events"], 3
            )
            log(f"scaling {count}: {r}")
        finally:
            for w in workers:
                w.stop()
    one = results["1 worker(s)"]["events_per_s"]
    results["speedup"] = round(results["2 worker(s)"]["events_per_s"] / one, 2)
    results["note"] = (
        f"{os.cpu_count()} cores here: the broker, the producer and the workers "
        f"share them; a worker is one core, so N workers on N free cores "
        f"project to about N times one worker."
    )
    return results


# -- report ------------------------------------------------------------------------------------


def table(results: dict[str, Any]) -> str:
    lines = []
    tp = results.get("throughput", {})
    if tp:
        lines.append(f"{'throughput':40} {'events/s':>12} {'Percorso x':>11}")
        for label, r in tp.items():
            if "events_per_s" in r:
                lines.append(f"{label:40} {r['events_per_s']:>12,.0f} {r['percorso_ratio']:>11}")
            else:
                lines.append(f"{label:40} {'n/a':>12} {r.get('error', '')[:40]}")
    if "headline" in results:
        h = results["headline"]
        lines.append(
            f"headline: {h['label']} = {h['ratio']}"
            + (f" ({h['note'][:60]})" if h.get("note") else " (same run, same broker)")
        )
    for label, r in results.get("latency", {}).items():
        a, t = r["event_to_action_s"], r["event_to_transition_s"]
        fmt = lambda v: f"{v * 1000:.0f} ms" if v is not None else "n/a"  # noqa: E731
        lines.append(
            f"latency at {label}: event→action p50 {fmt(a['p50'])} p95 "
            f"{fmt(a['p95'])} p99 {fmt(a['p99'])}; event→transition p50 "
            f"{fmt(t['p50'])} p99 {fmt(t['p99'])}"
        )
    if "lateness" in results:
        r = results["lateness"]
        lines.append(
            f"window lateness over {r['fired']}/{r['windows']} windows: "
            f"p50 {r['lateness_s']['p50']} s, p99 {r['lateness_s']['p99']} s, "
            f"{r['fired_before_deadline']} fired early"
        )
    if "recovery" in results:
        r = results["recovery"]
        cache = r.get("rocksdb_cache_bytes_by_customers", {})
        rss = " then ".join(
            f"{b / 2**20:,.0f} MB (RocksDB cache {cache.get(c, 0) / 2**20:,.0f}) at {int(c):,}"
            for c, b in r["rss_bytes_by_customers"].items()
        )
        lines.append(
            f"recovery at {r['customers']:,} customers: ready {r['restart_to_ready_s']} s"
            f" (lag 0 at {r['restart_to_lag_zero_s']} s), changelog only "
            f"{r.get('changelog_only_note') or str(r['changelog_only_to_ready_s']) + ' s'}; "
            f"RSS {rss} (x{r['rss_growth_5x_customers']} for 5x the customers; RocksDB"
            f" bounded at {r['rocksdb_memory_bytes'] / 2**20:,.0f} MB), state"
            f" {r['state_bytes_per_customer']} B/customer"
        )
    if "scaling" in results:
        r = results["scaling"]
        one = r["1 worker(s)"]
        lines.append(
            f"scaling: 1 worker {one['events_per_s']:,.0f}/s, 2 workers "
            f"{r['2 worker(s)']['events_per_s']:,.0f}/s (x{r['speedup']}); CPU per event with "
            f"1 worker: worker {one.get('worker_cpu_ms_per_event')} ms, broker "
            f"{one.get('broker_cpu_ms_per_event', 'n/a')} ms"
        )
    if "engine" in results:
        from bench.engine import table as engine_table

        lines.append(engine_table(results["engine"]))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="small sizes (minutes)")
    parser.add_argument("--only", default=",".join(ALL_SCENARIOS))
    parser.add_argument("--no-quix", action="store_true", help="skip the Quix Streams baselines")
    parser.add_argument(
        "--max-rate",
        type=float,
        default=3000.0,
        help="events/s that latency and lateness take as the maximum when throughput is not "
        "measured in the same run",
    )
    parser.add_argument(
        "--windows", type=int, help="windows the lateness scenario arms (instead of the size's)"
    )
    parser.add_argument(
        "--window-spread",
        type=float,
        help="seconds over which those windows fall due (instead of the size's)",
    )
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.windows is not None:
        sizes = replace(sizes, windows=args.windows)
    if args.window_spread is not None:
        sizes = replace(sizes, window_spread_s=args.window_spread)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    results: dict[str, Any] = {}
    results |= {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "sizes": sizes.__dict__,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "commit": subprocess.run(  # the code measured
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
        ).stdout.strip(),
    }
    scratch = Path(tempfile.mkdtemp(prefix="percorso-bench-"))
    try:
        measure(args, wanted, sizes, scratch, results)
    except BaseException:
        log(f"failed; broker and worker logs kept in {scratch}")
        raise
    if os.environ.get("BENCH_KEEP"):
        log(f"broker and worker logs kept in {scratch} (BENCH_KEEP)")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    partial = "" if set(wanted) == set(ALL_SCENARIOS) else "-" + "-".join(wanted)
    out = RESULTS / f"{datetime.now(UTC):%Y-%m-%d}{'-quick' if args.quick else ''}{partial}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nwritten: {out.relative_to(REPO)}")
    return 0


def measure(
    args: argparse.Namespace,
    wanted: list[str],
    sizes: Sizes,
    scratch: Path,
    results: dict[str, Any],
) -> None:
    if "engine" in wanted:
        from bench.engine import engine_scenario

        log(f"engine: {sizes.events} touchpoints of {sizes.customers} customers, old and new")
        # best of 3 rounds at quick sizes, 2 at full (each round runs 8 replays)
        results["engine"] = engine_scenario(sizes.events, sizes.customers, 3 if args.quick else 2)
    if all(s in BROKERLESS for s in wanted):
        return
    with ExitStack() as stack:
        broker = stack.enter_context(kafka_broker(scratch / "broker"))
        results["broker"] = broker.kind
        results["broker_description"] = broker.describe()
        log(f"broker: {broker.describe()}")
        run = Run(broker, scratch)
        max_rate = args.max_rate
        if "throughput" in wanted:
            results["throughput"] = throughput(run, sizes, not args.no_quix)
            results["headline"] = headline(results["throughput"])
            log(f"headline: {results['headline']}")
            max_rate = results["throughput"]["Percorso (shipped journeys)"]["events_per_s"]
        if "latency" in wanted:
            results["latency"] = latency(run, sizes, max_rate)
        if "lateness" in wanted:
            results["lateness"] = lateness(run, sizes, max_rate)
        if "recovery" in wanted:
            results["recovery"] = recovery(run, sizes)
        if "scaling" in wanted:
            results["scaling"] = scaling(run, sizes)


if __name__ == "__main__":
    sys.exit(main())
