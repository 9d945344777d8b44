"""Child processes the demo, the tests and the benchmarks start (workers, the analytics
process): one place for starting with a log file, readiness over HTTP, SIGKILL, SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request
from pathlib import Path


class ChildProcess:
    """A child process whose output goes to a log file, with an HTTP server at ``url``."""

    name = "child"

    def __init__(self, env: dict[str, str], log_path: Path, url: str, cwd: Path | None) -> None:
        self.env = env
        self.log_path = log_path
        self.url = url
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def _spawn(self, command: list[str]) -> None:
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {self.starts} =====\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                command,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_http(self, path: str, timeout: float) -> float:
        """Seconds until ``path`` answered 200; raises with the log's tail otherwise."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if not self.alive():
                code = self.process.returncode if self.process is not None else None
                raise RuntimeError(f"the {self.name} exited ({code}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}{path}", timeout=1) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(
            f"the {self.name} was not ready within {timeout:.0f} s:\n{self.log_tail()}"
        )

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
