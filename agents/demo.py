"""``percorso demo`` (what ``make run`` runs): a local broker, one worker, live synthetic channel
traffic, and a summary of what Percorso does with it.

The broker is ``KAFKA_BOOTSTRAP_SERVERS`` if set, else an embedded one that lives as long as the
demo. Journey durations are divided by ``--time-scale`` (default 60: a 30-minute cart window
lasts 30 seconds) so that windows fire while you watch; the summary says so.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agents.launcher import WorkerProcess, worker_env
from percorso import clients
from percorso.broker import Broker, free_port, kafka_broker
from percorso.config import Settings
from percorso.produce import TouchpointSender
from percorso.synthetic import SyntheticTraffic
from percorso.topics import ensure_topics, percorso_topics

DEMO_PARTITIONS = 4


@dataclass
class Summary:
    started: float = field(default_factory=time.monotonic)
    produced: int = 0
    poison: int = 0
    transitions: Counter[str] = field(default_factory=Counter)
    actions: Counter[tuple[str, str]] = field(default_factory=Counter)
    deferred: int = 0
    dead_letters: int = 0
    last_actions: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=5))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def rate(self) -> float:
        return self.produced / max(0.001, time.monotonic() - self.started)


def _produce(
    settings: Settings, args: argparse.Namespace, summary: Summary, stop: threading.Event
) -> None:
    sender = TouchpointSender(
        clients.producer(settings),
        clients.Codecs.from_settings(settings),
        settings.topics.touchpoints,
    )
    traffic = SyntheticTraffic(args.customers, seed=int(time.time()), rate=args.rate)
    rng = random.Random(1)
    raw = clients.producer(settings)
    started = time.monotonic()
    sent = 0
    while not stop.is_set():
        ahead = started + sent / args.rate - time.monotonic()
        if ahead > 0:
            stop.wait(ahead)
            continue
        event = traffic.next_event()
        event["occurred_at"] = int(time.time() * 1000)  # live traffic: event time is now
        sender.send(event)
        sent += 1
        if rng.random() < 0.002:  # now and then a channel system sends something broken
            raw.produce(settings.topics.touchpoints, key=b"broken", value=b"{not avro}")
            raw.poll(0)
            with summary.lock:
                summary.poison += 1
        with summary.lock:
            summary.produced = sent
    sender.flush(10)
    raw.flush(10)


def _consume(settings: Settings, summary: Summary, stop: threading.Event) -> None:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    codecs = clients.Codecs.from_settings(settings)
    consumer = Consumer(
        {
            **settings.kafka_config(),
            "group.id": "percorso-demo-summary",
            "enable.auto.commit": False,
            "logger": clients.log,
        }
    )
    topics = [
        settings.topics.transitions,
        settings.topics.dlq,
        *(settings.topics.actions(c) for c in settings.action_channels),
    ]
    metadata = consumer.list_topics(timeout=10)
    consumer.assign(
        [
            TopicPartition(t, p, OFFSET_BEGINNING)
            for t in topics
            if t in metadata.topics
            for p in metadata.topics[t].partitions
        ]
    )
    try:
        while not stop.is_set():
            for msg in consumer.consume(500, timeout=0.2):
                if msg.error():
                    continue
                topic = msg.topic()
                with summary.lock:
                    if topic == settings.topics.dlq:
                        summary.dead_letters += 1
                    elif topic == settings.topics.transitions:
                        t = codecs.transition.decode(msg.value())
                        summary.transitions[t["journey_id"]] += 1
                    else:
                        a = codecs.action.decode(msg.value())
                        summary.actions[(a["journey_id"], a["action"])] += 1
                        if a["not_before"] is not None:
                            summary.deferred += 1
                        summary.last_actions.appendleft(a)
    finally:
        consumer.close()


def _render(summary: Summary, settings: Settings, time_scale: float, broker: Broker) -> Any:
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    with summary.lock:
        head = Table.grid(padding=(0, 2))
        head.add_row("broker", f"{broker.bootstrap_servers} ({broker.kind})")
        head.add_row("touchpoints", f"{summary.produced} sent, {summary.rate():.0f}/s")
        head.add_row(
            "dead letters",
            f"{summary.dead_letters} (of {summary.poison} broken records sent on purpose)",
        )
        head.add_row("worker", f"http://127.0.0.1:{settings.web_port}/readyz")
        head.add_row(
            "time scale",
            f"journey durations / {time_scale:g} (a 30 min window lasts {1800 / time_scale:.0f} s)",
        )
        counts = Table(title="per journey", expand=True)
        counts.add_column("journey")
        counts.add_column("transitions", justify="right")
        counts.add_column("actions")
        journeys = sorted(set(summary.transitions) | {j for j, _ in summary.actions})
        for j in journeys:
            acts = ", ".join(
                f"{a} {n}" for (jj, a), n in sorted(summary.actions.items()) if jj == j
            )
            counts.add_row(j, str(summary.transitions[j]), acts or "-")
        recent = Table(title="latest actions, with the context the channel receives", expand=True)
        recent.add_column("customer")
        recent.add_column("action")
        recent.add_column("channel")
        recent.add_column("stages")
        recent.add_column("recent touchpoints")
        for a in summary.last_actions:
            stages = ", ".join(f"{k}={v}" for k, v in a["context"]["stages"].items())
            touch = " ← ".join(f"{r['channel']}:{r['type']}" for r in a["context"]["recent"][:4])
            deferred = " (after quiet hours)" if a["not_before"] else ""
            recent.add_row(a["customer_id"], a["action"], a["channel"] + deferred, stages, touch)
    return Group(Panel(head, title="Percorso demo — Ctrl-C to stop"), counts, recent)


def _plain(summary: Summary) -> str:
    with summary.lock:
        actions = sum(summary.actions.values())
        transitions = sum(summary.transitions.values())
        return (
            f"touchpoints={summary.produced} transitions={transitions} actions={actions} "
            f"deferred={summary.deferred} dead_letters={summary.dead_letters} "
            f"by_action={dict(sorted((f'{j}/{a}', n) for (j, a), n in summary.actions.items()))}"
        )


def run_demo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    console = Console(soft_wrap=True)  # piped output: whole lines, greppable
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with (
        tempfile.TemporaryDirectory(prefix="percorso-demo-") as tmp,
        kafka_broker(Path(tmp) / "broker") as broker,
    ):
        settings = replace(
            Settings.from_env(),
            bootstrap_servers=broker.bootstrap_servers,
            partitions=DEMO_PARTITIONS,
            replication_factor=1,
            app_id=f"percorso-demo-{int(time.time())}",
            data_dir=Path(tmp) / "data",
            web_port=args.web_port or free_port(),
            time_scale=args.time_scale,
            tick_interval_s=0.5,
        )
        console.print(
            f"[bold]Percorso demo[/]: broker {broker.bootstrap_servers} "
            f"({broker.kind}); journey durations divided by {args.time_scale:g} so "
            f"windows fire while you watch."
        )
        ensure_topics(clients.admin(settings), percorso_topics(settings))
        worker = WorkerProcess(
            worker_env(settings, broker.profile.name), Path(tmp) / "worker.log"
        ).start()
        summary = Summary()
        threads: list[threading.Thread] = []
        try:
            console.print("starting the worker ...")
            worker.wait_ready(120)
            console.print(f"worker ready: http://127.0.0.1:{settings.web_port}/readyz")
            summary.started = time.monotonic()
            threads = [
                threading.Thread(
                    target=_produce, args=(settings, args, summary, stop), daemon=True
                ),
                threading.Thread(target=_consume, args=(settings, summary, stop), daemon=True),
            ]
            for t in threads:
                t.start()
            end = time.monotonic() + args.duration if args.duration else None
            if args.plain or not console.is_terminal:
                while not stop.wait(5) and (end is None or time.monotonic() < end):
                    print(_plain(summary), flush=True)
            else:
                with Live(
                    _render(summary, settings, args.time_scale, broker),
                    console=console,
                    refresh_per_second=2,
                ) as live:
                    while not stop.wait(0.5) and (end is None or time.monotonic() < end):
                        if not worker.alive():
                            break
                        live.update(_render(summary, settings, args.time_scale, broker))
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=15)
            code = worker.stop()
        print(f"final: {_plain(summary)}", flush=True)
        if code not in (0, -signal.SIGTERM):
            print(f"the worker ended with {code}; log:\n{worker.log_tail()}", file=sys.stderr)
            return 1
    return 0
