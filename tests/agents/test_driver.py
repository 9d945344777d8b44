"""The runtime in process (``agents.driver``): partition loop, state transactions on RocksDB,
checkpoint and wake-ups, with failures injected at every step of the checkpoint and crashes
between batches. The invariants are those of the broker crash tests: after any crash and a
restart, the restored state equals the offline replay, every action of the replay was emitted,
and nothing was emitted that the replay does not have (duplicates only repeat an
``action_id``)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agents.driver import Driver, InjectedFailure
from agents.processor import customer_key
from agents.producer import DeliveryFailed
from journeys.engine import Engine, Tick
from journeys.loader import load_catalog
from journeys.model import Catalog
from journeys.simulate import replay
from percorso.synthetic import SyntheticTraffic
from tests.journeys.harness import CATALOG_DIR

CATALOG: Catalog = load_catalog(CATALOG_DIR)
EVENTS = SyntheticTraffic(customers=60, seed=11).take(1500)
END = max(e["occurred_at"] for e in EVENTS) + 3 * 86_400_000  # every window has fallen due


def oracle(events: list[dict[str, Any]], until: int) -> tuple[set[str], dict[str, Any]]:
    ids: set[str] = set()
    states: dict[str, Any] = {}
    for step in replay(Engine(CATALOG), [dict(e) for e in events], until):
        ids |= {a["action_id"] for a in step.actions}
        states[step.state["customer_id"]] = step.state
    return ids, states


WANT_IDS, WANT_STATES = oracle(EVENTS, END)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def finish(driver: Driver) -> None:
    """Apply everything, fire what is due at END, and make it durable."""
    run(driver.run(END, max_records=50))
    driver.fire(END)
    run(driver.checkpoint_now())


def check(driver: Driver) -> None:
    emitted = [a["action_id"] for a in driver.actions()]
    assert set(emitted) >= WANT_IDS, f"{len(WANT_IDS - set(emitted))} actions missing"
    assert set(emitted) <= WANT_IDS, f"{len(set(emitted) - WANT_IDS)} actions not in the replay"
    assert driver.changelog_states() == WANT_STATES
    assert driver.states() == WANT_STATES
    assert not driver.dead_letters()


def test_streaming_in_process_equals_the_replay(tmp_path: Path) -> None:
    assert len(WANT_IDS) > 50  # the traffic exercises journeys, windows included
    driver = Driver(CATALOG, tmp_path)
    driver.send(EVENTS)
    finish(driver)
    check(driver)
    emitted = [a["action_id"] for a in driver.actions()]
    assert len(emitted) == len(set(emitted))  # without a crash, nothing is sent twice
    # each customer was encoded once per checkpoint, not once per touchpoint
    changelog = sum(len(driver.log.read(driver.changelog, p)) for p in range(driver.partitions))
    assert changelog < len(EVENTS)


def test_unkeyed_touchpoints_are_rekeyed_through_the_repartition_topic(tmp_path: Path) -> None:
    """Re-keyed touchpoints reach their partition a checkpoint later: a wall clock far ahead
    would fire windows before them (in production ``window_grace_ms`` covers that delay), so
    the clock stays at the start until all are applied, then moves to the end."""
    driver = Driver(CATALOG, tmp_path)
    driver.send(EVENTS, keyed=False)
    run(driver.run(EVENTS[0]["occurred_at"], max_records=50))
    driver.fire(END)
    run(driver.checkpoint_now())
    check(driver)
    assert len(driver.log.topic(driver.repartition)) == len(EVENTS)


@pytest.mark.parametrize("rounds", [1, 3, 7])
@pytest.mark.parametrize("lose_local_state", [False, True])
def test_a_crash_between_batches_loses_nothing(
    tmp_path: Path, rounds: int, lose_local_state: bool
) -> None:
    driver = Driver(CATALOG, tmp_path)
    driver.send(EVENTS)
    for n in range(rounds):
        driver.poll(END, max_records=40)
        if n % 2 == 0:
            run(driver.checkpoint_now())
    driver.poll(END, max_records=40)  # applied, never checkpointed
    driver.crash(lose_local_state=lose_local_state)
    finish(driver)
    check(driver)


def _crash_in_checkpoint(driver: Driver, inject: Any) -> None:
    driver.send(EVENTS)
    for _ in range(4):
        driver.poll(END, max_records=40)
        run(driver.checkpoint_now())
    driver.poll(END, max_records=40)
    inject(driver)
    with pytest.raises((InjectedFailure, DeliveryFailed)):
        run(driver.checkpoint_now())
    driver.crash()


def _fail_flush(number: int, deliver: int = 0) -> Any:
    def inject(driver: Driver) -> None:
        driver.producer.fail_at["deliver"] = driver.producer.calls["deliver"] + number
        driver.producer.deliver_before_failing = deliver

    return inject


def _fail_changelog_produce(after: int) -> Any:
    def inject(driver: Driver) -> None:
        driver.producer.fail_at["produce"] = driver.producer.calls["produce"] + 1 + after

    return inject


def _fail_commit(driver: Driver) -> None:
    driver.fail_commit_at = driver.commits + 1


class FailingWrites:
    """A RocksDB whose batch write fails (a full disk)."""

    def __init__(self, db: Any) -> None:
        self.db = db

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)

    def write(self, batch: Any) -> None:
        raise InjectedFailure("write")


def _fail_local_write(driver: Driver) -> None:
    part = driver.parts[max(driver.parts, key=lambda p: driver.parts[p].store.dirty)]
    part.store.db = FailingWrites(part.store.db)


STEPS = {
    "2: outputs not delivered": _fail_flush(1),
    "2: some outputs delivered": _fail_flush(1, deliver=5),
    "3: no changelog record produced": _fail_changelog_produce(0),
    "3: some changelog records produced": _fail_changelog_produce(7),
    "4: no changelog record delivered": _fail_flush(2),
    "4: one changelog record delivered": _fail_flush(2, deliver=1),
    "4: half the changelog records delivered": _fail_flush(2, deliver=30),
    "5: commit failed": _fail_commit,
    "6: local write failed": _fail_local_write,
}


@pytest.mark.parametrize("step", sorted(STEPS))
def test_a_crash_at_any_step_of_the_checkpoint_loses_nothing(tmp_path: Path, step: str) -> None:
    driver = Driver(CATALOG, tmp_path)
    _crash_in_checkpoint(driver, STEPS[step])
    finish(driver)
    check(driver)


# four customers with about 300 touchpoints each: one checkpoint interval holds far more of a
# customer's touchpoints than the engine remembers event ids for (remember_events, 64 shipped)
BUSY = SyntheticTraffic(customers=4, seed=11).take(1200)
BUSY_END = max(e["occurred_at"] for e in BUSY) + 3 * 86_400_000
BUSY_IDS, BUSY_STATES = oracle(BUSY, BUSY_END)


REPLAYS = {
    # the changelog got the states of two customers of four (measured: 609 of 1,200 records
    # come again on top of a state that holds them), or all of them
    "4: some states delivered": (_fail_flush(2, deliver=7), 609),
    "5: commit failed": (_fail_commit, len(BUSY)),
}


@pytest.mark.parametrize("step", sorted(REPLAYS))
def test_a_replay_longer_than_the_remembered_event_ids_applies_nothing_twice(
    tmp_path: Path, step: str
) -> None:
    """A crash after the changelog got (some of) an interval's states, before its offsets were
    committed: the records come again on top of states that hold them already. Each customer's
    stored value says up to which offset it has applied, so none is applied twice, however many
    of its records the interval held."""
    assert min(Counter(e["customer_id"] for e in BUSY).values()) > 2 * 64
    inject, replayed = REPLAYS[step]
    driver = Driver(CATALOG, tmp_path)
    driver.send(BUSY)
    assert driver.poll(BUSY_END, max_records=len(BUSY)) == len(BUSY)  # one interval
    inject(driver)
    with pytest.raises((InjectedFailure, DeliveryFailed)):
        run(driver.checkpoint_now())
    driver.crash()
    run(driver.run(BUSY_END, max_records=50))
    driver.fire(BUSY_END)
    run(driver.checkpoint_now())
    emitted = {a["action_id"] for a in driver.actions()}
    assert emitted == BUSY_IDS
    assert driver.changelog_states() == BUSY_STATES
    assert driver.states() == BUSY_STATES
    recognised = sum(
        n for (_, outcome), n in driver.tally.touchpoints.items() if outcome == "replayed"
    )
    assert recognised == replayed  # every record that came again on top of its state


def test_an_applied_offset_beyond_the_log_is_not_trusted(tmp_path: Path) -> None:
    """A stored offset past the partition's end is not from this log (the topic was recreated,
    or truncated): the customer's records are applied, not taken for duplicates."""
    driver = Driver(CATALOG, tmp_path)
    driver.send(EVENTS[:200])
    finish(driver)
    customer_id = EVENTS[0]["customer_id"]
    key = customer_key(customer_id)
    part = next(p for p in driver.parts.values() if p.store.customer(key) is not None)
    customer = part.store.customer(key)
    assert customer is not None and customer.applied[0] > 0
    customer.applied[:] = [10**12, 10**12]
    part.store.put_customer(key, customer, None)
    run(driver.checkpoint_now())
    later = dict(EVENTS[0], event_id="after-recreation", occurred_at=END)
    driver.send([later])
    run(driver.run(END, max_records=50))
    stored_state = driver.states()[customer_id]
    assert "after-recreation" in stored_state["seen"]


