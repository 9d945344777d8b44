"""Properties of the engine over the shipped catalog, on generated multi-customer traffic."""

from __future__ import annotations

import atexit
import random
import re
import shutil
import tempfile
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from journeys.engine import Engine, assign_variant
from journeys.lifecycle import LifecycleEngine
from journeys.loader import load_catalog
from journeys.simulate import replay
from tests.journeys.harness import CATALOG_DIR, T0, ms

ENGINE = Engine(load_catalog(CATALOG_DIR))
POLICIES = ENGINE.policies
MINUTE = 60_000

# (type, channel, attributes) a customer may produce
MOVES = [
    ("page_view", "web", {"topic": "billing"}),
    ("page_view", "app", {"topic": "returns"}),
    ("page_view", "web", {}),
    ("cart_add", "web", {"sku": "A"}),
    ("cart_add", "app", {"sku": "B"}),
    ("checkout_started", "web", {}),
    ("purchase", "web", {"sku": "A"}),
    ("call_started", "call_center", {"topic": "billing"}),
    ("call_started", "ivr", {"topic": "returns"}),
    ("chat_started", "chat", {"topic": "billing"}),
    ("survey_response", "email", {"survey": "nps", "score": "3"}),
    ("survey_response", "email", {"survey": "nps", "score": "10"}),
    ("complaint_resolved", "call_center", {}),
    ("app_login", "app", {}),
    ("email_opened", "email", {}),
    ("push_opened", "push", {}),
    ("sms_clicked", "sms", {}),
    ("consent_withdrawn", "email", {}),
    ("consent_withdrawn", "web", {"channel": "push"}),
    ("consent_granted", "web", {"channel": "all"}),
    ("cart_cleared", "web", {}),
]
GAPS = st.sampled_from([1, 5, 20, 29, 31, 45, 120, 600, 1439, 1500, 4400, 20000])
TIMEZONES = ["Europe/Rome", "America/New_York", "Asia/Tokyo"]

# carts abandoned again and again, on every channel: enough actions to press against the caps
HEAVY = [3, 4, 5, 14, 15, 16, 10, 11]
heavy_moves = st.lists(
    st.tuples(st.sampled_from([31, 35, 61, 200]), st.sampled_from(HEAVY)), min_size=5, max_size=40
)
heavy_traffic = st.lists(heavy_moves, min_size=1, max_size=2)

customer_moves = st.lists(st.tuples(GAPS, st.integers(0, len(MOVES) - 1)), min_size=1, max_size=25)
traffic = st.lists(customer_moves, min_size=1, max_size=3)


def build(plan: list[list[tuple[int, int]]]) -> dict[str, list[dict[str, Any]]]:
    """Per customer, its touchpoints in order (event time strictly increasing)."""
    by_customer = {}
    for n, moves in enumerate(plan):
        cid, t = f"c{n}", ms(T0) + n * 7 * MINUTE
        tz = TIMEZONES[n % len(TIMEZONES)]
        events = []
        for i, (gap, move) in enumerate(moves):
            t += gap * MINUTE
            kind, channel, attributes = MOVES[move]
            events.append(
                {
                    "event_id": f"{cid}-{i}",
                    "customer_id": cid,
                    "channel": channel,
                    "type": kind,
                    "occurred_at": t,
                    "attributes": {**attributes, "timezone": tz},
                    "source": None,
                }
            )
        by_customer[cid] = events
    return by_customer


def interleave(by_customer: dict[str, list[dict[str, Any]]], seed: int) -> list[dict[str, Any]]:
    """A random merge that keeps each customer's own order."""
    rng = random.Random(seed)
    queues = {c: list(e) for c, e in by_customer.items()}
    out = []
    while queues:
        c = rng.choice(sorted(queues))
        out.append(queues[c].pop(0))
        if not queues[c]:
            del queues[c]
    return out


def outputs(
    events: list[dict[str, Any]], until: int | None = None
) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    per_customer: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for step in replay(ENGINE, [dict(e, attributes=dict(e["attributes"])) for e in events], until):
        cid = step.state["customer_id"]
        per_customer[cid] += [("t", t) for t in step.transitions]
        per_customer[cid] += [("a", a) for a in step.actions]
    return dict(per_customer)


def last_time(by_customer: dict[str, list[dict[str, Any]]]) -> int:
    return max(e["occurred_at"] for es in by_customer.values() for e in es)


common = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@common
@given(traffic, st.integers(0, 1000))
def test_deterministic(plan: list[list[tuple[int, int]]], seed: int) -> None:
    events = interleave(build(plan), seed)
    assert outputs(events) == outputs(events)


