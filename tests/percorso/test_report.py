"""``percorso report``: figures per journey, version and variant, from simulate output."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from journeys.engine import assign_variant
from journeys.loader import load_catalog
from journeys.simulate import run_simulation
from percorso.cli import main
from percorso.config import Settings
from percorso.report import build_report, render

HOUR = 3_600_000


def entry(customer: str, variant: str | None, version: int | None = 2) -> dict:
    return {
        "kind": "transition",
        "customer_id": customer,
        "journey_id": "cart",
        "version": version,
        "variant": variant,
        "from_stage": None,
        "to_stage": "carted",
        "reason": "event",
    }


def leave(customer: str, variant: str | None, reason: str, to_stage: str) -> dict:
    return {
        **entry(customer, variant),
        "from_stage": "carted",
        "to_stage": to_stage,
        "reason": reason,
    }


def conversion(customer: str, variant: str | None, hours: int) -> dict:
    return {
        "kind": "conversion",
        "customer_id": customer,
        "journey_id": "cart",
        "version": 2,
        "variant": variant,
        "at": 10 * HOUR + hours * HOUR,
        "entered_at": 10 * HOUR,
    }


def test_rates_time_to_convert_and_uplift_with_its_interval() -> None:
    # given 100 treated customers of whom 30 convert, and 50 held out of whom 10 convert
    records = [entry(f"a{n}", "a") for n in range(100)]
    records += [entry(f"h{n}", "holdout") for n in range(50)]
    records += [conversion(f"a{n}", "a", hours=1 + n % 3) for n in range(30)]
    records += [conversion(f"h{n}", "holdout", hours=4) for n in range(10)]
    records += [leave(f"a{n}", "a", "goal", "completed") for n in range(30)]
    records += [leave(f"a{n}", "a", "stopped", "exited") for n in range(30, 35)]
    records.append({**leave("x", "a", "event", "checkout")})  # a move, not an exit
    records.append({"kind": "action", "journey_id": "cart"})  # ignored
    a, holdout = build_report(records)
    assert (a.variant, holdout.variant) == ("a", "holdout")
    assert a.entries == 100 and a.conversions == 30 and a.conversion_rate == 0.3
    assert a.completions == 30 and a.exits == {"goal": 30, "stopped": 5}
    assert a.mean_time_to_convert_ms == (10 * 1 + 10 * 2 + 10 * 3) * HOUR / 30
    assert holdout.conversion_rate == 0.2 and holdout.uplift is None
    assert a.uplift == pytest.approx(0.1)
    half = 1.959963984540054 * math.sqrt(0.3 * 0.7 / 100 + 0.2 * 0.8 / 50)
    assert a.uplift_ci == pytest.approx((0.1 - half, 0.1 + half))
    out = json.loads(render([a, holdout], as_json=True))["rows"][0]
    assert out["uplift_ci95"] == pytest.approx([0.1 - half, 0.1 + half])
    assert out["version"] == 2 and out["exits"] == {"goal": 30, "stopped": 5}
    text = render([a, holdout], as_json=False)
    assert "+10.0 pts [" in text and "30.0%" in text and "20.0%" in text


def test_a_migration_leaves_one_version_and_joins_the_next() -> None:
    records = [entry(f"c{n}", None, version=1) for n in range(4)]
    moved = {"from_stage": "carted", "to_stage": "carted", "reason": "migrated"}
    records += [{**entry(f"c{n}", None, version=2), **moved, "from_version": 1} for n in range(3)]
    records += [conversion("c0", None, 2)]
    one, two = build_report(records)
    assert (one.entries, one.exits, one.conversion_rate) == (4, {"migrated": 3}, 0.0)
    assert (two.entries, two.migrated_in, two.conversion_rate) == (0, 3, 1 / 3)


def test_rows_are_per_version_and_a_journey_without_experiment_has_no_uplift() -> None:
    records = [entry("c1", None, version=1), entry("c2", None, version=2)]
    records.append(conversion("c2", None, 1))
    one, two = build_report(records)
    assert (one.version, one.entries, one.conversions) == (1, 1, 0)
    assert (two.version, two.conversion_rate, two.uplift) == (2, 1.0, None)


JOURNEY = """
apiVersion: percorso/v1
kind: Journey
id: cart
version: 1
entry: {when: {type: cart_add}, reentry: always}
exit: {goal: {type: purchase}}
stages:
  - {id: carted, when: {type: cart_add}}
  - {id: abandoned}
