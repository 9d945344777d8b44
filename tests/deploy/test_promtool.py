"""Alert rules checked and unit-tested with the real promtool."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def tool(name: str) -> str:
    """The binary, or a skip outside CI (CI installs Debian's prometheus package)."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing: .ci/run installs Debian's prometheus package")
        pytest.skip(f"{name} not installed (apt-get install prometheus); CI runs this")
    return path


def test_rules_are_valid() -> None:
    out = subprocess.run(
        [tool("promtool"), "check", "rules", str(PROMETHEUS / "alerts.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_passes_its_unit_tests() -> None:
    out = subprocess.run(
        [tool("promtool"), "test", "rules", "alerts_test.yml"],
        capture_output=True,
        text=True,
        check=False,
        cwd=PROMETHEUS,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_a_broken_rule_is_caught(tmp_path: Path) -> None:
    broken = (
        (PROMETHEUS / "alerts.yml")
        .read_text()
        .replace('up{job="percorso"} == 0', 'up{job="percorso" == 0', 1)
    )
    (tmp_path / "alerts.yml").write_text(broken)
    out = subprocess.run(
        [tool("promtool"), "check", "rules", str(tmp_path / "alerts.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode != 0


def test_prometheus_config_is_valid(tmp_path: Path) -> None:
    config = (
        (PROMETHEUS / "prometheus.yml")
        .read_text()
        .replace("/etc/prometheus/alerts.yml", str(PROMETHEUS / "alerts.yml"))
    )
    (tmp_path / "prometheus.yml").write_text(config)
    out = subprocess.run(
        [tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
