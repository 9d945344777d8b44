"""Compiled conditions and dispatch by (channel, type) decide exactly what the interpreted
conditions decide (``journeys.conditions.matches`` is the reference)."""

from __future__ import annotations

import uuid
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from journeys.conditions import NEVER, holds, matches, residual
from journeys.dispatch import Dispatch
from journeys.engine import ACTION_ID_NAMESPACE, Engine, Tick, action_id
from journeys.loader import load_catalog
from journeys.model import Condition, Predicate
from journeys.state import CustomerState, new_customer
from percorso.synthetic import SyntheticTraffic, disordered
from tests.journeys.harness import CATALOG_DIR, Customer, catalog_from

TYPES = ["page_view", "cart_add", "purchase", "survey_response"]
CHANNELS = ["web", "app", "email"]
SHIPPED = Engine(load_catalog(CATALOG_DIR))
VALUES = ["", "0", "3", "6", "6.5", "9", "10", "-1", "x", "nan", "inf", "1e3", "billing"]

predicates = st.one_of(
    st.builds(
        Predicate,
        attribute=st.sampled_from(["score", "topic", "missing"]),
        op=st.sampled_from(["eq", "ne"]),
        value=st.sampled_from(VALUES),
    ),
    st.builds(
        Predicate,
        attribute=st.sampled_from(["score", "missing"]),
        op=st.just("exists"),
        value=st.booleans(),
    ),
    st.builds(
        Predicate,
        attribute=st.sampled_from(["score", "topic"]),
        op=st.sampled_from(["gt", "gte", "lt", "lte"]),
        value=st.sampled_from([0.0, 6.0, 6.5, 9.0, -1.0]),
    ),
    st.builds(
        Predicate,
        attribute=st.sampled_from(["score", "topic"]),
        op=st.sampled_from(["in", "not_in"]),
        value=st.lists(st.sampled_from(VALUES), max_size=3).map(tuple),
    ),
)
conditions = st.builds(
    Condition,
    types=st.frozensets(st.sampled_from(TYPES), max_size=2),
    channels=st.frozensets(st.sampled_from(CHANNELS), max_size=2),
    predicates=st.lists(predicates, max_size=3).map(tuple),
)
touchpoints = st.fixed_dictionaries(
    {
        "type": st.sampled_from(TYPES),
        "channel": st.sampled_from(CHANNELS),
        "attributes": st.dictionaries(
            st.sampled_from(["score", "topic", "other"]), st.sampled_from(VALUES), max_size=3
        ),
    }
)


@given(conditions, touchpoints)
def test_compiled_condition_agrees_with_matches(c: Condition, tp: dict) -> None:
    test = residual(c, tp["channel"], tp["type"])
    assert holds(test, tp["attributes"]) == matches(c, tp)


def test_a_condition_without_type_or_channel_is_a_wildcard() -> None:
    any_touchpoint = Condition()
    by_attribute = Condition(predicates=(Predicate("topic", "exists", True),))
    assert residual(any_touchpoint, "store", "never_seen_before") is None
    assert residual(by_attribute, "store", "never_seen_before") not in (None, NEVER)
    assert residual(Condition(types=frozenset({"purchase"})), "web", "cart_add") is NEVER
    assert residual(Condition(channels=frozenset({"app"})), "web", "cart_add") is NEVER


def test_plans_name_only_the_journeys_a_touchpoint_can_affect(tmp_path: Path) -> None:
    dispatch = Dispatch(SHIPPED.catalog)
    ids = lambda plan: [jp.journey.id for jp in plan.journeys]  # noqa: E731
    # lifecycle reacts to every touchpoint, of any type, even one no journey names
    assert ids(dispatch.plan("store", "invented_type")) == ["lifecycle"]
    assert ids(dispatch.plan("web", "purchase")) == [
        "cart_recovery",
        "digital_to_voice",  # its entry needs channel web/app/chat and a topic attribute
        "lifecycle",
        "onboarding",
    ]
    assert ids(dispatch.plan("email", "survey_response")) == ["closed_loop_feedback", "lifecycle"]
    plan = dispatch.plan("email", "survey_response")
    assert [s.id for s, _end, _start in plan.suppressions] == ["open_complaint"]
    assert dispatch.plan("email", "page_view").suppressions == ()
    assert dispatch.plan("email", "consent_withdrawn").consent_withdraw is None
    # the same answer each time, built once
    assert dispatch.plan("web", "purchase") is dispatch.plan("web", "purchase")


def test_an_attribute_only_rule_reacts_to_any_type(tmp_path: Path) -> None:
    engine = Engine(
        catalog_from(
            tmp_path,
            """
apiVersion: percorso/v1
kind: Journey
id: vip
entry: {when: {attributes: {tier: {eq: gold}}}, reentry: never}
stages:
  - {id: gold}
  - {id: lost, when: {attributes: {tier: {ne: gold}}}}
""",
            "apiVersion: percorso/v1\nkind: Policies\nevent_types: [odd_event]\n",
        )
    )
    c = Customer(engine)
    c.does("odd_event", channel="store", tier="gold")
    c.wait(minutes=1).does("page_view", channel="web", tier="silver")
    assert [(t["from_stage"], t["to_stage"]) for t in c.transitions] == [
        (None, "gold"),
        ("gold", "lost"),
    ]