@common
@given(traffic, st.integers(0, 1000), st.integers(0, 1000))
def test_results_do_not_depend_on_interleaving(
    plan: list[list[tuple[int, int]]], a: int, b: int
) -> None:
    by_customer = build(plan)
    end = last_time(by_customer) + 10 * 24 * 60 * MINUTE
    assert outputs(interleave(by_customer, a), end) == outputs(interleave(by_customer, b), end)


@common
@given(traffic, st.integers(0, 1000), st.lists(st.integers(0, 10_000), max_size=8))
def test_duplicates_change_nothing(
    plan: list[list[tuple[int, int]]], seed: int, picks: list[int]
) -> None:
    by_customer = build(plan)
    end = last_time(by_customer) + 10 * 24 * 60 * MINUTE
    events = interleave(by_customer, seed)
    with_duplicates = list(events)
    for pick in picks:  # re-send an event (a copy) somewhere after the original
        original = events[pick % len(events)]
        position = next(i for i, e in enumerate(with_duplicates) if e is original)
        target = position + 1 + pick % (len(with_duplicates) - position)
        with_duplicates.insert(target, dict(original))
    assert outputs(with_duplicates, end) == outputs(events, end)


def _actions(result: dict[str, list[tuple[str, dict[str, Any]]]]) -> list[dict[str, Any]]:
    return [r for records in result.values() for kind, r in records if kind == "a"]


@common
@given(traffic, st.integers(0, 1000))
def test_windows_fire_at_most_once_and_never_after_the_awaited_event(
    plan: list[list[tuple[int, int]]], seed: int
) -> None:
    by_customer = build(plan)
    result = outputs(interleave(by_customer, seed), last_time(by_customer) + 20 * 1440 * MINUTE)
    ids = [a["action_id"] for a in _actions(result)]
    assert len(ids) == len(set(ids)), "an action (and so a window) fired twice"
    for records in result.values():
        causes = [
            (t["journey_id"], t["cause"], t["to_stage"])
            for kind, t in records
            if kind == "t" and t["reason"] == "window"
        ]
        assert len(causes) == len(set(causes))
    for action in _actions(result):
        if action["action"] != "send_cart_reminder":
            continue
        arming_id = action["trigger"].rsplit("/", 1)[1]
        events = by_customer[action["customer_id"]]
        armed_at = next(e["occurred_at"] for e in events if e["event_id"] == arming_id)
        awaited = [
            e
            for e in events
            if e["type"] in ("checkout_started", "purchase")
            and armed_at < e["occurred_at"] <= armed_at + 30 * MINUTE
        ]
        assert not awaited, f"reminder fired although {awaited[0]['event_id']} arrived in time"


def _send_time(action: dict[str, Any]) -> int:
    return action["not_before"] or action["created_at"]


@common
@given(heavy_traffic | traffic, st.integers(0, 1000))
def test_frequency_caps_are_never_exceeded(plan: list[list[tuple[int, int]]], seed: int) -> None:
    by_customer = build(plan)
    result = outputs(interleave(by_customer, seed), last_time(by_customer) + 20 * 1440 * MINUTE)
    for records in result.values():
        sent = sorted(
            (_send_time(a), a["channel"])
            for kind, a in records
            if kind == "a" and a["category"] != "transactional"
        )
        for cap in POLICIES.frequency_caps:
            times = [t for t, ch in sent if cap.channel in ("any", ch)]
            for i, start in enumerate(times):
                inside = [t for t in times[i:] if t < start + cap.per_ms]
                assert len(inside) <= cap.max, (cap, inside)


@common
@given(heavy_traffic | traffic, st.integers(0, 1000))
def test_quiet_hours_are_never_violated(plan: list[list[tuple[int, int]]], seed: int) -> None:
    by_customer = build(plan)
    result = outputs(interleave(by_customer, seed), last_time(by_customer) + 20 * 1440 * MINUTE)
    quiet = POLICIES.quiet_hours
    assert quiet is not None
    for cid, records in result.items():
        zone = ZoneInfo(by_customer[cid][0]["attributes"]["timezone"])
        for kind, a in records:
            if kind != "a" or a["channel"] not in quiet.channels:
                continue
            local = datetime.fromtimestamp(_send_time(a) / 1000, tz=UTC).astimezone(zone)
            minute = local.hour * 60 + local.minute
            assert quiet.end_minute <= minute < quiet.start_minute, (a["action"], local)


# -- versions: a customer is pinned to the version it entered ---------------------------------

