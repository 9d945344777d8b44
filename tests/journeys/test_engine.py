"""Engine semantics, one rule at a time, with small inline journeys."""

from __future__ import annotations

from pathlib import Path

import pytest

from journeys.engine import Engine, Tick, action_id, assign_variant
from journeys.serde import decode_state, encode_state
from tests.journeys.harness import T0, Customer, catalog_from, ms

POLICIES_NONE = """
apiVersion: percorso/v1
kind: Policies
"""

CART = """
apiVersion: percorso/v1
kind: Journey
id: cart
priority: 50
entry: {when: {type: cart_add}, reentry: %(reentry)s}
exit: {goal: {type: purchase}, events: [{type: cart_cleared}], inactivity: 7d}
stages:
  - {id: carted, when: {type: cart_add}}
  - {id: checkout, when: {type: checkout_started}, from: [carted]}
  - {id: big_spender, when: {type: cart_add, attributes: {amount: {gte: 500}}}}
  - {id: abandoned}
windows:
  - id: reminder
    start: {type: cart_add}
    wait_for: {type: [checkout_started, purchase]}
    within: 30m
    on_timeout:
      goto: abandoned
      action: {name: remind, channels: [email, push, sms], expires_after: 1h,
               parameters: {sku: "${attributes.sku}", stage: "${stage}"}}
"""


def engine(tmp_path: Path, *docs: str) -> Engine:
    return Engine(catalog_from(tmp_path, *docs))


def cart(
    tmp_path: Path, policies: str = POLICIES_NONE, reentry: str = "always", expires: str = "1h"
) -> Engine:
    doc = (CART % {"reentry": reentry}).replace("expires_after: 1h", f"expires_after: {expires}")
    return engine(tmp_path, doc, policies)


class TestStagesAndTransitions:
    def test_transition_records_carry_the_contract_fields(self, tmp_path: Path) -> None:
        c = Customer(cart(tmp_path))
        c.does("cart_add", event_id="e1")
        c.wait(minutes=7).does("checkout_started", event_id="e2")
        entry, move = c.transitions
        assert entry == {
            "customer_id": "cust-1",
            "journey_id": "cart",
            "from_stage": None,
            "to_stage": "carted",
            "at": ms(T0),
            "cause": "e1",
            "reason": "event",
            "time_in_stage_ms": None,
            "instance": 1,
            "score": None,
            "touchpoints": 0,
            "channel_switches": 0,
        }
        assert move["from_stage"] == "carted" and move["to_stage"] == "checkout"
        assert move["time_in_stage_ms"] == 7 * 60_000 and move["cause"] == "e2"

    def test_attribute_predicates_and_from_rules(self, tmp_path: Path) -> None:
        c = Customer(cart(tmp_path))
        c.does("cart_add", amount="20")
        c.wait(minutes=1).does("cart_add", amount="900")
        assert c.stage("cart") == "big_spender"
        c.wait(minutes=1).does("checkout_started")  # only from carted
        assert c.stage("cart") == "big_spender"

    def test_one_stage_per_journey_and_no_self_transitions(self, tmp_path: Path) -> None:
        c = Customer(cart(tmp_path))
        c.does("cart_add")
        c.wait(minutes=1).does("cart_add")
        assert c.stages("cart") == ["carted"]

    def test_channel_switches_and_touchpoints_are_counted(self, tmp_path: Path) -> None:
        c = Customer(cart(tmp_path))
        c.does("cart_add", channel="web")
        c.wait(minutes=1).does("page_view", channel="app")
        c.wait(minutes=1).does("purchase", channel="store")
        done = c.transitions[-1]
        assert (done["to_stage"], done["touchpoints"], done["channel_switches"]) == (
            "completed",
            3,
            2,
        )