def test_records_applied_while_a_checkpoint_is_under_way_equal_the_replay(
    tmp_path: Path,
) -> None:
    """The worker's way: each checkpoint seals the transactions and runs beside the partition
    loop, which applies records to fresh ones meanwhile."""
    driver = Driver(CATALOG, tmp_path)
    driver.producer.latency = 3
    driver.send(EVENTS)
    overlapped = run(driver.run_overlapped(END, max_records=5))
    # each wait for a barrier takes 3 turns, each turn applies up to 4 x 5 records: the first
    # checkpoint alone overlaps 120 records
    assert overlapped >= 100
    assert driver.checkpoint.runs >= 2
    finish(driver)
    check(driver)
    emitted = [a["action_id"] for a in driver.actions()]
    assert len(emitted) == len(set(emitted))


@pytest.mark.parametrize("step", sorted(STEPS))
def test_a_crash_at_any_step_of_a_checkpoint_under_way_loses_nothing(
    tmp_path: Path, step: str
) -> None:
    """A failure injected into a checkpoint that runs beside the records, then a crash."""
    driver = Driver(CATALOG, tmp_path)
    driver.producer.latency = 3
    driver.send(EVENTS)
    assert run(driver.run_overlapped(END, max_records=5, rounds=30)) > 0
    assert not all(driver.caught_up(p) for p in driver.parts)
    STEPS[step](driver)
    with pytest.raises((InjectedFailure, DeliveryFailed)):
        run(driver.run_overlapped(END, max_records=5))
    driver.crash()
    finish(driver)
    check(driver)