_VERSIONS_ROOT = Path(tempfile.mkdtemp(prefix="percorso-versions-"))
atexit.register(shutil.rmtree, _VERSIONS_ROOT, ignore_errors=True)


def _versioned_catalog(name: str, versions: dict[int, str], migrate: bool = False) -> Path:
    """The shipped catalog with every journey at ``versions`` (version -> status); later
    versions wait 1 minute in every window, so a decision under them looks different."""
    folder = _VERSIONS_ROOT / name
    folder.mkdir()
    for path in sorted(CATALOG_DIR.glob("*.yaml")):
        text = path.read_text()
        if "kind: Journey" not in text:
            (folder / path.name).write_text(text)
            continue
        for version, status in versions.items():
            extra = f"version: {version}\nstatus: {status}\n"
            body = text
            if version > 1:
                body = re.sub(r"within: \S+", "within: 1m", body)
                if migrate:
                    journey_id = re.findall(r"^id: (\w+)", body, re.M)[0]
                    names = [s.id for s in ENGINE.catalog.journey(journey_id).stages]
                    pairs = ", ".join(f"{s}: {s}" for s in names)
                    extra += f"migrate: {{from: {version - 1}, stages: {{{pairs}}}}}\n"
            body = body.replace("kind: Journey\n", f"kind: Journey\n{extra}", 1)
            (folder / f"{path.stem}_v{version}.yaml").write_text(body)
    return folder


V1 = LifecycleEngine(load_catalog(_versioned_catalog("v1", {1: "active"})))
V2_DRAINING_V1 = LifecycleEngine(
    load_catalog(_versioned_catalog("v2", {1: "draining", 2: "active"}))
)
V2_MIGRATING = LifecycleEngine(
    load_catalog(_versioned_catalog("v2m", {1: "draining", 2: "active"}, migrate=True))
)