class TestEntryExitReentry:
    def test_reentry_never(self, tmp_path: Path) -> None:
        c = Customer(cart(tmp_path, reentry="never"))
        c.does("cart_add")
        c.wait(minutes=1).does("purchase")
        c.wait(minutes=1).does("cart_add")
        assert c.stages("cart") == ["carted", "completed"]

    def test_reentry_always_counts_instances(self, tmp_path: Path) -> None:
        c = Customer(cart(tmp_path, reentry="always"))
        c.does("cart_add")
        c.wait(minutes=1).does("purchase")
        c.wait(minutes=1).does("cart_add")
        assert c.stages("cart") == ["carted", "completed", "carted"]
        assert c.transitions[-1]["instance"] == 2

    def test_reentry_after_a_duration(self, tmp_path: Path) -> None:
        c = Customer(cart(tmp_path, reentry="{after: 1d}"))
        c.does("cart_add")
        c.wait(minutes=1).does("purchase")
        c.wait(hours=23).does("cart_add")
        assert c.stages("cart") == ["carted", "completed"]
        c.wait(hours=2).does("cart_add")
        assert c.stages("cart") == ["carted", "completed", "carted"]

    def test_exit_event_and_inactivity(self, tmp_path: Path) -> None:
        c = Customer(cart(tmp_path))
        c.does("cart_add")
        c.wait(minutes=5).does("cart_cleared")
        assert c.transitions[-1]["to_stage"] == "exited"
        assert c.transitions[-1]["reason"] == "exit"
        c.wait(minutes=1).does("cart_add")
        c.wait(minutes=10).does("checkout_started")
        c.wait(days=8).tick()
        last = c.transitions[-1]
        assert (last["to_stage"], last["reason"]) == ("inactive", "inactivity")
        assert last["at"] == ms(T0) + 16 * 60_000 + 7 * 86_400_000
        assert c.stage("cart") is None and 0 <= last["score"] < 1

    def test_exit_cancels_windows(self, tmp_path: Path) -> None:
        c = Customer(cart(tmp_path))
        c.does("cart_add")
        step = c.wait(minutes=5).does("cart_cleared")
        assert step.windows_cancelled == 1
        c.wait(hours=1).tick()
        assert c.actions == []


class TestWindows:
    def test_fires_once_at_the_deadline_and_ticks_are_idempotent(self, tmp_path: Path) -> None:
        c = Customer(cart(tmp_path))
        armed = c.does("cart_add", sku="S1", event_id="e1")
        assert armed.windows_armed == 1 and armed.next_due == ms(T0) + 30 * 60_000
        c.wait(minutes=30).tick()
        c.tick()
        c.wait(hours=5).tick()
        assert [a["action"] for a in c.actions] == ["remind"]
        action = c.actions[0]
        assert action["trigger"] == "cart/reminder/e1" and action["trigger_kind"] == "window"
        assert action["action_id"] == action_id(
            "cart", "window:reminder:timeout", "cart/reminder/e1"
        )
        assert action["parameters"] == {"sku": "S1", "stage": "abandoned"}
        assert action["created_at"] == ms(T0) + 30 * 60_000  # offline: decision time

    def test_a_touchpoint_after_the_deadline_fires_the_window_first(self, tmp_path: Path) -> None:
        c = Customer(cart(tmp_path))
        c.does("cart_add")
        step = c.wait(minutes=45).does("purchase")
        assert [a["action"] for a in step.actions] == ["remind"]
        assert [t["to_stage"] for t in step.transitions] == ["abandoned", "completed"]

    def test_a_late_awaited_event_does_not_undo_a_fired_window(self, tmp_path: Path) -> None:
        c = Customer(cart(tmp_path))
        c.does("cart_add")
        c.wait(minutes=31).tick()
        c.wait(minutes=1).does("checkout_started")
        assert [a["action"] for a in c.actions] == ["remind"]

    def test_correlated_windows_are_keyed_and_bounded(self, tmp_path: Path) -> None:
        doc = """
apiVersion: percorso/v1
kind: Journey
id: topic
entry: {when: {type: page_view}, reentry: always}
stages: [{id: browsing, when: {type: page_view}}]
windows:
  - id: call
    start: {type: page_view}
    wait_for: {type: call_started}
    correlate: [topic]
    within: 1d
    on_match: {action: {name: route, channel: agent, category: service}}
"""
        c = Customer(engine(tmp_path, doc))
        c.does("page_view")  # no topic: cannot arm a correlated window
        for n in range(20):
            c.wait(minutes=1).does("page_view", topic=f"t{n}")
        assert c.state is not None
        assert len(c.state["journeys"]["topic"]["windows"]) == 16
        c.wait(minutes=1).does("call_started", channel="ivr", topic="t0")  # dropped: oldest
        c.wait(minutes=1).does("call_started", channel="ivr", topic="t19")
        c.wait(minutes=1).does("call_started", channel="ivr", topic="t19")  # already matched
        assert [a["trigger"] for a in c.actions] == [
            f"topic/call:t19/{c.state['recent'][3]['event_id']}"
        ]