windows:
  - id: reminder
    start: {type: cart_add}
    wait_for: {type: purchase}
    within: 30m
    on_timeout:
      goto: abandoned
      action: {name: remind, channels: [email]}
conversion: {when: {type: purchase}, within: 7d, value: "${attributes.amount}"}
experiment: {id: cart_reminder, holdout: 0.5, variants: {reminder: 1}}
"""


def test_report_reads_simulate_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "cart.yaml").write_text(JOURNEY)
    journey = load_catalog(tmp_path).journey("cart")
    events = []
    for n in range(40):
        customer = f"c{n}"
        events.append(
            {
                "event_id": f"{customer}-1",
                "customer_id": customer,
                "channel": "web",
                "type": "cart_add",
                "occurred_at": 1_767_225_600_000 + n,
                "attributes": {},
            }
        )
        if n % 2 == 0:  # half of everyone buys, two hours later
            events.append(
                {
                    "event_id": f"{customer}-2",
                    "customer_id": customer,
                    "channel": "web",
                    "type": "purchase",
                    "occurred_at": 1_767_225_600_000 + 2 * HOUR + n,
                    "attributes": {"amount": "20"},
                }
            )
    source = tmp_path / "events.jsonl"
    source.write_text("".join(json.dumps(e) + "\n" for e in events))
    out, err = io.StringIO(), io.StringIO()
    assert run_simulation(tmp_path, str(source), out, err) == 0, err.getvalue()
    simulated = tmp_path / "out.jsonl"
    simulated.write_text(out.getvalue())
    assert main(["report", "--json", str(simulated)]) == 0
    rows = {r["variant"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    variants = [assign_variant(journey, f"c{n}") for n in range(40)]
    buyers = [assign_variant(journey, f"c{n}") for n in range(0, 40, 2)]
    for variant in ("holdout", "reminder"):
        row = rows[variant]
        assert row["version"] == 1
        assert row["entries"] == variants.count(variant)
        assert row["conversions"] == buyers.count(variant)
        assert row["mean_time_to_convert_ms"] == pytest.approx(2 * HOUR)
    assert main(["report", str(simulated)]) == 0
    assert "uplift vs holdout (95% CI)" in capsys.readouterr().out


def test_report_reads_the_topics(settings_factory: Callable[..., Settings]) -> None:
    from percorso import clients
    from percorso.report import records_from_topics
    from percorso.topics import ensure_topics, percorso_topics

    settings = settings_factory()
    ensure_topics(clients.admin(settings), percorso_topics(settings))
    codecs = clients.Codecs.from_settings(settings)
    producer = clients.producer(settings)
    sent = [entry(f"a{n}", "a") for n in range(3)] + [entry(f"h{n}", "holdout") for n in range(2)]
    for t in sent:
        record = {k: v for k, v in t.items() if k != "kind"}
        record.update(at=10 * HOUR, cause="e", instance=1)
        producer.produce(
            settings.topics.transitions, key=b"k", value=codecs.transition.encode(record)
        )
    bought = {k: v for k, v in conversion("a0", "a", 2).items() if k != "kind"}
    bought.update(cause="p", customer_id="a0")
    producer.produce(settings.topics.conversions, key=b"k", value=codecs.conversion.encode(bought))
    producer.produce(settings.topics.conversions, key=b"k", value=b"\x00")  # not a conversion
    producer.flush(10)
    rows = build_report(records_from_topics(settings, codecs, idle_timeout=3.0))
    assert [(r.variant, r.entries, r.conversions) for r in rows] == [("a", 3, 1), ("holdout", 2, 0)]
    assert rows[0].uplift == pytest.approx(1 / 3)


def test_tail_decodes_the_conversions_topic() -> None:
    from percorso.tail import subject_for

    assert subject_for(Settings(), "percorso.conversions") == "io.percorso.Conversion"