def _transitions(
    engine: LifecycleEngine, events: list[dict[str, Any]], end: int, changes: list[Any]
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    copies = [dict(e, attributes=dict(e["attributes"])) for e in events]
    for step in replay(engine, copies, end, changes=changes):
        for t in step.transitions:
            out[(t["customer_id"], t["journey_id"])].append(t)
    return out


@common
@given(traffic, st.integers(0, 1000), st.integers(0, 3000), st.booleans())
def test_pinned_customers_are_not_affected_by_a_newer_version_unless_migrated(
    plan: list[list[tuple[int, int]]], seed: int, change_after_minutes: int, migrate: bool
) -> None:
    by_customer = build(plan)
    events = interleave(by_customer, seed)
    end = last_time(by_customer) + 10 * 24 * 60 * MINUTE
    change = ms(T0) + change_after_minutes * MINUTE
    newer = V2_MIGRATING if migrate else V2_DRAINING_V1
    before = _transitions(V1, events, end, [])
    after = _transitions(V1, events, end, [(change, newer)])
    for key, records in after.items():
        on_v1 = [t for t in records if t["version"] == 1]
        # what version 1 decided is what it would have decided without version 2, up to
        # where its customers left it (or, with a migration, were moved out of it)
        assert on_v1 == before[key][: len(on_v1)], key
        inside_v1 = False
        for t in records:
            if t["version"] == 1:
                inside_v1 = t["to_stage"] not in ("completed", "exited", "inactive")
            elif inside_v1:  # a version-2 record while the customer is still in version 1
                assert migrate and t["reason"] == "migrated", (key, t)
                inside_v1 = False
            if t["version"] == 2 and t["from_stage"] is None:
                assert t["at"] >= change, "a new version took an entry before it was deployed"


# -- instances: each instance lives as if its touchpoints were the only ones --------------------

_CART = """
apiVersion: percorso/v1
kind: Journey
id: cart
%s
entry: {when: {type: cart_add}, reentry: always}
exit: {goal: {type: purchase}, events: [{type: cart_cleared}], inactivity: 2h}
stages:
  - {id: carted, when: {type: cart_add}}
  - {id: checkout, when: {type: checkout_started}}
  - {id: abandoned}
windows:
  - id: reminder
    start: {type: cart_add}
    wait_for: {type: [checkout_started, purchase]}
    within: 30m
    on_timeout: {goto: abandoned, action: {name: remind, channels: [email]}}
  - id: nudge
    after: reminder
    wait_for: {type: purchase}
    within: 20m
    on_timeout: {action: {name: nudge, channels: [email]}}
"""


def _cart_engine(name: str, keyed: bool) -> LifecycleEngine:
    folder = _VERSIONS_ROOT / name
    folder.mkdir()
    (folder / "cart.yaml").write_text(_CART % ('instance_key: "${attributes.cart_id}"' * keyed))
    return LifecycleEngine(load_catalog(folder))


KEYED_CART, SINGLE_CART = _cart_engine("keyed", True), _cart_engine("single", False)
CART_MOVES = ["cart_add", "checkout_started", "purchase", "page_view", "cart_cleared"]
cart_traffic = st.lists(
    st.tuples(GAPS, st.sampled_from(CART_MOVES), st.sampled_from(["A", "B", "C"])),
    min_size=1,
    max_size=30,
)


@common
@given(cart_traffic)
def test_each_instance_lives_as_if_its_touchpoints_were_the_only_ones(
    moves: list[tuple[int, str, str]],
) -> None:
    events, t = [], ms(T0)
    for n, (gap, kind, cart) in enumerate(moves):
        t += gap * MINUTE
        events.append(
            {
                "event_id": f"e{n}",
                "customer_id": "c1",
                "channel": "web",
                "type": kind,
                "occurred_at": t,
                "attributes": {"cart_id": cart},
                "source": None,
            }
        )
    end = t + 3 * 24 * 60 * MINUTE
    together: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for step in replay(KEYED_CART, [dict(e) for e in events], end):
        for tr in step.transitions:
            together[tr.pop("instance_key")].append(tr)
    for cart in ("A", "B", "C"):
        alone = [e for e in events if e["attributes"]["cart_id"] == cart]
        transitions = [tr for step in replay(SINGLE_CART, alone, end) for tr in step.transitions]
        assert together.get(cart, []) == transitions, cart


# -- conversions ---------------------------------------------------------------------------------

EVOLVING = LifecycleEngine(load_catalog(CATALOG_DIR.parents[1] / "examples" / "evolving" / "v1"))
WEEK = 7 * 24 * 60 * MINUTE
_GROUPS = [assign_variant(EVOLVING.catalog.journey("cart"), f"c{n}") for n in range(50)]
# one customer held out, two in the treated variant
SHOPPERS = [
    f"c{_GROUPS.index('holdout')}",
    *[f"c{n}" for n, g in enumerate(_GROUPS) if g == "reminder"][:2],
]
# carts: (minutes after the previous cart, customer, cart id, bought after N minutes or never)
carts = st.lists(
    st.tuples(
        st.sampled_from([1, 20, 61, 600, 3000]),
        st.sampled_from(SHOPPERS),
        st.sampled_from(["A", "B"]),
        st.none() | st.sampled_from([5, 59, 61, 90, 3000, 10_079, 10_081]),
    ),
    min_size=1,
    max_size=15,
)


@common
@given(carts)
def test_conversions_are_inside_their_window_once_and_attributed_to_what_was_sent(
    plan: list[tuple[int, str, str, int | None]],
) -> None:
    t = ms(T0)
    events = []
    for n, (gap, customer, cart, bought_after) in enumerate(plan):
        t += gap * MINUTE
        moments = [("cart_add", t)]
        if bought_after is not None:
            moments.append(("purchase", t + bought_after * MINUTE))
        for kind, at in moments:
            events.append(
                {
                    "event_id": f"e{n}-{kind}",
                    "customer_id": customer,
                    "channel": "web",
                    "type": kind,
                    "occurred_at": at,
                    "attributes": {"cart_id": cart, "amount": "10"},
                    "source": None,
                }
            )
    events.sort(key=lambda e: e["occurred_at"])
    t = events[-1]["occurred_at"]
    sent: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
    seen: set[tuple[str, str, int]] = set()
    journey = EVOLVING.catalog.journey("cart")
    for step in replay(EVOLVING, events, t + 2 * WEEK):
        for a in step.actions:
            sent[(a["customer_id"], a["instance_key"])].append((a["created_at"], a["action_id"]))
        for c in step.conversions:
            assert c["entered_at"] <= c["at"] <= c["entered_at"] + WEEK
            once = (c["customer_id"], c["instance"], c["entered_at"])
            assert once not in seen, "an instance converted twice"
            seen.add(once)
            assert c["variant"] == assign_variant(journey, c["customer_id"])
            before = [
                i
                for at, i in sent[(c["customer_id"], c["instance"])]
                if c["entered_at"] <= at < c["at"]
            ]
            if c["variant"] == "holdout":
                assert c["attributed_action_id"] is None and not before
            else:
                assert c["attributed_action_id"] == (before[-1] if before else None)