class TestPolicies:
    def test_caps_per_channel_fall_back_to_another_channel(self, tmp_path: Path) -> None:
        policies = (
            POLICIES_NONE
            + """
frequency_caps:
  - {channel: email, max: 1, per: 1d}
  - {channel: any, max: 2, per: 1d}
"""
        )
        c = Customer(cart(tmp_path, policies))
        c.does("email_opened", channel="email")
        for _ in range(3):
            c.wait(minutes=1).does("cart_add")
            c.wait(minutes=31).tick()
        assert [a["channel"] for a in c.actions] == ["email", "push"]
        assert c.suppressed() == [("remind", "cap")]
        c.wait(days=1).does("cart_add")
        c.wait(minutes=31).tick()
        assert [a["channel"] for a in c.actions] == ["email", "push", "email"]

    def test_quiet_hours_defer_in_the_customers_time_zone(self, tmp_path: Path) -> None:
        policies = (
            POLICIES_NONE
            + """
quiet_hours: {start: "21:00", end: "08:00", channels: [push], default_timezone: UTC}
"""
        )
        c = Customer(cart(tmp_path, policies, expires="1d"), start=T0.replace(hour=19, minute=50))
        c.does("push_opened", channel="push", timezone="Europe/Rome")  # 20:50 in Rome
        c.wait(minutes=1).does("cart_add")  # reminder due 21:21 Rome: quiet
        step = c.wait(minutes=30).tick()
        assert step.actions == [] and step.deferred == 1
        release = ms(T0.replace(day=3, hour=7, minute=0))  # 08:00 in Rome, next morning
        assert step.next_due == release
        c.wait(hours=11).tick()
        assert [(a["action"], a["channel"], a["not_before"]) for a in c.actions] == [
            ("remind", "push", release)
        ]

    def test_a_deferred_action_past_its_expiry_is_suppressed(self, tmp_path: Path) -> None:
        policies = (
            POLICIES_NONE
            + """
quiet_hours: {start: "21:00", end: "08:00", channels: [email, push, sms]}
"""
        )
        c = Customer(cart(tmp_path, policies), start=T0.replace(hour=22))
        c.does("cart_add")
        c.wait(hours=12).tick()
        assert c.actions == [] and c.suppressed() == [("remind", "expired")]

    def test_consent_withdrawn_during_a_deferral_stops_the_release(self, tmp_path: Path) -> None:
        policies = (
            POLICIES_NONE
            + """
quiet_hours: {start: "21:00", end: "08:00", channels: [email, push, sms]}
"""
        )
        c = Customer(cart(tmp_path, policies, expires="1d"), start=T0.replace(hour=22))
        c.does("cart_add")
        c.wait(hours=1).tick()
        c.wait(hours=1).does("consent_withdrawn", channel="email", attrs={"channel": "all"})
        c.wait(hours=12).tick()
        assert c.actions == [] and c.suppressed() == [("remind", "consent")]

    def test_consent_per_channel_and_regrant(self, tmp_path: Path) -> None:
        c = Customer(cart(tmp_path))
        c.does("consent_withdrawn", channel="email")  # no attribute: the touchpoint's channel
        c.does("consent_withdrawn", channel="web", attrs={"channel": "push"})
        c.wait(minutes=1).does("cart_add")
        c.wait(minutes=31).tick()
        assert [a["channel"] for a in c.actions] == ["sms"]
        c.does("consent_withdrawn", channel="sms")
        c.wait(minutes=1).does("cart_add")
        c.wait(minutes=31).tick()
        assert c.suppressed() == [("remind", "consent")]
        c.does("consent_granted", channel="web", attrs={"channel": "all"})
        c.wait(minutes=1).does("cart_add")
        c.wait(minutes=31).tick()
        assert [a["channel"] for a in c.actions] == ["sms", "email"]

    def test_suppression_lapses_after_its_max_duration(self, tmp_path: Path) -> None:
        policies = (
            POLICIES_NONE
            + """
suppressions:
  - {id: complaint, start: {type: complaint_opened}, end: {type: complaint_resolved},
     max_duration: 2d}
"""
        )
        c = Customer(cart(tmp_path, policies))
        c.does("complaint_opened", channel="call_center")
        c.wait(minutes=1).does("cart_add")
        c.wait(minutes=31).tick()
        assert c.suppressed() == [("remind", "suppression")]
        c.wait(days=2).does("cart_add")
        c.wait(minutes=31).tick()
        assert [a["action"] for a in c.actions] == ["remind"]

    def test_arbitration_keeps_the_highest_priority_marketing_action(self, tmp_path: Path) -> None:
        other = """
apiVersion: percorso/v1
kind: Journey
id: %(id)s
priority: %(priority)d
entry: {when: {type: page_view}, reentry: always}
stages: [{id: seen, when: {type: page_view}}]
actions:
  - {id: a, when: {type: page_view}, action: {name: promo_%(id)s, channel: email}}
  - {id: b, when: {type: page_view}, action: {name: help_%(id)s, channel: agent,
                                                category: service}}
"""
        e = engine(
            tmp_path,
            other % {"id": "low", "priority": 10},
            other % {"id": "high", "priority": 90},
            POLICIES_NONE,
        )
        c = Customer(e)
        c.does("page_view")
        assert sorted(c.action_names()) == ["help_high", "help_low", "promo_high"]
        assert c.suppressed() == [("promo_low", "arbitration")]

    def test_channel_choice_follows_engagement_then_listed_order(self, tmp_path: Path) -> None:
        e = cart(tmp_path)
        fresh = Customer(e, "fresh")
        fresh.does("cart_add")
        fresh.wait(minutes=31).tick()
        texter = Customer(e, "texter")
        for _ in range(3):
            texter.does("sms_clicked", channel="sms")
        texter.does("push_opened", channel="push")
        texter.does("cart_add")
        texter.wait(minutes=31).tick()
        assert fresh.actions[0]["channel"] == "email" and texter.actions[0]["channel"] == "sms"

    def test_experiments_split_deterministically_with_a_holdout(self, tmp_path: Path) -> None:
        doc = (
            (CART % {"reentry": "always"})
            + """
experiment: {id: exp1, holdout: 0.2, variants: {a: 1, b: 1}}
"""
        )
        e = engine(tmp_path, doc, POLICIES_NONE)
        journey = e.catalog.journey("cart")
        groups = [assign_variant(journey, f"c{n}") for n in range(4000)]
        assert groups == [assign_variant(journey, f"c{n}") for n in range(4000)]
        share = {g: groups.count(g) / len(groups) for g in ("holdout", "a", "b")}
        assert 0.17 < share["holdout"] < 0.23 and 0.37 < share["a"] < 0.43
        held = next(n for n, g in enumerate(groups) if g == "holdout")
        c = Customer(e, f"c{held}")
        c.does("cart_add")
        c.wait(minutes=31).tick()
        assert c.actions == [] and c.suppressed() == [("remind", "holdout")]
        assert c.stages("cart") == ["carted", "abandoned"]  # measured, not contacted
        treated = next(n for n, g in enumerate(groups) if g == "b")
        t = Customer(e, f"c{treated}")
        t.does("cart_add")
        t.wait(minutes=31).tick()
        assert t.actions[0]["variant"] == "b"


