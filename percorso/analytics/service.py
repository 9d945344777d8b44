"""``percorso analytics``: the process that reads the topics, keeps the figures and serves them."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from percorso.analytics.aggregator import Aggregator
from percorso.analytics.server import Views, serve
from percorso.analytics.store import AnalyticsStore
from percorso.analytics.stream import Stream
from percorso.analytics.workers import WorkerMetrics
from percorso.config import Settings

if TYPE_CHECKING:
    from journeys.model import Catalog

log = logging.getLogger(__name__)


def journey_catalog(settings: Settings) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Stage order and display name of each defined journey. The page orders its funnel by the
    definitions; journeys found only on the topics are still shown, stages in order seen."""
    from journeys.loader import JourneyError, load_catalog

    try:
        catalog = load_catalog(settings.journeys_dir)
    except (JourneyError, OSError) as exc:
        log.warning("journey definitions not loaded from %s: %s", settings.journeys_dir, exc)
        return {}, {}
    return catalog_view(catalog)


def catalog_view(catalog: Catalog) -> tuple[dict[str, list[str]], dict[str, str]]:
    """By the journey id records carry: the newest version's stages, then stages only older
    versions have; the newest version's name."""
    order: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    for j in sorted(catalog.journeys, key=lambda j: -(j.version or 0)):
        stages = order.setdefault(j.public_id, [])
        stages += [s.id for s in j.stages if s.id not in stages]
        names.setdefault(j.public_id, j.name)
    return order, names


def run_analytics(
    settings: Settings,
    state_dir: Path,
    host: str,
    port: int,
    worker_metrics: list[str],
) -> int:
    stage_order, names = journey_catalog(settings)
    store = AnalyticsStore(state_dir)
    try:
        aggregator = Aggregator(store, stage_order)
        stream = Stream(settings, aggregator)
        workers = WorkerMetrics(worker_metrics)
        server = serve(Views(aggregator, stream, workers, names), host, port)
        print(f"journey page: http://{host}:{server.server_port}/", flush=True)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        threading.Thread(target=workers.run, args=(stop,), daemon=True).start()
        try:
            stream.run(stop)
        finally:
            server.shutdown()
    finally:
        store.close()
    return 0
