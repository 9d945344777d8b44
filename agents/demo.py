"""``percorso demo`` (what ``make run`` runs): a local broker, one worker, live synthetic channel
traffic, and a summary of what Percorso does with it.

The broker is ``KAFKA_BOOTSTRAP_SERVERS`` if set, else an embedded one that lives as long as the
demo. The analytics process (``percorso analytics``) runs next to the worker: the terminal view
and the journey page it serves show the same figures. Journey durations are divided by
``--time-scale`` (default 60: a 30-minute cart window lasts 30 seconds) so that windows fire
while you watch; the summary says so.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agents.demo_view import DemoStatus, live_view, plain_line, summary_view
from agents.launcher import WorkerProcess, worker_env
from percorso import clients
from percorso.analytics.launcher import AnalyticsProcess
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
    overview: dict[str, Any] | None = None  # the analytics process's /api/overview
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


def _follow(analytics: AnalyticsProcess, summary: Summary, stop: threading.Event) -> None:
    """Keep the latest figures of the analytics process (what the journey page shows too)."""
    while not stop.is_set():
        try:
            overview = analytics.get("/api/overview")
        except (OSError, ValueError):
            overview = None
        if overview is not None:
            with summary.lock:
                summary.overview = overview
        stop.wait(0.5)


def _status(summary: Summary, page_url: str, broker: Broker, time_scale: float) -> DemoStatus:
    with summary.lock:
        return DemoStatus(
            page_url=page_url,
            broker=f"{broker.bootstrap_servers} ({broker.kind})",
            time_scale=time_scale,
            produced=summary.produced,
            rate=summary.rate(),
            poison=summary.poison,
            elapsed_s=time.monotonic() - summary.started,
        )


def run_demo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    console = Console(soft_wrap=True)  # piped output: whole lines, greppable
    live_screen = not args.plain and console.is_terminal
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
        env = worker_env(settings, broker.profile.name)
        worker = WorkerProcess(env, Path(tmp) / "worker.log").start()
        analytics = AnalyticsProcess(
            env,
            Path(tmp) / "analytics",
            args.page_port or free_port(),
            Path(tmp) / "analytics.log",
            worker_metrics=(f"{worker.url}/metrics",),
        ).start()
        page_url = f"{analytics.url}/"
        summary = Summary()
        threads: list[threading.Thread] = []
        code: int | None = None
        try:
            console.print("starting the worker and the analytics process ...")
            analytics.wait_ready(60)
            worker.wait_ready(120)
            console.print(f"worker ready: {worker.url}/readyz")
            console.print(f"journey page: {page_url}")
            summary.started = time.monotonic()
            threads = [
                threading.Thread(
                    target=_produce, args=(settings, args, summary, stop), daemon=True
                ),
                threading.Thread(target=_follow, args=(analytics, summary, stop), daemon=True),
            ]
            for t in threads:
                t.start()
            end = time.monotonic() + args.duration if args.duration else None

            def running(every: float) -> bool:
                return (
                    not stop.wait(every)
                    and (end is None or time.monotonic() < end)
                    and worker.alive()
                    and analytics.alive()
                )

            status = _status(summary, page_url, broker, args.time_scale)
            if not live_screen:
                while running(5):
                    print(
                        plain_line(
                            _status(summary, page_url, broker, args.time_scale), summary.overview
                        ),
                        flush=True,
                    )
            else:
                with Live(
                    live_view(status, summary.overview),
                    console=console,
                    refresh_per_second=2,
                    screen=True,  # a screen of its own, like top; the summary is printed after
                ) as live:
                    while running(0.5):
                        status = _status(summary, page_url, broker, args.time_scale)
                        live.update(live_view(status, summary.overview))
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=15)
            analytics_code = analytics.stop()
            code = worker.stop()
        status = _status(summary, page_url, broker, args.time_scale)
        if live_screen:
            console.print(summary_view(status, summary.overview))
        print(f"final: {plain_line(status, summary.overview, with_actions=not live_screen)}")
        if code not in (0, -signal.SIGTERM, -signal.SIGINT):
            print(f"the worker ended with {code}; log:\n{worker.log_tail()}", file=sys.stderr)
            return 1
        if analytics_code not in (0, -signal.SIGTERM, -signal.SIGINT):
            print(
                f"the analytics process ended with {analytics_code}; log:\n{analytics.log_tail()}",
                file=sys.stderr,
            )
            return 1
    return 0