def test_a_failed_checkpoint_under_way_is_written_by_the_next_one(tmp_path: Path) -> None:
    """Without a crash: the sealed layers of a failed checkpoint stay, records go on into a
    newer transaction, and the next checkpoint writes both, oldest first."""
    driver = Driver(CATALOG, tmp_path)
    driver.send(EVENTS[:800])
    driver.poll(END, max_records=1000)
    driver.fail_commit_at = driver.commits + 1
    with pytest.raises(InjectedFailure):
        run(driver.checkpoint_now())
    assert driver.committed == {}
    assert any(part.store.sealed for part in driver.parts.values())
    driver.send(EVENTS[800:])
    run(driver.run(END, max_records=50))
    driver.fire(END)
    run(driver.checkpoint_now())
    assert not any(part.store.sealed for part in driver.parts.values())
    check(driver)


def test_a_customer_read_from_a_sealed_layer_is_a_copy(tmp_path: Path) -> None:
    """The engine changes the state it is given in place: a read from a sealed layer must not
    hand out the value the checkpoint is about to write."""
    from agents import stored

    driver = Driver(CATALOG, tmp_path, partitions=1)
    customer = EVENTS[0]["customer_id"]
    driver.send([e for e in EVENTS if e["customer_id"] == customer][:2])
    driver.poll(END)
    store = driver.parts[0].store
    key = customer_key(customer)
    store.seal()
    (sealed,) = [v for k, v in store.changes(1) if k == key]
    copy = store.customer(key)
    assert copy is not None
    copy.state["watermark"] = -1
    store.put_customer(key, copy, None)
    assert [v for k, v in store.changes(1) if k == key] == [sealed]
    assert stored.decode(sealed).state["watermark"] > 0
    assert store.customer(key) is copy


def test_a_failed_step_leaves_the_transaction_for_the_next_checkpoint(tmp_path: Path) -> None:
    """Without a crash, the checkpoint after a failed one does the whole work again."""
    driver = Driver(CATALOG, tmp_path)
    driver.send(EVENTS[:300])
    driver.poll(END, max_records=1000)
    dirty = sum(p.store.dirty for p in driver.parts.values())
    assert dirty > 0
    driver.fail_commit_at = driver.commits + 1
    with pytest.raises(InjectedFailure):
        run(driver.checkpoint_now())
    assert sum(p.store.dirty for p in driver.parts.values()) == dirty
    assert driver.committed == {}
    run(driver.checkpoint_now())
    assert sum(p.store.dirty for p in driver.parts.values()) == 0
    assert sum(driver.committed.values()) == 300


