"""Run ``percorso analytics`` as a child process (the demo and the tests do)."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

from percorso.children import ChildProcess


class AnalyticsProcess(ChildProcess):
    name = "analytics process"

    def __init__(
        self,
        env: dict[str, str],
        state_dir: Path,
        port: int,
        log_path: Path,
        worker_metrics: tuple[str, ...] = (),
        cwd: Path | None = None,
    ) -> None:
        super().__init__(env, log_path, f"http://127.0.0.1:{port}", cwd)
        self.state_dir = state_dir
        self.port = port
        self.worker_metrics = worker_metrics

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
        self._spawn(command)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        self.wait_http("/healthz", timeout)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as response:
            return json.loads(response.read())