class TestEventTime:
    def test_duplicates_are_processed_once(self, tmp_path: Path) -> None:
        c = Customer(cart(tmp_path))
        first = c.does("cart_add", event_id="dup")
        again = c.wait(minutes=1).does("cart_add", event_id="dup")
        assert first.outcome == "processed" and again.outcome == "duplicate"
        assert again.transitions == [] and again.windows_armed == 0

    def test_late_events_change_nothing(self, tmp_path: Path) -> None:
        c = Customer(cart(tmp_path))
        c.wait(hours=3).does("page_view")
        c.wait(hours=-2, minutes=-1).does("cart_add")  # 2h01 older: beyond the 1 h lateness
        assert c.steps[-1].outcome == "late" and c.stage("cart") is None
        c.wait(hours=1, minutes=30).does("cart_add")  # 31 min late: within the lateness
        assert c.steps[-1].outcome == "processed" and c.stage("cart") == "carted"

    def test_context_is_bounded_newest_first(self, tmp_path: Path) -> None:
        c = Customer(cart(tmp_path))
        for n in range(15):
            c.wait(minutes=1).does("page_view", n=str(n), **{f"k{i}": "x" * 400 for i in range(20)})
        c.does("cart_add")
        c.wait(minutes=31).tick()
        context = c.actions[0]["context"]
        assert len(context["recent"]) == 10 and context["recent"][0]["type"] == "cart_add"
        assert all(len(r["attributes"]) <= 16 for r in context["recent"])
        assert all(len(v) <= 256 for r in context["recent"] for v in r["attributes"].values())
        assert context["stages"] == {"cart": "abandoned"}


class TestStateCodec:
    def test_state_round_trips_through_avro(self, tmp_path: Path) -> None:
        policies = (
            POLICIES_NONE
            + """
quiet_hours: {start: "00:00", end: "23:59", channels: [email, push, sms]}
suppressions: [{id: s, start: {type: complaint_opened}, end: {type: complaint_resolved}}]
"""
        )
        c = Customer(cart(tmp_path, policies, expires="2d"))
        c.does("complaint_opened", timezone="Asia/Tokyo")
        c.does("complaint_resolved")
        c.does("consent_withdrawn", channel="sms")
        c.wait(minutes=1).does("cart_add", sku="S")
        c.wait(minutes=31).tick()
        assert c.state is not None and c.state["pending"] and c.state["journeys"]
        data = encode_state(c.state)
        assert data[0] == 0 and decode_state(data) == c.state
        assert len(data) < 2000

    def test_replaying_from_decoded_state_equals_uninterrupted(self, tmp_path: Path) -> None:
        e = cart(tmp_path)
        straight = Customer(e, "x")
        straight.does("cart_add", event_id="1")
        straight.wait(minutes=40).tick()
        resumed = Customer(e, "x")
        resumed.does("cart_add", event_id="1")
        assert resumed.state is not None
        resumed.state = decode_state(encode_state(resumed.state))
        resumed.wait(minutes=40).tick()
        assert straight.actions == resumed.actions


def test_tick_for_an_unknown_customer_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="known customer"):
        cart(tmp_path).advance(None, Tick(0))