def test_a_window_is_woken_even_if_only_part_of_a_checkpoint_reached_the_changelog(
    tmp_path: Path,
) -> None:
    """Index entries are produced before the states: whatever prefix of a checkpoint is
    durable, a customer with a pending window has its entry."""
    cart = [e for e in EVENTS if e["type"] == "cart_add"][:1]
    assert cart
    for deliver in range(0, 4):
        driver = Driver(CATALOG, tmp_path / str(deliver))
        driver.send(cart)
        driver.poll(cart[0]["occurred_at"])
        driver.producer.fail_at["deliver"] = driver.producer.calls["deliver"] + 2
        driver.producer.deliver_before_failing = deliver
        with pytest.raises(DeliveryFailed):
            run(driver.checkpoint_now())
        driver.crash()
        run(driver.run(END))
        driver.fire(END)
        run(driver.checkpoint_now())
        ids, states = oracle(cart, END)
        assert {a["action_id"] for a in driver.actions()} == ids
        assert driver.changelog_states() == states


def test_wake_ups_wait_for_the_touchpoints_that_could_cancel_them(tmp_path: Path) -> None:
    """Under backlog a partition fires only up to the latest event time applied on it."""
    driver = Driver(CATALOG, tmp_path, partitions=1)
    customer = EVENTS[0]["customer_id"]
    mine = [e for e in EVENTS if e["customer_id"] == customer]
    driver.send(mine)
    driver.poll(END, max_records=1)
    assert driver.safe_time(0, END) == mine[0]["occurred_at"]
    run(driver.run(END, max_records=1))
    assert driver.safe_time(0, END) == END


def test_a_corrupt_stored_value_is_quarantined_and_the_customer_starts_afresh(
    tmp_path: Path,
) -> None:
    driver = Driver(CATALOG, tmp_path, partitions=1)
    first = [e for e in EVENTS if e["customer_id"] == EVENTS[0]["customer_id"]]
    driver.log.append(driver.changelog, 0, customer_key(first[0]["customer_id"]), b"garbage")
    driver.crash()  # the restart restores the garbage from the changelog
    driver.send(first[:2])
    run(driver.run(END))
    (dead,) = driver.dead_letters()
    headers = dict(dead.headers)
    assert headers["percorso.error.class"] == b"CorruptState"
    assert headers["percorso.error.stored_state"] == b"garbage"
    # the second touchpoint applied to a fresh state
    _, want = oracle(first[1:2], END)
    state = driver.states()[first[0]["customer_id"]]
    assert state["seen"] == want[first[0]["customer_id"]]["seen"]


class FailingEngine(Engine):
    def advance(self, state, item, now=None):  # type: ignore[no-untyped-def]
        if not isinstance(item, Tick) and item["event_id"] == "boom":
            state["watermark"] = -1  # half done: must not be kept
            raise ZeroDivisionError("a bug")
        return super().advance(state, item, now)


def test_an_engine_exception_is_quarantined_and_the_worker_goes_on(tmp_path: Path) -> None:
    driver = Driver(CATALOG, tmp_path, partitions=1)
    driver.processor.engine = FailingEngine(CATALOG)
    customer = EVENTS[0]["customer_id"]
    mine = [e for e in EVENTS if e["customer_id"] == customer][:3]
    boom = dict(mine[-1], event_id="boom", occurred_at=mine[-1]["occurred_at"] + 1)
    driver.send(mine[:2])
    run(driver.run(END))
    before = driver.states()[customer]
    driver.send([boom, dict(mine[2], occurred_at=boom["occurred_at"] + 1)])
    driver.poll(END)
    run(driver.checkpoint_now())
    (dead,) = driver.dead_letters()
    assert dict(dead.headers)["percorso.error.class"] == b"EngineError"
    after = driver.states()[customer]
    assert after["watermark"] > before["watermark"] > 0  # the next touchpoint applied


