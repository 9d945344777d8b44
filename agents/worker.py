"""``percorso worker``: check the journeys, make sure the topics exist, run the Faust worker."""

from __future__ import annotations

import gc
import logging
import sys

from agents.app import Runtime, RuntimeOptions
from journeys.loader import JourneyError, load_catalog
from journeys.model import Catalog
from percorso import clients
from percorso.broker import PROFILES, BrokerProfile
from percorso.config import Settings
from percorso.topics import ensure_topics, internal_topics, percorso_topics, wait_for_partitions

log = logging.getLogger("percorso.worker")


def _use_uvloop() -> None:
    """uvloop runs Faust's event loop about 15% faster; optional where it does not install."""
    try:
        import mode.loop

        mode.loop.use("uvloop")
    except ImportError:
        log.info("uvloop not available: using asyncio's default loop")


def tune_gc(threshold: tuple[int, int, int] | None) -> None:
    """Set the collector's thresholds and freeze what exists now (modules, the catalog,
    Faust's services): the collector no longer walks those objects. Measured on a worker at
    2,500 touchpoints/s: with Python's thresholds (700, 10, 10), collections took about 2.6 s
    of every 30, 13 of them full ones of 40-120 ms (each a latency spike), because customer
    states live for a checkpoint interval, long enough to be promoted; with (20000, 20, 10)
    and the freeze, about 1.0 s (docs/performance.md). Freezing changes nothing for reference
    counting: frozen objects are still freed when no longer referenced."""
    if threshold is not None:
        gc.set_threshold(*threshold)
    gc.freeze()


def profile_of(settings: Settings) -> BrokerProfile:
    try:
        return PROFILES[settings.broker_profile]
    except KeyError:
        raise ValueError(
            f"PERCORSO_BROKER_PROFILE={settings.broker_profile!r}: expected one of "
            f"{', '.join(sorted(PROFILES))}"
        ) from None


def prepare(settings: Settings, catalog: Catalog) -> RuntimeOptions:
    """Create or check Percorso's topics; size the internal topics like the input topic."""
    admin = clients.admin(settings)
    specs = percorso_topics(settings, channels=set(settings.action_channels) | catalog.channels())
    ensure_topics(admin, specs)
    metadata = admin.list_topics(timeout=30)
    partitions = len(metadata.topics[settings.topics.touchpoints].partitions)
    replication = (
        settings.replication_factor
        if settings.replication_factor > 0
        else min(3, len(metadata.brokers))
    )
    internal = internal_topics(settings, partitions, replication)
    ensure_topics(admin, internal)
    wait_for_partitions(admin, internal + [s for s in specs if s.role == "input"])
    return RuntimeOptions(
        partitions=partitions,
        replication_factor=replication,
        tick_interval_s=settings.tick_interval_s,
        window_grace_ms=settings.window_grace_ms,
    )


def build_runtime(settings: Settings) -> Runtime:
    catalog = load_catalog(settings.journeys_dir, time_scale=settings.time_scale)
    options = prepare(settings, catalog)
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
    return Runtime(settings, profile_of(settings), catalog, options)


def run_worker(settings: Settings, loglevel: str = "info") -> int:
    from faust.worker import Worker

    _use_uvloop()
    try:
        runtime = build_runtime(settings)
    except JourneyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    if settings.time_scale != 1.0:
        log.warning(
            "journey durations are divided by %s (PERCORSO_TIME_SCALE)", settings.time_scale
        )
    tune_gc(settings.gc_threshold)
    # quiet: no terminal spinner (it sets the root logger to DEBUG, which costs ~10% CPU)
    worker = Worker(runtime.app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
    return 0
