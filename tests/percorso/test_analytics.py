"""Journey analytics without a broker: the figures, their RocksDB store and the HTTP side."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from percorso.analytics import Aggregator, AnalyticsStore, Histogram, JourneyFigures
from percorso.analytics.server import Views, serve
from percorso.analytics.stream import Stream
from percorso.analytics.workers import WorkerMetrics, parse
from percorso.config import Settings

MIN = 60_000


def tr(
    customer: str, source: str | None, target: str, at: int, reason: str = "event", **kw: Any
) -> dict[str, Any]:
    return {
        "customer_id": customer,
        "journey_id": "cart_recovery",
        "from_stage": source,
        "to_stage": target,
        "at": at,
        "cause": f"e-{customer}-{at}",
        "reason": reason,
        "time_in_stage_ms": kw.get("spent"),
        "instance": kw.get("instance", 1),
    }


SCRIPT = [  # four carts: bought, cleared, stuck at checkout, still carted
    tr("c1", None, "carted", 0),
    tr("c1", "carted", "checkout", 2 * MIN, spent=2 * MIN),
    tr("c1", "checkout", "completed", 5 * MIN, "goal", spent=3 * MIN),
    tr("c2", None, "carted", 0),
    tr("c2", "carted", "exited", 10 * MIN, "exit", spent=10 * MIN),
    tr("c3", None, "carted", 0),
    tr("c3", "carted", "checkout", 4 * MIN, spent=4 * MIN),
    tr("c4", None, "carted", 0),
]


def action(action_id: str, customer: str = "c4", channel: str = "email") -> dict[str, Any]:
    return {
        "action_id": action_id,
        "customer_id": customer,
        "journey_id": "cart_recovery",
        "action": "send_cart_reminder",
        "channel": channel,
        "priority": 60,
        "created_at": 1,
        "trigger": "w",
        "stage": "abandoned",
        "parameters": {"sku": "A1"},
        "context": {
            "stages": {"cart_recovery": "abandoned"},
            "recent": [{"channel": "web", "type": "cart_add", "occurred_at": 0, "attributes": {}}],
        },
        "expires_at": None,
        "variant": None,
        "not_before": None,
    }


def run(figures: JourneyFigures, records: list[dict[str, Any]]) -> dict[str, Any]:
    customers: dict[str, Any] = {}
    for t in records:
        new = figures.transition(t, customers.get(t["customer_id"]))
        if new is not None:
            customers[t["customer_id"]] = new
    return figures.view(["carted", "checkout", "abandoned"])


def test_funnel_paths_exits_and_stages_now() -> None:
    view = run(JourneyFigures("cart_recovery"), SCRIPT)
    funnel = {f["stage"]: f for f in view["funnel"]}
    assert funnel["(entry)"]["reached"] == 4
    assert (funnel["carted"]["reached"], funnel["carted"]["now"]) == (4, 1)
    assert (funnel["checkout"]["reached"], funnel["checkout"]["now"]) == (2, 1)
    assert funnel["checkout"]["conversion"] == 0.5
    assert funnel["abandoned"]["reached"] == 0
    assert funnel["completed"]["reached"] == 1 and funnel["completed"]["conversion"] == 0.25
    assert view["exits"] == {"exit": 1, "goal": 1}
    assert view["abandonment_rate"] == 0.5  # of the two instances that ended, one without goal
    assert view["active"] == 2
    flows = {(f["from"], f["to"]): f["count"] for f in view["flows"]}
    assert flows == {
        ("(entry)", "carted"): 4,
        ("carted", "checkout"): 2,
        ("checkout", "completed"): 1,
        ("carted", "exited"): 1,
    }
    assert view["time_in_stage"]["carted"]["count"] == 3
    assert view["time_in_stage"]["checkout"]["count"] == 1


def test_a_redelivered_transition_changes_nothing() -> None:
    once = run(JourneyFigures("cart_recovery"), SCRIPT)
    # at-least-once: after a worker crash, some transitions come again, in their order
    twice = run(JourneyFigures("cart_recovery"), SCRIPT[:5] + SCRIPT[1:3] + SCRIPT[5:] + SCRIPT)
    assert twice == once


def test_reentry_counts_a_new_instance_and_leaves_the_old_stage() -> None:
    records = [
        tr("c1", None, "carted", 0),
        tr("c1", None, "carted", MIN, instance=2),  # its exit was never seen
    ]
    view = run(JourneyFigures("cart_recovery"), records)
    assert view["entries"] == 2 and view["now"]["carted"] == 1
    assert next(f for f in view["funnel"] if f["stage"] == "carted")["reached"] == 2


def test_instances_of_one_customer_are_followed_apart(tmp_path: Path) -> None:
    store = AnalyticsStore(tmp_path / "a")
    agg = Aggregator(store, {"cart_recovery": ["carted", "checkout", "abandoned"]})
    two_carts = [
        {**tr("c1", None, "carted", 0), "instance_key": "A"},
        {**tr("c1", None, "carted", MIN), "instance_key": "B"},
        {**tr("c1", "carted", "checkout", 2 * MIN, spent=2 * MIN), "instance_key": "A"},
    ]
    for offset, t in enumerate(two_carts):
        agg.transition(t, "transitions", 0, offset)
    view = agg.journey_view("cart_recovery")
    assert view is not None
    assert agg.totals["transitions"] == 3 and agg.totals.get("repeated_transitions", 0) == 0
    assert {f["stage"]: f["now"] for f in view["funnel"][1:3]} == {"carted": 1, "checkout": 1}


def test_percentiles_are_within_ten_percent() -> None:
    h = Histogram()
    values = [1000 * s for s in range(1, 1001)]  # 1 s .. 1000 s
    for v in values:
        h.add(v)
    for p, true in ((50, 500_000), (90, 900_000), (99, 990_000)):
        got = h.percentile(p)
        assert got is not None and true <= got <= true * 1.1, (p, got)
    assert Histogram.load(json.loads(json.dumps(h.dump()))).view() == h.view()


def test_state_survives_a_restart_exactly_at_the_last_commit(tmp_path: Path) -> None:
    store = AnalyticsStore(tmp_path / "a")
    agg = Aggregator(store, {"cart_recovery": ["carted", "checkout", "abandoned"]})
    for offset, t in enumerate(SCRIPT[:4]):
        agg.transition(t, "transitions", 0, offset)
    agg.action(action("a1"), "actions.email", 1, 7)
    assert agg.commit()
    committed = agg.journey_view("cart_recovery")
    for offset, t in enumerate(SCRIPT[4:], start=4):  # read, never committed: a crash now
        agg.transition(t, "transitions", 0, offset)
    store.close()

    store = AnalyticsStore(tmp_path / "a")
    again = Aggregator(store, {"cart_recovery": ["carted", "checkout", "abandoned"]})
    assert again.offsets == {("transitions", 0): 4, ("actions.email", 1): 8}
    assert again.journey_view("cart_recovery") == committed
    for offset, t in enumerate(SCRIPT[4:], start=4):  # resumes at offset 4
        again.transition(t, "transitions", 0, offset)
    again.commit()
    whole = run(JourneyFigures("cart_recovery"), SCRIPT)
    view = again.journey_view("cart_recovery")
    assert view is not None
    assert {
        k: v for k, v in view.items() if k not in ("last_actions", "actions", "actions_total")
    } == {k: v for k, v in whole.items() if k not in ("last_actions", "actions", "actions_total")}
    store.close()


def test_actions_and_dead_letters_count_once(tmp_path: Path) -> None:
    store = AnalyticsStore(tmp_path / "a")
    agg = Aggregator(store, {})
    agg.action(action("a1"), "actions.email", 0, 0)
    agg.commit()
    agg.action(action("a1"), "actions.email", 0, 1)  # the same action id, sent again
    agg.action(action("a2", "c9", "sms"), "actions.sms", 0, 0)
    headers: dict[str, str | None] = {
        "percorso.error.class": "UndecodableRecord",
        "percorso.error.message": "not avro",
        "percorso.source.topic": "touchpoints",
        "percorso.source.partition": "2",
        "percorso.source.offset": "41",
    }
    agg.dead_letter(headers, "k", 5, "dlq", 0, 0)
    agg.dead_letter(headers, "k", 6, "dlq", 0, 1)  # the same source record, after a crash
    agg.dead_letter({**headers, "percorso.error.class": "LateEvent"}, "k", 7, "dlq", 0, 2)
    agg.commit()
    view = agg.journey_view("cart_recovery")
    assert view is not None
    assert view["actions"] == [
        {"action": "send_cart_reminder", "channel": "email", "count": 1},
        {"action": "send_cart_reminder", "channel": "sms", "count": 1},
    ]
    assert [a["action_id"] for a in view["last_actions"]] == ["a2", "a1"]
    assert view["last_actions"][1]["context"]["recent"][0]["type"] == "cart_add"
    assert agg.dead_letter_view()["by_class"] == {"UndecodableRecord": 1}
    assert agg.totals_view()["repeated_actions"] == 1
    store.close()


def test_worker_metrics_give_suppressed_decisions_by_reason() -> None:
    text = (
        "# TYPE percorso_actions_suppressed_total counter\n"
        'percorso_actions_suppressed_total{journey="lifecycle",action="x",reason="cap"} 3.0\n'
        'percorso_actions_suppressed_total{journey="lifecycle",action="x",reason="consent"} 1.0\n'
        'percorso_consumer_lag_messages{partition="0"} 5.0\n'
        'percorso_consumer_lag_messages{partition="1"} 2.0\n'
    )
    suppressed, lag = parse(text)
    assert suppressed == {("lifecycle", "x", "cap"): 3, ("lifecycle", "x", "consent"): 1}
    assert lag == 7


def test_http_is_read_only_and_serves_the_page(tmp_path: Path) -> None:
    store = AnalyticsStore(tmp_path / "a")
    agg = Aggregator(store, {"cart_recovery": ["carted", "checkout", "abandoned"]})
    for offset, t in enumerate(SCRIPT):
        agg.transition(t, "transitions", 0, offset)
    settings = Settings(bootstrap_servers="127.0.0.1:1")
    views = Views(agg, Stream(settings, agg), WorkerMetrics([]), {"cart_recovery": "Cart"})
    server = serve(views, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        with urllib.request.urlopen(f"{base}/api/journeys") as r:
            doc = json.loads(r.read())
        assert doc["journeys"][0]["journey_id"] == "cart_recovery"
        assert doc["journeys"][0]["entries"] == 4
        with urllib.request.urlopen(f"{base}/api/journeys/cart_recovery") as r:
            assert json.loads(r.read())["suppressed"] is None  # no worker metrics given
        for page in ("/", "/static/app.js", "/static/style.css"):
            with urllib.request.urlopen(base + page) as r:
                assert r.status == 200 and len(r.read()) > 500
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(f"{base}/api/journeys", b"{}"))
        assert err.value.code == 405
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{base}/api/journeys/nope")
        assert err.value.code == 404
    finally:
        server.shutdown()
        store.close()


def test_versions_of_a_journey_are_one_journey_on_the_page() -> None:
    from journeys.loader import load_catalog
    from percorso.analytics.service import catalog_view

    examples = Path(__file__).resolve().parents[2] / "examples" / "evolving"
    order, names = catalog_view(load_catalog(examples / "v2"))
    assert order == {"cart": ["carted", "checkout", "abandoned"]} and names == {"cart": "cart"}
