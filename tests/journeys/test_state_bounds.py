"""What a customer's touchpoints make grow in the stored state is bounded, by documented
eviction rules (journeys/state.py), whatever the touchpoints are."""

from __future__ import annotations

from journeys.engine import Engine
from journeys.loader import load_catalog
from journeys.serde import encode_state
from journeys.state import (
    MAX_CHANNEL_CHARS,
    MAX_ENGAGEMENT_CHANNELS,
    MAX_OPTED_OUT,
    MAX_SEEN_CHARS,
)
from tests.journeys.harness import CATALOG_DIR, Customer

ENGINE = Engine(load_catalog(CATALOG_DIR))


def test_remembered_event_ids_are_bounded_in_characters_oldest_forgotten_first() -> None:
    c = Customer(ENGINE)
    for n in range(200):
        c.wait(seconds=1).does("page_view", event_id=f"{n:04d}-" + "x" * 250)
    assert c.state is not None
    seen = c.state["seen"]
    assert sum(map(len, seen)) <= MAX_SEEN_CHARS
    assert seen[-1].startswith("0199-") and seen == sorted(seen)  # the newest, in order
    assert len(seen) == MAX_SEEN_CHARS // 255
    # short ids: the policy's count is the bound, as before (64 in the shipped catalog)
    c2 = Customer(ENGINE, "cust-2")
    for n in range(100):
        c2.wait(seconds=1).does("page_view", event_id=f"id-{n}")
    assert c2.state is not None and len(c2.state["seen"]) == ENGINE.policies.remember_events


def test_engagement_keeps_the_most_engaged_channels() -> None:
    c = Customer(ENGINE)
    for _ in range(3):
        c.wait(seconds=1).does("page_view", channel="web")
    for n in range(MAX_ENGAGEMENT_CHANNELS * 3):
        c.wait(seconds=1).does("page_view", channel=f"made-up-{n}")
    assert c.state is not None
    engagement = c.state["engagement"]
    assert len(engagement) == MAX_ENGAGEMENT_CHANNELS
    assert engagement["web"] == 3  # never the one evicted
    assert f"made-up-{MAX_ENGAGEMENT_CHANNELS * 3 - 1}" in engagement  # the newest counted


def test_opt_outs_beyond_the_bound_become_an_opt_out_of_every_channel() -> None:
    c = Customer(ENGINE)
    for n in range(MAX_OPTED_OUT):
        c.wait(seconds=1).does("consent_withdrawn", attrs={"channel": f"ch-{n:02d}"})
    assert c.state is not None and len(c.state["opted_out"]) == MAX_OPTED_OUT
    c.wait(seconds=1).does("consent_withdrawn", attrs={"channel": "one-more"})
    assert c.state["opted_out"] == ["all"]
    c.wait(seconds=1).does("consent_withdrawn", attrs={"channel": "x" * (MAX_CHANNEL_CHARS + 1)})
    assert c.state["opted_out"] == ["all"]  # a name no channel can have changes nothing
    c.wait(seconds=1).does("consent_granted", attrs={"channel": "all"})
    assert c.state["opted_out"] == []


def test_a_stream_of_distinct_hostile_touchpoints_leaves_a_bounded_state() -> None:
    """Many touchpoints, every field as large as the input limits allow: the stored state
    stays within a fixed size (here far under the 512 KiB worker limit)."""
    c = Customer(ENGINE)
    big = {f"{k:03d}" + "k" * 250: "v" * 4096 for k in range(64)}
    for n in range(300):
        c.wait(seconds=1).does(
            "cart_add" if n % 2 else "consent_withdrawn",
            channel=f"{n:03d}" + "c" * 250,
            event_id=f"{n:03d}" + "e" * 250,
            attrs={**big, "channel": f"{n:03d}" + "o" * 250, "topic": "t" * 256},
        )
    assert c.state is not None
    assert len(encode_state(c.state)) < 256 * 1024
