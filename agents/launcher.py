"""Run ``percorso worker`` as a child process: for the demo, the tests and the benchmarks.

One place knows how Settings become a worker's environment and how to tell when a worker is
ready (``/readyz``), so the three callers cannot drift apart.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request
from pathlib import Path

from percorso.children import ChildProcess
from percorso.config import Settings
from percorso.limits import ENV as LIMITS_ENV


def worker_env(settings: Settings, broker_profile: str, **extra: str) -> dict[str, str]:
    """The environment that makes ``percorso worker`` run with ``settings``."""
    t = settings.topics
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers or "",
        "PERCORSO_BROKER_PROFILE": broker_profile,
        "PERCORSO_APP_ID": settings.app_id,
        "PERCORSO_DATA_DIR": str(settings.data_dir),
        "PERCORSO_WEB_PORT": str(settings.web_port),
        "PERCORSO_JOURNEYS": str(settings.journeys_dir),
        "PERCORSO_PARTITIONS": str(settings.partitions),
        "PERCORSO_REPLICATION_FACTOR": str(settings.replication_factor),
        "PERCORSO_TOPIC_TOUCHPOINTS": t.touchpoints,
        "PERCORSO_TOPIC_ACTIONS_PREFIX": t.actions_prefix,
        "PERCORSO_TOPIC_TRANSITIONS": t.transitions,
        "PERCORSO_TOPIC_DLQ": t.dlq,
        "PERCORSO_TOPIC_CONVERSIONS": t.conversions,
        "PERCORSO_TICK_INTERVAL": str(settings.tick_interval_s),
        "PERCORSO_WINDOW_GRACE_MS": str(settings.window_grace_ms),
        "PERCORSO_TIME_SCALE": str(settings.time_scale),
        "PERCORSO_GC_THRESHOLD": ",".join(map(str, settings.gc_threshold or ())) or "python",
        "PERCORSO_ROCKSDB_MEMORY_MB": str(settings.rocksdb_memory_mb),
        "PYTHONUNBUFFERED": "1",
        **{variable: str(getattr(settings.limits, name)) for name, variable in LIMITS_ENV.items()},
    }
    env.update(extra)
    return env


class WorkerProcess(ChildProcess):
    """A worker child process, its log in a file."""

    name = "worker"

    def __init__(self, env: dict[str, str], log_path: Path, cwd: Path | None = None) -> None:
        super().__init__(env, log_path, f"http://127.0.0.1:{env['PERCORSO_WEB_PORT']}", cwd)

    def start(self) -> WorkerProcess:
        self._spawn([sys.executable, "-m", "percorso.cli", "worker"])
        return self

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Seconds until ``/readyz`` answered 200; raises with the log's tail otherwise."""
        return self.wait_http("/readyz", timeout)

    def metric(self, name: str) -> float:
        """The sum of a metric's samples on ``/metrics`` (retried while the server starts)."""
        for attempt in range(20):
            if not self.alive():
                raise RuntimeError(f"the worker exited; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
                    text = response.read().decode()
                break
            except OSError:
                if attempt == 19:
                    raise
                time.sleep(0.5)
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name)] in "{ ":
                total += float(line.rsplit(" ", 1)[1])
        return total
