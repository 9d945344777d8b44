"""Run ``percorso worker`` as a child process: for the demo, the tests and the benchmarks.

One place knows how Settings become a worker's environment and how to tell when a worker is
ready (``/readyz``), so the three callers cannot drift apart.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from percorso.config import Settings


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
        "PERCORSO_TICK_INTERVAL": str(settings.tick_interval_s),
        "PERCORSO_WINDOW_GRACE_MS": str(settings.window_grace_ms),
        "PERCORSO_TIME_SCALE": str(settings.time_scale),
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra)
    return env


class WorkerProcess:
    """A worker child process, its log in a file."""

    def __init__(self, env: dict[str, str], log_path: Path, cwd: Path | None = None) -> None:
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.url = f"http://127.0.0.1:{env['PERCORSO_WEB_PORT']}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> WorkerProcess:
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {self.starts} =====\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "percorso.cli", "worker"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
            )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Seconds until ``/readyz`` answered 200; raises with the log's tail otherwise."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if not self.alive():
                code = self.process.returncode if self.process is not None else None
                raise RuntimeError(f"the worker exited ({code}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the worker was not ready within {timeout:.0f} s:\n{self.log_tail()}")

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

    def kill(self) -> None:
        """SIGKILL: no shutdown, no commit, no flush."""
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