def test_a_rolling_restart_with_a_new_catalog_equals_the_replay_of_the_change(
    tmp_path: Path,
) -> None:
    """The worker restarts at event time CHANGE with version 2 of the example cart journey
    (version 1 draining, its waiting carts migrated): the actions, conversions and transitions
    it sends are those of ``simulate --catalog-change CHANGE=examples/evolving/v2``. Stops and
    migrations happen at a customer's next touchpoint or wake-up, so their transitions are
    compared without their time."""
    import json

    from journeys.lifecycle import LifecycleEngine
    from percorso.records import touchpoint_from_json

    repo = CATALOG_DIR.parents[1]
    v1 = load_catalog(repo / "examples" / "evolving" / "v1")
    v2 = load_catalog(repo / "examples" / "evolving" / "v2")
    with (repo / "examples" / "carts.jsonl").open() as f:
        events = [touchpoint_from_json(json.loads(line)) for line in f]
    change = 1_772_524_800_000  # 2026-03-03T08:00:00Z
    end = max(e["occurred_at"] for e in events) + 8 * 86_400_000
    want_actions: set[str] = set()
    want_conversions: list[dict[str, Any]] = []
    want_transitions: list[tuple[Any, ...]] = []

    def moved(t: dict[str, Any]) -> tuple[Any, ...]:
        keep = ("customer_id", "version", "instance_key", "from_stage", "to_stage", "reason")
        return tuple(t.get(k) for k in keep)

    steps = replay(
        LifecycleEngine(v1),
        [dict(e) for e in events],
        end,
        changes=[(change, LifecycleEngine(v2))],
    )
    for step in steps:
        want_actions |= {a["action_id"] for a in step.actions}
        want_conversions += step.conversions
        want_transitions += [moved(t) for t in step.transitions]
    assert any(t[5] == "migrated" for t in want_transitions)
    assert len(want_actions) > 100 and len(want_conversions) > 100

    driver = Driver(v1, tmp_path)
    driver.send(e for e in events if e["occurred_at"] < change)
    run(driver.run(change - 1, max_records=50))
    driver.fire(change - 1)
    run(driver.checkpoint_now())
    driver.catalog = v2  # the rolling restart, with the new catalog
    driver.crash()
    driver.send(e for e in events if e["occurred_at"] >= change)
    run(driver.run(end, max_records=50))
    driver.fire(end)
    run(driver.checkpoint_now())

    assert {a["action_id"] for a in driver.actions()} == want_actions
    topics = driver.settings.topics
    conversions = [
        driver.codecs.conversion.decode(r.value) for r in driver.log.topic(topics.conversions)
    ]
    key = lambda c: (c["customer_id"], c["instance"], c["at"])  # noqa: E731
    assert sorted(conversions, key=key) == sorted(want_conversions, key=key)
    transitions = [
        moved(driver.codecs.transition.decode(r.value))
        for r in driver.log.topic(topics.transitions)
    ]
    assert sorted(transitions, key=repr) == sorted(want_transitions, key=repr)
    assert not driver.dead_letters()


def test_a_customer_grown_beyond_the_state_limit_keeps_its_last_stored_value(
    tmp_path: Path,
) -> None:
    """The checkpoint does not write a customer value beyond ``max_state_bytes`` (its
    changelog record might not fit in a Kafka record): the customer keeps its last stored
    value, the value goes to the dead-letter topic as ``StateTooLarge``, the rest is written."""
    from dataclasses import replace

    from agents import stored
    from percorso.config import Settings

    base = Settings()
    settings = replace(base, limits=replace(base.limits, max_state_bytes=4000))
    driver = Driver(CATALOG, tmp_path, settings=settings)
    t0 = EVENTS[0]["occurred_at"]

    def touchpoint(event_id: str, customer: str, at: int, **attributes: str) -> dict[str, Any]:
        return {
            "event_id": event_id,
            "customer_id": customer,
            "channel": "web",
            "type": "page_view",
            "occurred_at": at,
            "attributes": attributes,
            "source": None,
        }

    driver.send([touchpoint("big-1", "big", t0), touchpoint("small-1", "small", t0)])
    run(driver.run(t0))
    assert set(driver.changelog_states()) == {"big", "small"}
    wide = {f"a{n:02d}": "v" * 250 for n in range(16)}  # kept in the context: ~4 KB more
    driver.send(
        [touchpoint("big-2", "big", t0 + 1, **wide), touchpoint("small-2", "small", t0 + 1)]
    )
    run(driver.run(t0 + 1))
    [dead] = driver.dead_letters()
    headers = dict(dead.headers or [])
    assert headers["percorso.error.class"] == b"StateTooLarge"
    assert b"PERCORSO_MAX_STATE_BYTES" in headers["percorso.error.message"]
    assert dead.key == b"big"
    assert dead.value is not None and stored.decode(dead.value).state["seen"] == ["big-1", "big-2"]
    states = driver.changelog_states()
    assert states["big"]["seen"] == ["big-1"]  # its last stored value
    assert states["small"]["seen"] == ["small-1", "small-2"]  # the rest is written
    assert driver.states()["big"]["seen"] == ["big-1"]
