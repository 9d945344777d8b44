"""The shipped journeys, given/when/then on a virtual clock."""

from __future__ import annotations

import pytest

from journeys.engine import Engine
from journeys.loader import load_catalog
from tests.journeys.harness import CATALOG_DIR, Customer, ms

ENGINE = Engine(load_catalog(CATALOG_DIR))


@pytest.fixture
def customer() -> Customer:
    return Customer(ENGINE)


def test_catalog_ships_the_five_journeys() -> None:
    assert [j.id for j in ENGINE.journeys] == [
        "cart_recovery",
        "closed_loop_feedback",
        "digital_to_voice",
        "lifecycle",
        "onboarding",
    ]


class TestLifecycle:
    def test_stages_follow_the_customer(self, customer: Customer) -> None:
        customer.does("page_view")
        customer.wait(hours=1).does("cart_add", sku="S1")
        customer.wait(minutes=5).does("purchase", sku="S1")
        customer.wait(days=2).does("app_login", channel="app")
        customer.wait(days=1).does("survey_response", channel="email", survey="nps", score="10")
        assert customer.stages("lifecycle") == [
            "awareness",
            "consideration",
            "purchase",
            "post_purchase",
            "advocacy",
        ]

    def test_a_first_cart_enters_in_consideration(self, customer: Customer) -> None:
        customer.does("cart_add")  # `from: [awareness]` restricts moves, not the entry stage
        customer.wait(minutes=5).does("page_view")
        assert customer.stages("lifecycle") == ["consideration"]

    def test_a_first_purchase_skips_straight_to_purchase(self, customer: Customer) -> None:
        customer.does("purchase", channel="store")
        assert customer.stages("lifecycle") == ["purchase"]

    def test_two_weeks_of_silence_raise_re_engagement_once(self, customer: Customer) -> None:
        customer.does("page_view", channel="web")
        customer.wait(days=13, hours=23).tick()
        assert "send_reengagement" not in customer.action_names()
        customer.wait(hours=2).tick()
        customer.wait(days=1).tick()
        assert customer.action_names("lifecycle") == ["send_reengagement"]
        action = customer.actions[-1]
        assert action["parameters"] == {"template": "reengage_awareness"}
        assert action["trigger_kind"] == "window"

    def test_any_touchpoint_rearms_inactivity(self, customer: Customer) -> None:
        customer.does("page_view")
        for _ in range(3):
            customer.wait(days=10).does("page_view")
        assert "send_reengagement" not in customer.action_names()


class TestCartRecovery:
    def test_abandoned_cart_gets_a_reminder_then_an_incentive(self, customer: Customer) -> None:
        customer.does("email_opened", channel="email")
        customer.wait(minutes=1).does("cart_add", sku="SKU-1")
        customer.wait(minutes=29).tick()
        assert customer.action_names("cart_recovery") == []
        customer.wait(minutes=1).tick()
        assert customer.action_names("cart_recovery") == ["send_cart_reminder"]
        reminder = customer.actions[-1]
        assert reminder["channel"] == "email"  # the customer's most engaged channel
        assert reminder["parameters"] == {"template": "cart_reminder", "sku": "SKU-1"}
        assert reminder["stage"] == "abandoned"
        assert reminder["expires_at"] == ms(customer.clock) + 86_400_000
        assert customer.stages("cart_recovery") == ["carted", "abandoned"]
        customer.wait(days=1).tick()
        assert customer.action_names("cart_recovery") == [
            "send_cart_reminder",
            "send_cart_incentive",
        ]
        assert customer.actions[-1]["parameters"]["discount"] == "10%"

    def test_purchase_inside_the_window_cancels_everything(self, customer: Customer) -> None:
        customer.does("cart_add", sku="SKU-1")
        customer.wait(minutes=10).does("purchase", sku="SKU-1")
        customer.wait(days=3).tick()
        assert customer.action_names("cart_recovery") == []
        assert customer.stages("cart_recovery") == ["carted", "completed"]
        done = next(t for t in customer.transitions if t["to_stage"] == "completed")
        assert done["reason"] == "goal" and 0 < done["score"] <= 1

    def test_purchase_after_the_reminder_cancels_the_incentive(self, customer: Customer) -> None:
        customer.does("cart_add", sku="SKU-1")
        customer.wait(minutes=45).does("purchase", sku="SKU-1")
        customer.wait(days=3).tick()
        assert customer.action_names("cart_recovery") == ["send_cart_reminder"]

    def test_an_awaited_event_exactly_at_the_deadline_still_cancels(
        self, customer: Customer
    ) -> None:
        customer.does("cart_add")
        customer.wait(minutes=30).does("checkout_started")  # cancels, but is not the goal
        customer.wait(minutes=1).tick()
        assert customer.action_names("cart_recovery") == []
        assert customer.stage("cart_recovery") == "checkout"

    def test_a_new_cart_re_arms_the_reminder(self, customer: Customer) -> None:
        customer.does("cart_add", sku="A")
        customer.wait(minutes=20).does("cart_add", sku="B")
        customer.wait(minutes=20).tick()
        assert customer.action_names("cart_recovery") == []
        customer.wait(minutes=10).tick()
        assert customer.action_names("cart_recovery") == ["send_cart_reminder"]
        assert customer.actions[-1]["parameters"]["sku"] == "B"

    def test_checkout_without_purchase_gets_help(self, customer: Customer) -> None:
        customer.does("cart_add")
        customer.wait(minutes=5).does("checkout_started")
        customer.wait(minutes=31).tick()
        assert customer.action_names("cart_recovery") == ["send_checkout_help"]


