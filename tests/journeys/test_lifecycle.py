"""Versions, drain and stop, migration, removed versions and conversions, one rule at a time.

A catalog change is a new engine built from another set of files, given the same customer
state: what a worker restarted with a new catalog does."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from pathlib import Path

import pytest

from agents import stored
from journeys.engine import Engine, action_id, assign_variant
from journeys.lifecycle import LifecycleEngine
from journeys.loader import load_catalog, validate_paths
from journeys.simulate import run_simulation
from tests.journeys.harness import T0, Customer, ms

POLICIES = """
apiVersion: percorso/v1
kind: Policies
"""

CART = """
apiVersion: percorso/v1
kind: Journey
id: cart
%(lifecycle)s
entry: {when: {type: cart_add}, reentry: always}
exit: {goal: {type: purchase}}
stages:
  - {id: carted, when: {type: cart_add}}
  - {id: checkout, when: {type: checkout_started}}
  - {id: abandoned}
windows:
  - id: reminder
    start: {type: cart_add}
    wait_for: {type: [checkout_started, purchase]}
    within: %(within)s
    on_timeout:
      goto: abandoned
      action: {name: %(action)s, channels: [email]}
%(extra)s
"""


def cart(
    version: int | None = None,
    status: str = "active",
    within: str = "30m",
    action: str = "remind",
    extra: str = "",
) -> str:
    lines = []
    if version is not None:
        lines.append(f"version: {version}")
    if status != "active":
        lines.append(f"status: {status}")
    return CART % {
        "lifecycle": "\n".join(lines),
        "within": within,
        "action": action,
        "extra": extra,
    }


def v2(status: str = "active", extra: str = "") -> str:
    return cart(2, status, within="10m", action="remind_v2", extra=extra)


def catalog(tmp_path: Path, name: str, *docs: str) -> LifecycleEngine:
    folder = tmp_path / name
    folder.mkdir()
    for n, text in enumerate((*docs, POLICIES)):
        (folder / f"doc{n}.yaml").write_text(text)
    return LifecycleEngine(load_catalog(folder))


def redeploy(c: Customer, engine: Engine) -> Customer:
    """The same customer state under another catalog."""
    c.engine = engine
    return c


class TestVersions:
    def test_a_customer_stays_on_the_version_it_entered(self, tmp_path: Path) -> None:
        # given a customer who entered version 1
        c = Customer(catalog(tmp_path, "one", cart(1)))
        c.does("cart_add", event_id="e1")
        # when version 2 is deployed and version 1 drains
        redeploy(c, catalog(tmp_path, "two", cart(1, "draining"), v2()))
        c.wait(minutes=15).does("page_view")
        # then its reminder still comes after 30 minutes, from version 1
        assert c.action_names() == []
        c.wait(minutes=16).tick()
        assert c.action_names() == ["remind"]
        assert {(t["version"], t["to_stage"]) for t in c.transitions} == {
            (1, "carted"),
            (1, "abandoned"),
        }
        assert all(t["journey_id"] == "cart" for t in c.transitions)
        assert c.actions[0]["version"] == 1 and c.actions[0]["journey_id"] == "cart"

    def test_new_entries_go_to_the_newest_active_version(self, tmp_path: Path) -> None:
        e = catalog(tmp_path, "two", cart(1), v2())
        c = Customer(e, "newcomer")
        c.does("cart_add")
        c.wait(minutes=11).tick()
        assert c.action_names() == ["remind_v2"]
        assert [t["version"] for t in c.transitions] == [2, 2]
        assert c.actions[0]["context"]["stages"] == {"cart": "abandoned"}  # the author's id
        assert c.state is not None and set(c.state["journeys"]) == {"cart@2"}

    def test_a_pinned_customer_does_not_enter_the_new_version(self, tmp_path: Path) -> None:
        c = Customer(catalog(tmp_path, "one", cart(1)))
        c.does("cart_add")
        redeploy(c, catalog(tmp_path, "two", cart(1, "draining"), v2()))
        c.wait(minutes=5).does("cart_add")  # re-entry is allowed, but it is still inside v1
        assert c.state is not None and "cart@2" not in c.state["journeys"]
        # once it has left version 1, it re-enters on the newest version
        c.wait(minutes=1).does("purchase")
        c.wait(minutes=1).does("cart_add")
        assert c.transitions[-1]["version"] == 2 and c.stage("cart@2") == "carted"

    def test_a_draining_version_takes_no_new_entries(self, tmp_path: Path) -> None:
        e = catalog(tmp_path, "drain", cart(1, "draining"))
        c = Customer(e)
        c.does("cart_add")
        assert c.transitions == [] and c.stage("cart") is None

    def test_an_unversioned_journey_can_drain(self, tmp_path: Path) -> None:
        c = Customer(catalog(tmp_path, "one", cart()))
        c.does("cart_add")
        redeploy(c, catalog(tmp_path, "drain", cart(status="draining")))
        c.wait(minutes=31).tick()
        assert c.action_names() == ["remind"]  # the customer inside finishes
        newcomer = Customer(c.engine, "newcomer")
        newcomer.does("cart_add")
        assert newcomer.transitions == []
        assert "version" not in c.transitions[0]  # unversioned records stay as they were

    def test_the_state_key_of_version_one_is_the_journey_id(self, tmp_path: Path) -> None:
        # given state written by an unversioned catalog, version 1 is its continuation
        c = Customer(catalog(tmp_path, "plain", cart()))
        c.does("cart_add")
        redeploy(c, catalog(tmp_path, "one", cart(1)))
        c.wait(minutes=31).tick()
        assert c.action_names() == ["remind"] and c.transitions[-1]["version"] == 1


class TestStop:
    def test_stopped_customers_leave_at_their_next_touchpoint(self, tmp_path: Path) -> None:
        c = Customer(catalog(tmp_path, "one", cart(1)))
        c.does("cart_add", event_id="e1")
        redeploy(c, catalog(tmp_path, "stop", cart(1, "stopped"), v2()))
        step = c.wait(minutes=5).does("page_view")
        (leave,) = step.transitions
        assert leave["reason"] == "stopped" and leave["to_stage"] == "exited"
        assert leave["version"] == 1 and leave["at"] == ms(T0) + 5 * 60_000
        assert step.windows_cancelled == 1
        c.wait(minutes=30).tick()
        assert c.actions == []  # the armed reminder was cancelled: nothing is sent
        c.does("cart_add")
        assert c.transitions[-1]["version"] == 2  # a new entry goes to the active version

    def test_stopped_customers_leave_at_their_next_tick(self, tmp_path: Path) -> None:
        c = Customer(catalog(tmp_path, "one", cart(1)))
        c.does("cart_add")
        redeploy(c, catalog(tmp_path, "stop", cart(1, "stopped")))
        step = c.wait(minutes=31).tick()
        assert [t["reason"] for t in step.transitions] == ["stopped"]
        assert step.actions == [] and step.next_due is None

    def test_deferred_actions_of_a_stopped_version_are_dropped(self, tmp_path: Path) -> None:
        quiet = POLICIES + "quiet_hours: {start: '21:00', end: '08:00', channels: [email]}\n"
        folder = tmp_path / "one"
        folder.mkdir()
        (folder / "cart.yaml").write_text(cart(1))
        (folder / "policies.yaml").write_text(quiet)
        night = T0.replace(hour=22)
        c = Customer(LifecycleEngine(load_catalog(folder)), start=night)
        c.does("cart_add")
        c.wait(minutes=31).tick()
        assert c.steps[-1].deferred == 1 and c.state is not None and c.state["pending"]
        stop = tmp_path / "stop"
        stop.mkdir()
        (stop / "cart.yaml").write_text(cart(1, "stopped"))
        (stop / "policies.yaml").write_text(quiet)
        redeploy(c, LifecycleEngine(load_catalog(stop)))
        c.wait(hours=12).tick()
        assert c.actions == [] and c.state["pending"] == []


class TestRemovedVersion:
    def test_customers_of_a_removed_version_leave_without_a_crash(self, tmp_path: Path) -> None:
        c = Customer(catalog(tmp_path, "two", cart(1, "draining"), v2()))
        c.does("cart_add")
        assert c.state is not None and c.state["journeys"]["cart@2"]["windows"]
        # when version 2 disappears from the catalog
        redeploy(c, catalog(tmp_path, "back", cart(1)))
        step = c.wait(minutes=11).tick()  # its window is due: it must not fire
        (leave,) = step.transitions
        assert leave["reason"] == "version_removed" and leave["version"] == 2
        assert leave["journey_id"] == "cart" and step.actions == []
        assert step.next_due is None

    def test_a_journey_removed_from_the_catalog_is_left(self, tmp_path: Path) -> None:
        other = cart().replace("id: cart", "id: other").replace("cart_add", "wish_add")
        c = Customer(catalog(tmp_path, "both", cart(), other))
        c.does("wish_add")
        redeploy(c, catalog(tmp_path, "less", cart()))
        step = c.wait(minutes=1).does("page_view")
        assert [(t["journey_id"], t["reason"]) for t in step.transitions] == [
            ("other", "version_removed")
        ]
        assert "version" not in step.transitions[0]


class TestMigration:
    MIGRATE = "migrate: {from: 1, stages: {carted: carted, abandoned: abandoned}}"

    def test_migrated_customers_move_and_windows_rearm_under_the_new_version(
        self, tmp_path: Path
    ) -> None:
        c = Customer(catalog(tmp_path, "one", cart(1)))
        c.does("cart_add", event_id="e1")
        redeploy(c, catalog(tmp_path, "two", cart(1, "draining"), v2(extra=self.MIGRATE)))
        step = c.wait(minutes=5).does("page_view")
        (move,) = step.transitions
        assert move["reason"] == "migrated" and move["version"] == 2
        assert move["from_version"] == 1
        assert (move["from_stage"], move["to_stage"]) == ("carted", "carted")
        assert c.state is not None
        assert not c.state["journeys"]["cart"]["active"]
        window = c.state["journeys"]["cart@2"]["windows"][0]
        # the reminder keeps its arming time and takes version 2's 10 minutes
        assert window["armed_at"] == ms(T0) and window["deadline"] == ms(T0) + 10 * 60_000
        assert step.next_due == ms(T0) + 10 * 60_000
        c.wait(minutes=6).tick()
        assert c.action_names() == ["remind_v2"] and c.actions[0]["version"] == 2
        assert c.stage("cart@2") == "abandoned"

    def test_stages_the_map_does_not_name_stay_on_the_old_version(self, tmp_path: Path) -> None:
        c = Customer(catalog(tmp_path, "one", cart(1)))
        c.does("cart_add")
        c.wait(minutes=1).does("checkout_started")
        redeploy(c, catalog(tmp_path, "two", cart(1, "draining"), v2(extra=self.MIGRATE)))
        c.wait(minutes=1).does("page_view")
        assert c.stage("cart") == "checkout" and c.stage("cart@2") is None

    def test_migrations_chain_and_win_over_a_stop(self, tmp_path: Path) -> None:
        c = Customer(catalog(tmp_path, "one", cart(1)))
        c.does("cart_add")
        v3 = cart(
            3, within="5m", action="remind_v3", extra=self.MIGRATE.replace("from: 1", "from: 2")
        )
        redeploy(
            c, catalog(tmp_path, "three", cart(1, "stopped"), v2("draining", self.MIGRATE), v3)
        )
        step = c.wait(minutes=1).does("page_view")
        assert [(t["from_version"], t["version"], t["reason"]) for t in step.transitions] == [
            (1, 2, "migrated"),
            (2, 3, "migrated"),
        ]
        c.wait(minutes=5).tick()
        assert c.action_names() == ["remind_v3"] and c.stage("cart@3") == "abandoned"

    def test_a_window_the_new_version_lacks_is_cancelled(self, tmp_path: Path) -> None:
        c = Customer(catalog(tmp_path, "one", cart(1)))
        c.does("cart_add")
        renamed = v2(extra=self.MIGRATE).replace("id: reminder", "id: nudge")
        redeploy(c, catalog(tmp_path, "two", cart(1, "draining"), renamed))
        step = c.wait(minutes=1).does("page_view")
        assert step.windows_cancelled == 1 and c.stage("cart@2") == "carted"
        c.wait(hours=1).tick()
        assert c.actions == []


CONVERSION = """conversion: {when: {type: purchase}, within: 1d, value: "${attributes.amount}"}"""


class TestConversions:
    def test_a_conversion_inside_the_window_is_attributed_to_the_last_action(
        self, tmp_path: Path
    ) -> None:
        c = Customer(catalog(tmp_path, "conv", cart(extra=CONVERSION)))
        c.does("cart_add", event_id="e1")
        c.wait(minutes=31).tick()
        (reminder,) = c.actions
        step = c.wait(hours=2).does("purchase", event_id="p1", amount="42.50")
        (conversion,) = step.conversions
        assert conversion == {
            "customer_id": "cust-1",
            "journey_id": "cart",
            "version": None,
            "instance": None,
            "at": ms(T0) + (31 + 120) * 60_000,
            "cause": "p1",
            "value": "42.50",
            "variant": None,
            "attributed_action_id": reminder["action_id"],
            "entered_at": ms(T0),
        }
        assert reminder["action_id"] == action_id(
            "cart", "window:reminder:timeout", reminder["trigger"]
        )
        c.wait(minutes=1).does("purchase")  # converts once per instance
        assert c.steps[-1].conversions == []

    def test_a_conversion_outside_the_window_is_not_counted(self, tmp_path: Path) -> None:
        c = Customer(catalog(tmp_path, "conv", cart(extra=CONVERSION)))
        c.does("cart_add")
        c.wait(days=1, minutes=1).does("purchase")
        assert c.steps[-1].conversions == []

    def test_an_action_caused_by_the_converting_touchpoint_is_not_attributed(
        self, tmp_path: Path
    ) -> None:
        thanks = (
            CONVERSION + "\nactions:\n  - id: thanks\n    when: {type: purchase}\n"
            "    action: {name: thank, channels: [email], category: transactional}"
        )
        c = Customer(catalog(tmp_path, "conv", cart(extra=thanks)))
        c.does("cart_add")
        step = c.wait(minutes=5).does("purchase")
        assert [a["action"] for a in step.actions] == ["thank"]
        assert step.conversions[0]["attributed_action_id"] is None

    def test_holdout_customers_convert_with_nothing_attributed(self, tmp_path: Path) -> None:
        doc = cart(extra=CONVERSION + "\nexperiment: {id: exp1, holdout: 0.5, variants: {a: 1}}")
        e = catalog(tmp_path, "exp", doc)
        journey = e.catalog.journey("cart")
        held = next(f"c{n}" for n in range(100) if assign_variant(journey, f"c{n}") == "holdout")
        treated = next(f"c{n}" for n in range(100) if assign_variant(journey, f"c{n}") == "a")
        for customer, variant, attributed in ((held, "holdout", False), (treated, "a", True)):
            c = Customer(e, customer)
            c.does("cart_add")
            c.wait(minutes=31).tick()
            step = c.wait(hours=1).does("purchase")
            (conversion,) = step.conversions
            assert conversion["variant"] == variant
            assert (conversion["attributed_action_id"] is not None) is attributed
            assert {t["variant"] for t in c.transitions} == {variant}

    def test_a_catalog_without_conversions_keeps_its_state_shape(self, tmp_path: Path) -> None:
        c = Customer(catalog(tmp_path, "plain", cart()))
        c.does("cart_add")
        c.wait(minutes=31).tick()
        assert c.state is not None
        assert "last_action" not in c.state["journeys"]["cart"]
        assert "variant" not in c.transitions[0]


# A version-2 stored value written by the runtime before versions and conversions existed
# (a customer in the journey `cart` above, unversioned, reminder armed at T0, due T0 + 30 min).
STORED_BEFORE = bytes.fromhex(
    "020000019cade211c00000000b00000218636172743d6361727465648bab637573746f6d65725f6964a663"
    "7573742d31a977617465726d61726bcf0000019cadc69a80a47365656e91a26531a6726563656e749185a8"
    "6576656e745f6964a26531a76368616e6e656ca3776562a474797065a8636172745f616464ab6f63637572"
    "7265645f6174cf0000019cadc69a80aa6174747269627574657381a3736b75a141a874696d657a6f6e65c0"
    "a96f707465645f6f757490ac7375707072657373696f6e7380aa656e676167656d656e7481a377656201a4"
    "73656e7490a86a6f75726e65797381a4636172748ca8696e7374616e636501a6616374697665c3a5737461"
    "6765a6636172746564ab73746167655f73696e6365cf0000019cadc69a80aa656e74657265645f6174cf00"
    "00019cadc69a80ad6c6173745f6163746976697479cf0000019cadc69a80a96578697465645f6174c0ab74"
    "6f756368706f696e747301b06368616e6e656c5f737769746368657300ac6c6173745f6368616e6e656ca3"
    "776562ac736174697366616374696f6ec0a777696e646f77739188a36b6579a872656d696e646572a67769"
    "6e646f77a872656d696e646572ab696e7374616e63655f6964b0636172742f72656d696e6465722f6531ac"
    "6f726967696e5f6576656e74a26531a861726d65645f6174cf0000019cadc69a80a8646561646c696e65cf"
    "0000019cade211c0ab636f7272656c6174696f6e80aa6174747269627574657381a3736b75a141a770656e"
    "64696e6790"
)


@pytest.mark.parametrize("versioned", [False, True])
def test_state_stored_before_versions_loads_and_continues(tmp_path: Path, versioned: bool) -> None:
    customer = stored.decode(STORED_BEFORE)
    assert customer.indexed_due == ms(T0) + 30 * 60_000
    doc = cart(1, extra=CONVERSION) if versioned else cart(extra=CONVERSION)
    c = Customer(catalog(tmp_path, "now", doc))
    c.state = customer.state
    c.wait(minutes=31).tick()
    assert c.action_names() == ["remind"] and c.stage("cart") == "abandoned"
    step = c.wait(minutes=5).does("purchase", amount="10")
    assert step.conversions[0]["attributed_action_id"] == c.actions[0]["action_id"]
    assert step.conversions[0]["version"] == (1 if versioned else None)
    again = stored.decode(stored.encode(stored.Customer(step.state, None)))
    assert again.state == step.state


class TestValidate:
    def problems(self, tmp_path: Path, *docs: str) -> list[str]:
        for n, text in enumerate(docs):
            (tmp_path / f"v{n}.yaml").write_text(text)
        return validate_paths([tmp_path])[0]

    def test_versions_of_one_journey_are_unique(self, tmp_path: Path) -> None:
        found = self.problems(tmp_path, cart(1), cart(1))
        assert found == [
            f"{tmp_path / 'v1.yaml'}:5: version: version 1 of journey 'cart' is already "
            f"defined in {tmp_path / 'v0.yaml'}"
        ]

    def test_every_file_of_a_versioned_journey_has_a_version(self, tmp_path: Path) -> None:
        (found,) = self.problems(tmp_path, cart(), v2())
        assert found.startswith(f"{tmp_path / 'v1.yaml'}:4: id: journey id 'cart' is already")
        assert "each need a different version" in found

    def test_migrations_name_an_older_existing_version_and_its_stages(self, tmp_path: Path) -> None:
        bad = "migrate: {from: 3, stages: {carted: nowhere}}"
        found = self.problems(tmp_path, cart(1), v2(extra=bad))
        file = tmp_path / "v1.yaml"
        assert found == [
            f"{file}:20: migrate.from: migrates from version 3, not older than this version 2",
            f"{file}:20: migrate.stages.carted: unknown stage 'nowhere' of this version",
        ]
        unknown = "migrate: {from: 1, stages: {parked: carted}}"
        (tmp_path / "v1.yaml").write_text(v2(extra=unknown))
        assert validate_paths([tmp_path])[0] == [
            f"{file}:20: migrate.stages.parked: version 1 has no stage 'parked'"
        ]
        (tmp_path / "v0.yaml").unlink()
        assert validate_paths([tmp_path])[0] == [
            f"{file}:20: migrate.from: version 1 of journey 'cart' is not in the catalog"
        ]

    def test_both_sides_of_a_migration_have_the_same_instance_key(self, tmp_path: Path) -> None:
        migrate = "migrate: {from: 1, stages: {carted: carted}}"
        (found,) = self.problems(tmp_path, cart(1, extra=KEYED), v2(extra=migrate))
        assert found == (
            f"{tmp_path / 'v1.yaml'}:20: migrate: version 1 is keyed by 'cart_id' and this "
            f"version by None: a migration keeps instances, so both need the same instance_key"
        )

    def test_an_instance_key_names_one_attribute(self, tmp_path: Path) -> None:
        (found,) = self.problems(tmp_path, cart(extra='instance_key: "cart-${attributes.id}"'))
        assert ":20: instance_key: 'cart-${attributes.id}' does not match" in found

    def test_status_is_one_of_three(self, tmp_path: Path) -> None:
        (found,) = self.problems(tmp_path, cart(1, "paused"))
        assert ":6: status:" in found and "'paused' is not one of" in found


class TestSimulateCatalogChange:
    EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "events.jsonl"
    SHIPPED = Path(__file__).resolve().parents[2] / "journeys" / "catalog"

    def simulate(self, journeys: Path, events: Path, *changes: str) -> list[str]:
        out, err = io.StringIO(), io.StringIO()
        code = run_simulation(journeys, str(events), out, err, catalog_changes=changes)
        assert code == 0, err.getvalue()
        return out.getvalue().splitlines()

    def test_a_change_to_the_same_catalog_changes_no_decision(self) -> None:
        plain = self.simulate(self.SHIPPED, self.EXAMPLE)
        times = sorted(json.loads(line)["occurred_at"] for line in self.EXAMPLE.open())
        middle = times[len(times) // 2]
        changed = self.simulate(self.SHIPPED, self.EXAMPLE, f"{middle}={self.SHIPPED}")
        assert sorted(changed) == sorted(plain) and len(plain) > 10

    def test_a_stop_is_replayed_before_it_is_deployed(self, tmp_path: Path) -> None:
        one, stop = tmp_path / "one", tmp_path / "stop"
        for folder, doc in ((one, cart(1)), (stop, cart(1, "stopped"))):
            folder.mkdir()
            (folder / "cart.yaml").write_text(doc)
        events = tmp_path / "events.jsonl"
        rows = [("e1", "cart_add", 0), ("e2", "page_view", 10)]
        events.write_text(
            "".join(
                json.dumps(
                    {
                        "event_id": e,
                        "customer_id": "c1",
                        "channel": "web",
                        "type": kind,
                        "occurred_at": ms(T0) + minutes * 60_000,
                    }
                )
                + "\n"
                for e, kind, minutes in rows
            )
        )
        change = f"{(T0 + timedelta(minutes=5)).isoformat()}={stop}"
        records = [json.loads(line) for line in self.simulate(one, events, change)]
        assert [(r["kind"], r.get("reason")) for r in records] == [
            ("transition", "event"),
            ("transition", "stopped"),
        ]
        assert records[1]["at"] == ms(T0) + 10 * 60_000
        # run on to an hour: without the change the reminder goes out at 30 minutes; with a
        # stop deployed at 20 minutes, the final tick takes the customer out instead
        until = str(ms(T0) + 60 * 60_000)
        out = io.StringIO()
        assert run_simulation(one, str(events), out, io.StringIO(), until=until) == 0
        assert [json.loads(line).get("action") for line in out.getvalue().splitlines()][-1] == (
            "remind"
        )
        out = io.StringIO()
        later = [f"{ms(T0) + 20 * 60_000}={stop}"]
        assert (
            run_simulation(one, str(events), out, io.StringIO(), until, catalog_changes=later) == 0
        )
        records = [json.loads(line) for line in out.getvalue().splitlines()]
        assert [r["kind"] for r in records] == ["transition", "transition"]
        assert records[-1]["reason"] == "stopped" and records[-1]["at"] == int(until)

    def test_a_bad_change_argument_is_refused(self, tmp_path: Path) -> None:
        err = io.StringIO()
        code = run_simulation(
            self.SHIPPED, str(self.EXAMPLE), io.StringIO(), err, catalog_changes=["soon"]
        )
        assert code == 1 and "expected TIME=DIR" in err.getvalue()


KEYED = 'instance_key: "${attributes.cart_id}"\nmax_instances: 2'


class TestInstances:
    def test_two_carts_of_one_customer_are_two_instances(self, tmp_path: Path) -> None:
        c = Customer(catalog(tmp_path, "keyed", cart(extra=KEYED + "\n" + CONVERSION)))
        # given two carts, ten minutes apart
        c.does("cart_add", event_id="a1", cart_id="A")
        c.wait(minutes=10).does("cart_add", event_id="b1", cart_id="B")
        assert c.state is not None and set(c.state["journeys"]) == {"cart#A", "cart#B"}
        # when cart B checks out and cart A is left alone
        c.wait(minutes=5).does("checkout_started", cart_id="B")
        c.wait(minutes=16).tick()  # 31 minutes after cart A
        # then only cart A's reminder goes out, and each cart has its own stages
        assert [(a["action"], a["instance_key"]) for a in c.actions] == [("remind", "A")]
        assert [(t["instance_key"], t["to_stage"]) for t in c.transitions] == [
            ("A", "carted"),
            ("B", "carted"),
            ("B", "checkout"),
            ("A", "abandoned"),
        ]
        assert c.actions[0]["trigger"] == "cart/reminder/a1"
        # and a purchase of cart B converts cart B only, with nothing sent to it
        step = c.wait(minutes=1).does("purchase", cart_id="B", amount="5")
        (conversion,) = step.conversions
        assert conversion["instance"] == "B" and conversion["attributed_action_id"] is None
        assert [(t["instance_key"], t["reason"]) for t in step.transitions] == [("B", "goal")]
        assert c.stage("cart#A") == "abandoned"

    def test_a_touchpoint_without_the_key_opens_and_touches_no_instance(
        self, tmp_path: Path
    ) -> None:
        c = Customer(catalog(tmp_path, "keyed", cart(extra=KEYED)))
        c.does("cart_add")
        assert c.transitions == []
        c.does("cart_add", cart_id="A")
        c.wait(minutes=1).does("purchase")  # no cart id: cart A is not completed
        assert c.stage("cart#A") == "carted"

    def test_at_the_bound_a_further_instance_is_not_opened(self, tmp_path: Path) -> None:
        c = Customer(catalog(tmp_path, "keyed", cart(extra=KEYED)))
        for cart_id in ("A", "B", "C"):
            c.wait(minutes=1).does("cart_add", cart_id=cart_id)
        assert c.state is not None and set(c.state["journeys"]) == {"cart#A", "cart#B"}
        c.wait(minutes=1).does("purchase", cart_id="A")  # one closes: room for another
        c.wait(minutes=1).does("cart_add", cart_id="C")
        assert c.stage("cart#C") == "carted"

    def test_caps_stay_per_customer(self, tmp_path: Path) -> None:
        capped = POLICIES + "frequency_caps: [{channel: any, max: 1, per: 1d}]\n"
        folder = tmp_path / "capped"
        folder.mkdir()
        (folder / "cart.yaml").write_text(cart(extra=KEYED))
        (folder / "policies.yaml").write_text(capped)
        c = Customer(LifecycleEngine(load_catalog(folder)))
        c.does("cart_add", cart_id="A")
        c.wait(minutes=1).does("cart_add", cart_id="B")
        c.wait(minutes=40).tick()
        assert c.action_names() == ["remind"] and c.suppressed() == [("remind", "cap")]

    def test_inactivity_of_a_stored_instance_wakes_the_customer(self, tmp_path: Path) -> None:
        doc = cart(extra=KEYED).replace("exit: {goal: {type: purchase}}", "exit: {inactivity: 2h}")
        c = Customer(catalog(tmp_path, "keyed", doc))
        step = c.does("cart_add", cart_id="A")
        assert step.next_due == ms(T0) + 30 * 60_000
        step = c.wait(minutes=31).tick()
        assert step.next_due == ms(T0) + 2 * 3_600_000  # the instance's inactivity
        step = c.wait(hours=2).tick()
        assert [t["reason"] for t in step.transitions] == ["inactivity"]
        assert step.transitions[0]["instance_key"] == "A"

    def test_an_instance_opened_before_the_key_existed_goes_on(self, tmp_path: Path) -> None:
        c = Customer(catalog(tmp_path, "plain", cart()))
        c.does("cart_add")
        redeploy(c, catalog(tmp_path, "keyed", cart(extra=KEYED)))
        c.wait(minutes=31).tick()
        assert [(a["action"], a["instance_key"]) for a in c.actions] == [("remind", "")]
        c.does("cart_add", cart_id="A")
        assert c.state is not None and set(c.state["journeys"]) == {"cart#", "cart#A"}

    def test_a_deferred_action_of_an_instance_keeps_its_instance(self, tmp_path: Path) -> None:
        quiet = POLICIES + "quiet_hours: {start: '21:00', end: '08:00', channels: [email]}\n"
        folder = tmp_path / "quiet"
        folder.mkdir()
        (folder / "cart.yaml").write_text(cart(extra=KEYED + "\n" + CONVERSION))
        (folder / "policies.yaml").write_text(quiet)
        c = Customer(LifecycleEngine(load_catalog(folder)), start=T0.replace(hour=22))
        c.does("cart_add", cart_id="A")
        c.wait(minutes=1).does("cart_add", cart_id="B")
        c.wait(minutes=31).tick()
        assert c.actions == [] and c.steps[-1].deferred == 2
        c.wait(hours=10).tick()  # past 08:00 in Rome: both released
        assert sorted((a["instance_key"], a["stage"]) for a in c.actions) == [
            ("A", "abandoned"),
            ("B", "abandoned"),
        ]
        reminder_a = next(a for a in c.actions if a["instance_key"] == "A")
        step = c.wait(minutes=5).does("purchase", cart_id="A")
        assert step.conversions[0]["attributed_action_id"] == reminder_a["action_id"]

    def test_a_stopped_version_ends_every_instance(self, tmp_path: Path) -> None:
        c = Customer(catalog(tmp_path, "one", cart(1, extra=KEYED)))
        c.does("cart_add", cart_id="A")
        c.does("cart_add", cart_id="B")
        redeploy(c, catalog(tmp_path, "stop", cart(1, "stopped", extra=KEYED)))
        step = c.wait(minutes=1).does("page_view")
        assert sorted((t["instance_key"], t["reason"]) for t in step.transitions) == [
            ("A", "stopped"),
            ("B", "stopped"),
        ]