def test_active_journeys_count_every_touchpoint_as_activity(tmp_path: Path) -> None:
    engine = Engine(
        catalog_from(
            tmp_path,
            """
apiVersion: percorso/v1
kind: Journey
id: cart
entry: {when: {type: cart_add}, reentry: never}
exit: {inactivity: 1h}
stages: [{id: carted}]
""",
            "apiVersion: percorso/v1\nkind: Policies\n",
        )
    )
    state = new_customer("c")
    t = 1_800_000_000_000
    tp = {"customer_id": "c", "channel": "web", "attributes": {}, "source": None}
    engine.advance(state, {**tp, "event_id": "1", "type": "cart_add", "occurred_at": t})
    step = engine.advance(state, {**tp, "event_id": "2", "type": "page_view", "occurred_at": t + 9})
    js = state["journeys"]["cart"]
    assert (js["touchpoints"], js["last_activity"]) == (2, t + 9)
    assert step.next_due == t + 9 + 3_600_000


def test_next_due_gathered_during_a_step_is_the_scan_of_the_whole_state() -> None:
    """A touchpoint's step works out next_due journey by journey as it goes; on synthetic
    traffic with duplicates, late and out-of-order events it equals ``Engine.next_due``."""
    start = 1_767_225_600_000
    traffic = SyntheticTraffic(200, seed=3, start_ms=start, rate=6000 / (3 * 86_400))
    states: dict[str, CustomerState] = {}
    outcomes: dict[str, int] = {}
    fired = 0
    for tp in disordered(traffic.take(6000), seed=3):
        step = SHIPPED.advance(states.get(tp["customer_id"]), tp)
        states[tp["customer_id"]] = step.state
        assert step.next_due == SHIPPED.next_due(step.state), tp
        outcomes[step.outcome] = outcomes.get(step.outcome, 0) + 1
        fired += step.windows_fired
    for state in states.values():
        step = SHIPPED.advance(state, Tick(start + 30 * 86_400_000))
        assert step.next_due == SHIPPED.next_due(step.state)
    # the traffic reaches every path: duplicates, late events, windows firing before an event
    assert outcomes.get("duplicate", 0) > 0 and outcomes.get("late", 0) > 0 and fired > 0


@given(st.text(), st.text(), st.text())
def test_action_ids_are_the_uuid5_of_journey_rule_and_trigger(j: str, r: str, t: str) -> None:
    expected = str(uuid.uuid5(ACTION_ID_NAMESPACE, f"{j}|{r}|{t}"))
    assert action_id(j, r, t) == expected


@given(
    st.lists(
        st.tuples(st.integers(0, 10 * 86_400_000), st.sampled_from(["email", "sms", "push"])),
        max_size=12,
    ),
    st.integers(0, 10 * 86_400_000),
)
def test_the_one_pass_cap_check_agrees_with_the_per_channel_one(
    sent: list[tuple[int, str]], at: int
) -> None:
    engine = SHIPPED
    state = new_customer("c")
    state["sent"] = [{"at": a, "channel": ch} for a, ch in sorted(sent)]
    capped = engine._capped(state, at)
    for channel in ("email", "sms", "push", "agent"):
        closed = "any" in capped or channel in capped
        assert closed == (not engine._under_caps(state, channel, at))


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.lists(
                st.sampled_from(
                    [
                        "x",
                        "${",
                        "}",
                        "$",
                        "${stage}",
                        "${journey}",
                        "${variant}",
                        "${nope}",
                        "${attributes.sku}",
                        "${attributes.a-b}",
                        "${attributes.}",
                        "${Stage}",
                        "{",
                        " ",
                    ]
                ),
                max_size=5,
            ).map("".join),
        ),
        max_size=3,
    ),
    st.dictionaries(st.sampled_from(["sku", "a-b"]), st.text(max_size=3)),
    st.sampled_from([None, "carted"]),
    st.sampled_from([None, "B"]),
)
def test_compiled_templates_render_like_the_regex(
    parameters: list[tuple[str, str]], attributes: dict, stage: str | None, variant: str | None
) -> None:
    import re

    from journeys.engine import _TEMPLATE, _render

    values = {"stage": stage or "", "journey": "j", "variant": variant or ""}

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("attributes."):
            return attributes.get(name.split(".", 1)[1], "")
        return values.get(name, "")

    expected = {k: _TEMPLATE.sub(one, v) if "${" in v else v for k, v in parameters}
    assert _render(tuple(parameters), attributes, stage, "j", variant) == expected
