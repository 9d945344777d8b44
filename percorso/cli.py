"""The ``percorso`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from percorso.config import Settings


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    overrides: dict[str, Any] = {}
    if getattr(args, "bootstrap_servers", None):
        overrides["bootstrap_servers"] = args.bootstrap_servers
    if getattr(args, "schema_registry_url", None):
        overrides["schema_registry_url"] = args.schema_registry_url
    if getattr(args, "journeys", None):
        overrides["journeys_dir"] = Path(args.journeys)
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    if getattr(args, "web_port", None):
        overrides["web_port"] = args.web_port
    if getattr(args, "app_id", None):
        overrides["app_id"] = args.app_id
    if getattr(args, "topic", None) and args.command == "produce":
        overrides["topics"] = replace(settings.topics, touchpoints=args.topic)
    return replace(settings, **overrides)


def _require_broker(settings: Settings) -> None:
    if not settings.bootstrap_servers:
        sys.exit(
            "percorso: no broker: set KAFKA_BOOTSTRAP_SERVERS or pass --bootstrap-servers "
            "(only `percorso demo` starts an embedded broker)"
        )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap-servers", help="Kafka brokers (env KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument(
        "--schema-registry-url",
        help="Schema Registry (env SCHEMA_REGISTRY_URL); unset: the ids recorded in schemas/",
    )


def cmd_produce(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from percorso import clients
    from percorso.produce import LineError, TouchpointSender, open_events, read_jsonl, send_all
    from percorso.synthetic import SyntheticTraffic

    settings = _settings(args)
    _require_broker(settings)
    if bool(args.events) == bool(args.synthetic):
        sys.exit("percorso produce: give exactly one of --events FILE or --synthetic")
    if args.ensure_topics:
        from percorso.topics import ensure_topics, percorso_topics

        ensure_topics(clients.admin(settings), percorso_topics(settings))
    err = Console(stderr=True)
    codecs = clients.Codecs.from_settings(settings)
    sender = TouchpointSender(clients.producer(settings), codecs, settings.topics.touchpoints)
    errors: list[LineError] = []
    if args.events:
        stream = open_events(args.events)
        events: Any = read_jsonl(stream, errors)
        total = None
        rate = args.rate
    else:
        traffic = SyntheticTraffic(
            args.customers,
            seed=args.seed,
            rate=args.rate or 100.0,
            start_ms=args.start_ms if args.start_ms is not None else _synthetic_start(args),
        )
        total = args.count
        events = (traffic.next_event() for _ in range(args.count)) if args.count else traffic
        rate = args.rate
    show = sys.stderr.isatty() and not args.quiet
    try:
        if show:
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                console=err,
                transient=True,
            ) as progress:
                summary = send_all(sender, events, rate, progress, total)
        else:
            summary = send_all(sender, events, rate)
    except KeyboardInterrupt:
        sender.flush()
        summary = sender.summary
    summary.invalid = errors
    for e in errors:
        print(f"{args.events}:{e.line}: skipped: {e.message}", file=sys.stderr)
    print(json.dumps({"topic": settings.topics.touchpoints, **summary.as_dict()}))
    if summary.failed:
        print(
            f"delivery failed for {summary.failed} messages: {sender.first_error}", file=sys.stderr
        )
        return 1
    return 2 if errors else 0


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def _synthetic_start(args: argparse.Namespace) -> int:
    """Paced (or endless) traffic is live: it starts now. A fixed count sent as fast as
    possible ends now instead, so no event is dated ahead of the clock of the workers that read
    it (they refuse what is more than PERCORSO_MAX_EVENT_SKEW_MS ahead)."""
    if args.count and not args.rate:
        return _now_ms() - int(args.count * 1000 / 100.0)  # 100 event-time events/s
    return _now_ms()


def cmd_tail(args: argparse.Namespace) -> int:
    from percorso.clients import Codecs
    from percorso.tail import dumps, tail

    settings = _settings(args)
    _require_broker(settings)
    try:
        for record in tail(
            settings,
            args.topic,
            Codecs.from_settings(settings),
            from_beginning=not args.from_end,
            max_messages=args.max,
            idle_timeout=args.idle_timeout,
            with_meta=args.with_meta,
        ):
            print(dumps(record), flush=True)
    except ValueError as exc:
        sys.exit(f"percorso tail: {exc}")
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        os._exit(0)
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from percorso import clients
    from percorso.topics import TopicConflictError, ensure_topics, percorso_topics

    settings = _settings(args)
    _require_broker(settings)
    try:
        report = ensure_topics(clients.admin(settings), percorso_topics(settings))
    except TopicConflictError as exc:
        print(f"percorso topics: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"created": report.created, "existing": report.existing}))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from journeys.loader import validate_paths

    problems, checked = validate_paths([Path(p) for p in args.paths])
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {checked} file(s)", file=sys.stderr)
        return 1
    print(f"ok: {checked} file(s) valid")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from journeys.simulate import run_simulation

    return run_simulation(
        Path(args.journeys),
        args.events,
        sys.stdout,
        sys.stderr,
        until=args.until,
        include=args.include,
        catalog_changes=args.catalog_change or (),
    )


def cmd_worker(args: argparse.Namespace) -> int:
    from agents.worker import run_worker

    settings = _settings(args)
    _require_broker(settings)
    return run_worker(settings, loglevel=args.loglevel)


def cmd_analytics(args: argparse.Namespace) -> int:
    from percorso.analytics.service import run_analytics

    settings = _settings(args)
    _require_broker(settings)
    env_metrics = os.environ.get("PERCORSO_WORKER_METRICS", "")
    worker_metrics = args.worker_metrics or [u for u in env_metrics.split(",") if u.strip()]
    return run_analytics(
        settings,
        Path(args.state_dir or os.environ.get("PERCORSO_ANALYTICS_DIR") or "data/analytics"),
        args.host or os.environ.get("PERCORSO_ANALYTICS_HOST") or "127.0.0.1",
        args.port
        if args.port is not None
        else int(os.environ.get("PERCORSO_ANALYTICS_PORT", 6067)),
        worker_metrics,
    )


def cmd_report(args: argparse.Namespace) -> int:
    from percorso.report import build_report, read_records, records_from_topics, render

    records: list[dict[str, Any]] = []
    if args.files:
        for name in args.files:
            try:
                stream = sys.stdin if name == "-" else open(name, encoding="utf-8")  # noqa: SIM115
            except OSError as exc:
                sys.exit(f"percorso report: cannot read {name}: {exc.strerror}")
            with stream:
                try:
                    records += read_records(stream)
                except json.JSONDecodeError as exc:
                    sys.exit(f"percorso report: {name}:{exc.lineno}: not JSON: {exc.msg}")
    else:
        from percorso.clients import Codecs

        settings = _settings(args)
        _require_broker(settings)
        try:
            records = records_from_topics(
                settings, Codecs.from_settings(settings), args.idle_timeout
            )
        except ValueError as exc:
            sys.exit(f"percorso report: {exc}")
    print(render(build_report(records), args.json))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from agents.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="percorso", description="Kafka-native, real-time customer-journey orchestration."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "produce",
        help="send touchpoints (JSON lines or synthetic) to the input topic, Avro-encoded",
    )
    _common(p)
    p.add_argument("--events", help="JSON-lines file of touchpoints ('-' for stdin)")
    p.add_argument("--synthetic", action="store_true", help="generate multi-channel traffic")
    p.add_argument("--customers", type=int, default=1000, help="synthetic: number of customers")
    p.add_argument(
        "--rate",
        type=float,
        help="events per second (default: as fast as possible "
        "for files; 100 event-time events/s synthetic)",
    )
    p.add_argument("--count", type=int, help="synthetic: stop after this many events")
    p.add_argument("--seed", type=int, default=7, help="synthetic: random seed")
    p.add_argument(
        "--start-ms",
        type=int,
        help="synthetic: event time of the first event (default: now; with --count and no "
        "--rate, so that the last event is now: workers refuse event times ahead of their clock)",
    )
    p.add_argument("--topic", help="input topic (env PERCORSO_TOPIC_TOUCHPOINTS)")
    p.add_argument("--ensure-topics", action="store_true", help="create Percorso's topics first")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("tail", help="decode a Percorso topic to JSON lines")
    _common(p)
    p.add_argument("topic")
    p.add_argument("--from-end", action="store_true", help="only new messages")
    p.add_argument("--max", type=int, help="stop after this many messages")
    p.add_argument("--idle-timeout", type=float, help="stop after this many idle seconds")
    p.add_argument(
        "--with-meta",
        action="store_true",
        help="wrap values with topic, partition, offset, key and headers",
    )
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser("topics", help="create Percorso's topics (idempotent; reports conflicts)")
    _common(p)
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("validate", help="check journey files")
    p.add_argument("paths", nargs="+", help="journey files or folders")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "report",
        help="per journey, version and variant: entries, completions, exits, conversions, "
        "uplift against the holdout",
    )
    _common(p)
    p.add_argument(
        "files",
        nargs="*",
        help="`percorso simulate` output (JSON lines, '-' for stdin); none: read the "
        "transitions and conversions topics from the beginning",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=5.0,
        help="topics: stop reading a topic after this many idle seconds",
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("simulate", help="replay recorded touchpoints offline through the engine")
    p.add_argument("--journeys", required=True, help="folder of journey files")
    p.add_argument("--events", required=True, help="JSON-lines touchpoints ('-' for stdin)")
    p.add_argument(
        "--until",
        help="fire windows up to this event time at the end (ISO-8601 or "
        "epoch ms; default: the last event time)",
    )
    p.add_argument(
        "--include",
        default="actions,transitions,conversions",
        help="what to print: actions, transitions, conversions, suppressed, late (comma-separated)",
    )
    p.add_argument(
        "--catalog-change",
        action="append",
        metavar="TIME=DIR",
        help="from event time TIME (ISO-8601 or epoch ms) on, replay with the catalog in DIR, "
        "keeping every customer's state (repeatable)",
    )
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "worker", help="a Faust worker (scale out by starting more with the same app id)"
    )
    _common(p)
    p.add_argument("--journeys", help="folder of journey files (env PERCORSO_JOURNEYS)")
    p.add_argument("--data-dir", help="RocksDB state folder (env PERCORSO_DATA_DIR)")
    p.add_argument(
        "--web-port", type=int, help="port of /metrics, /healthz, /readyz (env PERCORSO_WEB_PORT)"
    )
    p.add_argument("--app-id", help="consumer group / app id (env PERCORSO_APP_ID)")
    p.add_argument("--loglevel", default="info", help="log level (default info)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser(
        "analytics",
        help="journey figures from the topics, as JSON and a live journey page (read-only HTTP)",
    )
    _common(p)
    p.add_argument("--journeys", help="folder of journey files, for stage order and names")
    p.add_argument("--app-id", help="consumer group / app id (env PERCORSO_APP_ID)")
    p.add_argument(
        "--state-dir", help="RocksDB folder (env PERCORSO_ANALYTICS_DIR, default data/analytics)"
    )
    p.add_argument(
        "--host", help="address to listen on (env PERCORSO_ANALYTICS_HOST, default 127.0.0.1)"
    )
    p.add_argument(
        "--port",
        type=int,
        help="HTTP port of the page and JSON (env PERCORSO_ANALYTICS_PORT, default 6067)",
    )
    p.add_argument(
        "--worker-metrics",
        action="append",
        help="a worker's /metrics URL, for suppressed decisions and input lag (repeatable; env "
        "PERCORSO_WORKER_METRICS, comma-separated)",
    )
    p.set_defaults(func=cmd_analytics)

    p = sub.add_parser(
        "demo", help="the embedded default: local broker, worker, synthetic traffic, summary"
    )
    p.add_argument("--customers", type=int, default=300, help="synthetic customers")
    p.add_argument("--rate", type=float, default=40.0, help="touchpoints per second")
    p.add_argument(
        "--time-scale",
        type=float,
        default=60.0,
        help="divide journey durations by this so windows fire during the demo "
        "(default 60: 30 min -> 30 s)",
    )
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--web-port", type=int, default=6066, help="the worker's HTTP port")
    p.add_argument(
        "--page-port",
        type=int,
        default=6067,
        help="port of the journey page (the analytics process; 0: any free port)",
    )
    p.add_argument(
        "--plain", action="store_true", help="print summaries as lines instead of a live screen"
    )
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except BrokenPipeError:
        # the reader went away (`percorso simulate ... | head`): stop quietly, as Unix tools
        # do, and keep Python from complaining again when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by it
    return result


if __name__ == "__main__":
    sys.exit(main())
