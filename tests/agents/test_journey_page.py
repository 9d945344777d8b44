"""The journey page in a real browser: broker, worker, analytics process, headless Chromium."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from agents.launcher import worker_env
from percorso.analytics.launcher import AnalyticsProcess
from percorso.broker import free_port
from tests.agents.browser import dump_dom, screenshot
from tests.agents.conftest import REPO, Cluster, produce, produce_raw, tp

SECOND = 1000


def script(now: int) -> list[dict[str, Any]]:
    """Four carts (bought, cleared, stuck at checkout, just added) and one unhappy customer.
    Event times are now: no 30-minute window can fire while the test runs."""
    return [
        tp("p1", "cus-1", "cart_add", now, sku="A1"),
        tp("p2", "cus-1", "checkout_started", now + SECOND),
        tp("p3", "cus-1", "purchase", now + 2 * SECOND, sku="A1"),
        tp("p4", "cus-2", "cart_add", now, "app", sku="B2"),
        tp("p5", "cus-2", "cart_cleared", now + 3 * SECOND, "app"),
        tp("p6", "cus-3", "cart_add", now, sku="C3"),
        tp("p7", "cus-3", "checkout_started", now + SECOND),
        tp("p8", "cus-4", "cart_add", now, "app", sku="D4"),
        tp("p9", "cus-5", "page_view", now, topic="billing", page="/help/billing"),
        tp("p10", "cus-5", "survey_response", now + SECOND, "email", survey="nps", score="3"),
    ]


def test_journey_page_shows_the_numbers_of_the_scripted_touchpoints(
    cluster: Cluster, tmp_path: Path
) -> None:
    worker = cluster.worker("w1").start()
    worker.wait_ready(120)
    analytics = AnalyticsProcess(
        worker_env(cluster.settings, cluster.broker.profile.name),
        tmp_path / "analytics",
        free_port(),
        tmp_path / "analytics.log",
        worker_metrics=(f"{worker.url}/metrics",),
        cwd=REPO,
    ).start()
    try:
        analytics.wait_ready(60)
        produce(cluster.settings, script(int(time.time() * 1000)))
        produce_raw(cluster.settings, [(b"broken", b"{not avro}")])

        def settled() -> bool:
            cart = analytics.get("/api/journeys/cart_recovery")
            feedback = analytics.get("/api/journeys/closed_loop_feedback")
            dead = analytics.get("/api/journeys")["dead_letters"]["total"]
            return (
                cart["entries"] == 4
                and sum(cart["exits"].values()) == 2
                and feedback["actions_total"] >= 1
                and dead == 1
            )

        deadline = time.monotonic() + 90
        while not settled():
            assert time.monotonic() < deadline, analytics.log_tail() + worker.log_tail()
            time.sleep(0.5)

        url = f"{analytics.url}/#journey=cart_recovery"
        page = dump_dom(url, tmp_path / "profile")
        assert page.one(id="journey").attrs["data-journey"] == "cart_recovery"
        funnel = page.one(id="funnel")

        def cell(stage: str, name: str) -> str:
            return funnel.one(data_stage=stage).one(data_field=name).text()

        assert cell("(entry)", "reached") == "4"
        assert (cell("carted", "reached"), cell("carted", "now")) == ("4", "1")
        assert (cell("checkout", "reached"), cell("checkout", "now")) == ("2", "1")
        assert cell("checkout", "conversion") == "50.0%"
        assert cell("completed", "reached") == "1"
        assert cell("completed", "conversion") == "25.0%"
        exits = page.one(id="exits")
        assert exits.one(data_reason="goal").one(data_field="count").text() == "1"
        assert exits.one(data_reason="exit").one(data_field="count").text() == "1"
        assert exits.one(data_reason="exit").one(tag="th").text() == "exit event"
        headline = page.one(tag="dl", **{"class": "headline"})
        assert headline.one(data_field="abandonment_rate").text() == "50.0%"
        assert headline.one(data_field="active").text() == "2"
        flows = page.one(id="flows")
        assert (
            flows.one(data_from="carted", data_to="checkout").one(data_field="count").text() == "2"
        )
        assert page.one(id="dead-letter-classes").one(data_class="SerializationError").text() == (
            "SerializationError 1"
        )

        feedback = dump_dom(f"{analytics.url}/#journey=closed_loop_feedback", tmp_path / "profile")
        row = feedback.one(id="last-actions").one(data_customer="cus-5")
        assert row.one(data_field="action").text() == "open_callback_ticket"
        context = row.one(data_field="context").text()
        assert "closed_loop_feedback=detractor" in context
        assert "email:survey_response ← web:page_view" in context
        assert "score=3" in context

        shot = screenshot(url, tmp_path / "journey-page.png", tmp_path / "profile")
        print(f"screenshot: {shot}")

        # SIGKILL, then a restart on the same RocksDB folder: the figures and the offsets were
        # written together, so it resumes exactly, counting nothing twice
        before = {j: analytics.get(f"/api/journeys/{j}") for j in ("cart_recovery", "lifecycle")}
        analytics.kill()
        analytics.start().wait_ready(60)
        time.sleep(3)  # time to read anything a replay would count again
        for journey_id, figures in before.items():
            after = analytics.get(f"/api/journeys/{journey_id}")
            for key in ("entries", "funnel", "flows", "exits", "actions", "last_actions"):
                assert after[key] == figures[key], (journey_id, key)
    finally:
        code = analytics.stop()
        assert code == 0, analytics.log_tail()
