"""`percorso demo`, as `make run` starts it: its own broker, a worker, traffic, a summary."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from percorso.broker import Broker


def test_demo_shows_actions_within_a_minute_and_stops_cleanly(broker: Broker) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    if broker.kind == "external":  # a configured broker is what the demo must use too
        env["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap_servers
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "percorso.cli",
            "demo",
            "--duration",
            "45",
            "--plain",
            "--web-port",
            "0",
            "--page-port",
            "0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "journey durations divided by 60" in run.stdout  # it says it shortens windows
    final = re.search(r"final: touchpoints=(\d+) transitions=(\d+) actions=(\d+)", run.stdout)
    assert final is not None, run.stdout[-2000:]
    touchpoints, transitions, actions = map(int, final.groups())
    assert touchpoints > 1000 and transitions > 100
    assert actions > 0
    assert "send_cart_reminder" in run.stdout  # a window fired, not only immediate actions


@pytest.mark.parametrize("flag", ["--help"])
def test_demo_help(flag: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "percorso.cli", "demo", flag],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0 and "--time-scale" in out.stdout
