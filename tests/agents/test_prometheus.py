"""A running worker, scraped by the real promtool and a real Prometheus server."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

from percorso.broker import free_port
from tests.agents.conftest import Cluster, produce
from tests.deploy.test_promtool import tool


def scrape(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def test_a_real_scrape_passes_promtool_and_prometheus_stores_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    promtool, prometheus = tool("promtool"), tool("prometheus")
    worker = cluster.worker().start()
    worker.wait_ready()
    base = int(time.time() * 1000) - 86_400_000
    produce(
        cluster.settings,
        [
            {
                "event_id": f"m{n}",
                "customer_id": f"c{n % 5}",
                "channel": "web",
                "type": "cart_add" if n % 2 else "page_view",
                "occurred_at": base + n,
                "attributes": {},
                "source": None,
            }
            for n in range(50)
        ],
    )
    deadline = time.monotonic() + 60
    while "percorso_actions_total{" not in (text := scrape(worker.url)):
        assert time.monotonic() < deadline, "no actions counted"
        time.sleep(0.5)
    assert "percorso_stage_transitions_total{" in text
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    port = free_port()
    target = worker.url.removeprefix("http://")
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: percorso\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    server = subprocess.Popen(
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        query = urllib.parse.quote('count({__name__=~"percorso_.+", job="percorso"})')
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/v1/query?query={query}", timeout=2
                ) as response:
                    result = json.loads(response.read())["data"]["result"]
                if result and float(result[0]["value"][1]) > 20:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Prometheus never stored percorso_ series"
            time.sleep(0.5)
        ready = urllib.parse.quote('percorso_ready{job="percorso"}')
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/v1/query?query={ready}", timeout=2
        ) as response:
            assert json.loads(response.read())["data"]["result"][0]["value"][1] == "1"
    finally:
        server.terminate()
        server.wait(timeout=30)
