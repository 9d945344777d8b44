"""Run ``percorso analytics`` as a child process (the demo and the tests do)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any


class AnalyticsProcess:
    def __init__(
        self,
        env: dict[str, str],
        state_dir: Path,
        port: int,
        log_path: Path,
        worker_metrics: tuple[str, ...] = (),
        cwd: Path | None = None,
    ) -> None:
        self.env = env
        self.state_dir = state_dir
        self.port = port
        self.log_path = log_path
        self.worker_metrics = worker_metrics
        self.cwd = cwd
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> AnalyticsProcess:
        command = [
            sys.executable,
            "-m",
            "percorso.cli",
            "analytics",
            "--state-dir",
            str(self.state_dir),
            "--port",
            str(self.port),
        ]
        for url in self.worker_metrics:
            command += ["--worker-metrics", url]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
            )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"the analytics process exited:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"analytics not answering within {timeout:.0f} s:\n{self.log_tail()}")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as response:
            return json.loads(response.read())

    def kill(self) -> None:
        """SIGKILL: no commit, no close."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout: float = 20.0) -> int | None:
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

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
