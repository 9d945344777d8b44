from __future__ import annotations

from collections import Counter

from percorso.records import validate_touchpoint
from percorso.synthetic import SyntheticTraffic


def test_same_seed_same_events() -> None:
    assert SyntheticTraffic(50, seed=3).take(500) == SyntheticTraffic(50, seed=3).take(500)
    assert SyntheticTraffic(50, seed=3).take(200) != SyntheticTraffic(50, seed=4).take(200)


def test_traffic_is_valid_multichannel_and_time_ordered() -> None:
    events = SyntheticTraffic(200, seed=11, rate=50).take(5000)
    for e in events:
        validate_touchpoint(e)
    types = Counter(e["type"] for e in events)
    channels = Counter(e["channel"] for e in events)
    for needed in (
        "page_view",
        "cart_add",
        "checkout_started",
        "purchase",
        "call_started",
        "survey_response",
        "app_login",
        "consent_withdrawn",
        "email_opened",
    ):
        assert types[needed] > 0, needed
    assert {"web", "app", "email", "call_center", "chat"} <= set(channels)
    times = [e["occurred_at"] for e in events]
    assert times == sorted(times)
    assert times[1] - times[0] == 20  # 50 events/s of event time
    assert len({e["event_id"] for e in events}) == len(events)


def test_calls_follow_a_digital_contact_on_the_same_topic() -> None:
    events = SyntheticTraffic(100, seed=5).take(20000)
    last_topic: dict[str, str] = {}
    matched = 0
    for e in events:
        if e["channel"] in ("web", "app", "chat") and "topic" in e["attributes"]:
            last_topic[e["customer_id"]] = e["attributes"]["topic"]
        if e["type"] == "call_started":
            assert last_topic.get(e["customer_id"]) == e["attributes"]["topic"]
            matched += 1
    assert matched > 10