class TestDigitalToVoice:
    def test_a_call_on_the_same_topic_goes_to_a_human_with_context(
        self, customer: Customer
    ) -> None:
        customer.does("page_view", channel="web", topic="billing", page="/help/billing")
        customer.wait(hours=5).does("call_started", channel="call_center", topic="billing")
        assert customer.action_names("digital_to_voice") == ["route_to_agent"]
        action = customer.actions[-1]
        assert action["channel"] == "agent"
        assert action["parameters"]["skip_bot"] == "true"
        assert action["parameters"]["topic"] == "billing"
        web = [r for r in action["context"]["recent"] if r["channel"] == "web"]
        assert web and web[0]["attributes"]["page"] == "/help/billing"
        assert action["context"]["stages"]["digital_to_voice"] == "escalated"

    def test_a_call_on_another_topic_is_not_escalated(self, customer: Customer) -> None:
        customer.does("chat_started", channel="chat", topic="billing")
        customer.wait(hours=1).does("call_started", channel="call_center", topic="delivery")
        assert customer.action_names("digital_to_voice") == []

    def test_each_topic_has_its_own_window(self, customer: Customer) -> None:
        customer.does("page_view", channel="web", topic="billing")
        customer.wait(hours=1).does("page_view", channel="app", topic="returns")
        customer.wait(hours=1).does("call_started", channel="ivr", topic="billing")
        assert customer.action_names("digital_to_voice") == ["route_to_agent"]

    def test_a_call_after_24_hours_is_not_escalated(self, customer: Customer) -> None:
        customer.does("page_view", channel="web", topic="billing")
        customer.wait(hours=24, minutes=1).does(
            "call_started", channel="call_center", topic="billing"
        )
        assert customer.action_names("digital_to_voice") == []


class TestClosedLoopFeedback:
    def test_detractor_gets_a_callback_and_no_marketing_until_resolved(
        self, customer: Customer
    ) -> None:
        customer.does("survey_response", channel="email", survey="nps", score="4")
        assert customer.action_names() == ["open_callback_ticket"]
        assert customer.actions[-1]["parameters"] == {
            "reason": "detractor",
            "score": "4",
            "survey": "nps",
        }
        customer.wait(hours=1).does("cart_add")
        customer.wait(hours=1).tick()
        assert ("send_cart_reminder", "suppression") in customer.suppressed()
        customer.wait(days=1).does("complaint_resolved", channel="call_center")
        assert customer.stages("closed_loop_feedback")[-1] == "completed"
        customer.wait(minutes=1).does("cart_add")
        customer.wait(minutes=31).tick()
        assert customer.action_names()[-1] == "send_cart_reminder"

    def test_promoter_is_invited_to_review(self, customer: Customer) -> None:
        customer.does("survey_response", channel="email", survey="nps", score="9")
        assert customer.action_names() == ["send_review_invitation"]
        assert customer.stage("closed_loop_feedback") == "promoter"

    def test_passive_gets_nothing(self, customer: Customer) -> None:
        customer.does("survey_response", channel="email", survey="nps", score="7")
        assert customer.action_names() == []
        assert customer.stage("closed_loop_feedback") == "passive"

    def test_satisfaction_feeds_the_journey_score(self, customer: Customer) -> None:
        customer.does("survey_response", channel="email", survey="nps", score="2")
        customer.wait(hours=2).does("ticket_closed", channel="call_center")
        low = customer.transitions[-1]
        other = Customer(ENGINE, "cust-2")
        other.does("survey_response", channel="email", survey="nps", score="6")
        other.wait(hours=2).does("ticket_closed", channel="call_center")
        assert low["reason"] == "goal" and low["score"] < other.transitions[-1]["score"]


class TestOnboarding:
    def test_no_activation_gets_a_nudge_then_a_human(self, customer: Customer) -> None:
        customer.does("purchase", channel="web")
        customer.wait(days=3).tick()
        assert customer.action_names("onboarding") == ["send_onboarding_nudge"]
        customer.wait(days=2).tick()
        assert customer.action_names("onboarding") == [
            "send_onboarding_nudge",
            "schedule_onboarding_call",
        ]
        assert customer.actions[-1]["channel"] == "agent"
        assert customer.stages("onboarding") == ["purchased", "stalled", "assisted"]

    def test_activation_completes_onboarding(self, customer: Customer) -> None:
        customer.does("purchase")
        customer.wait(days=1).does("app_login", channel="app")
        customer.wait(days=10).tick()
        assert customer.action_names("onboarding") == []
        assert customer.stages("onboarding") == ["purchased", "completed"]

    def test_only_the_first_purchase_starts_onboarding(self, customer: Customer) -> None:
        customer.does("purchase")
        customer.wait(days=1).does("product_activated", channel="app")
        customer.wait(days=30).does("purchase")
        customer.wait(days=5).tick()
        assert customer.action_names("onboarding") == []
        assert customer.stages("onboarding") == ["purchased", "completed"]

    def test_one_tick_after_a_long_gap_catches_up_the_chain(self, customer: Customer) -> None:
        customer.does("purchase")
        customer.wait(days=20).tick()
        assert customer.action_names("onboarding") == [
            "send_onboarding_nudge",
            "schedule_onboarding_call",
        ]
