"""Metric names and labels follow Prometheus conventions; a step is counted as it should be."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from agents.metrics import Metrics
from journeys.engine import Engine, Step, Suppressed
from journeys.loader import load_catalog
from journeys.state import new_customer
from tests.journeys.harness import CATALOG_DIR

CATALOG = load_catalog(CATALOG_DIR)
BASE_UNITS = ("_seconds", "_bytes", "_total", "_messages", "_partitions", "_entries")


def fresh() -> Metrics:
    return Metrics(CollectorRegistry(), channels={"web", "email"})


def test_names_and_units_follow_the_conventions() -> None:
    m = fresh()
    families = [f for f in m.registry.collect() if not f.name.startswith("process_")]
    assert families
    for family in families:
        assert family.name.startswith("percorso_"), family.name
        assert family.documentation, family.name
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples) or not family.samples
            assert not family.name.endswith("_total")  # the client adds it
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), f"{family.name}: base unit seconds"
        assert "_ms" not in family.name and "milli" not in family.name, family.name


def test_labels_never_carry_customer_ids() -> None:
    m = fresh()
    for family in m.registry.collect():
        for sample in family.samples:
            assert not any("customer" in label for label in sample.labels), family.name


def test_unknown_channels_are_bounded() -> None:
    m = fresh()
    m.touchpoint("web", "processed")
    m.touchpoint("carrier-pigeon-7f3a", "processed")
    assert (
        m.registry.get_sample_value(
            "percorso_touchpoints_total", {"channel": "other", "outcome": "processed"}
        )
        == 1
    )
    assert (
        m.registry.get_sample_value(
            "percorso_touchpoints_total", {"channel": "web", "outcome": "processed"}
        )
        == 1
    )


def test_a_step_is_counted() -> None:
    m = fresh()
    engine = Engine(CATALOG)
    tp = {
        "event_id": "e1",
        "customer_id": "c",
        "channel": "email",
        "type": "survey_response",
        "occurred_at": 1_800_000_000_000,
        "attributes": {"score": "2", "survey": "nps"},
        "source": None,
    }
    step: Step = engine.advance(new_customer("c"), tp, now=1_800_000_000_250)
    step.suppressed.append(Suppressed("cart_recovery", "send_cart_reminder", "cap", "w"))
    step.fired_at.append(1_800_000_000_000 - 2_000)
    m.observe_step(step, 1_800_000_000_250, tp)
    get = m.registry.get_sample_value
    assert (
        get(
            "percorso_actions_total",
            {
                "journey": "closed_loop_feedback",
                "action": "open_callback_ticket",
                "channel": "agent",
            },
        )
        == 1
    )
    assert (
        get(
            "percorso_stage_transitions_total",
            {"journey": "closed_loop_feedback", "from_stage": "none", "to_stage": "detractor"},
        )
        == 1
    )
    assert (
        get(
            "percorso_actions_suppressed_total",
            {"journey": "cart_recovery", "action": "send_cart_reminder", "reason": "cap"},
        )
        == 1
    )
    assert get("percorso_event_to_action_seconds_count") == 1
    assert get("percorso_event_to_action_seconds_sum") == 0.25
    assert get("percorso_window_lateness_seconds_sum") == 2.25


def test_census_replaces_previous_counts() -> None:
    m = fresh()
    m.census({("lifecycle", "awareness"): 3})
    m.census({("lifecycle", "purchase"): 1})
    get = m.registry.get_sample_value
    assert (
        get("percorso_customers_in_stage", {"journey": "lifecycle", "stage": "awareness"}) is None
    )
    assert get("percorso_customers_in_stage", {"journey": "lifecycle", "stage": "purchase"}) == 1


def test_exposition_is_prometheus_text() -> None:
    m = fresh()
    text = m.exposition().decode()
    assert "# TYPE percorso_touchpoints_total counter" in text
    assert "_created" not in text


def test_customers_of_a_removed_version_are_counted_and_logged_once(
    tmp_path,
    caplog,  # type: ignore[no-untyped-def]
) -> None:
    from journeys.engine import Tick
    from journeys.lifecycle import LifecycleEngine

    journey = (CATALOG_DIR / "cart_recovery.yaml").read_text()
    before, after = tmp_path / "before", tmp_path / "after"
    for folder, versions in ((before, (1, 2)), (after, (1,))):
        folder.mkdir()
        for v in versions:
            text = journey.replace("priority: 60", f"priority: 60\nversion: {v}")
            (folder / f"cart_v{v}.yaml").write_text(text)
    old, new = LifecycleEngine(load_catalog(before)), LifecycleEngine(load_catalog(after))
    m = fresh()
    for n in range(3):
        tp = {
            "event_id": f"e{n}",
            "customer_id": f"c{n}",
            "channel": "web",
            "type": "cart_add",
            "occurred_at": 1_767_225_600_000,
            "attributes": {},
            "source": None,
        }
        state = old.advance(None, tp).state
        assert "cart_recovery@2" in state["journeys"]
        with caplog.at_level("WARNING", logger="agents.metrics"):
            m.observe_step(new.advance(state, Tick(1_767_225_600_000 + 60_000)), 0, None)
    value = m.registry.get_sample_value(
        "percorso_version_removed_total", {"journey": "cart_recovery", "version": "2"}
    )
    assert value == 3
    lines = [r.getMessage() for r in caplog.records if "not in the catalog" in r.getMessage()]
    assert lines == [
        "journey cart_recovery version 2 is not in the catalog: its customers leave the "
        "journey (reason version_removed) at their next touchpoint or tick"
    ]
