"""percorso simulate: the example file gives what a reader of the journeys expects."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "events.jsonl"


def simulate(*extra: str, events: Path = EXAMPLE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "percorso.cli",
            "simulate",
            "--journeys",
            str(REPO / "journeys" / "catalog"),
            "--events",
            str(events),
            *extra,
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )


def records(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def test_example_gives_the_expected_actions() -> None:
    run = simulate("--include", "actions,transitions,suppressed")
    assert run.returncode == 0, run.stderr
    got = records(run.stdout)
    actions = {(r["customer_id"], r["action"], r["channel"]) for r in got if r["kind"] == "action"}
    assert actions == {
        ("alice", "send_cart_reminder", "email"),  # abandoned cart, email is her channel
        ("alice", "send_cart_incentive", "email"),
        ("carla", "route_to_agent", "agent"),  # called about billing after web and chat
        ("dario", "open_callback_ticket", "agent"),  # NPS 3
        ("elena", "send_review_invitation", "email"),  # NPS 10
        ("fabio", "send_onboarding_nudge", "push"),  # no activation 3 days after purchase
        ("fabio", "schedule_onboarding_call", "agent"),  # still nothing 2 days later
        ("hana", "send_cart_reminder", "push"),  # deferred past quiet hours
        ("hana", "send_cart_incentive", "email"),
    }
    hana = next(
        r
        for r in got
        if r["kind"] == "action"
        and r["customer_id"] == "hana"
        and r["action"] == "send_cart_reminder"
    )
    assert hana["not_before"] == 1772521200000  # 08:00 in Rome
    suppressed = {
        (r["customer_id"], r["action"], r["reason"]) for r in got if r["kind"] == "suppressed"
    }
    assert ("dario", "send_cart_reminder", "suppression") in suppressed  # complaint open
    assert ("giulia", "send_cart_reminder", "consent") in suppressed  # opted out of all
    bob = [
        (r["journey_id"], r["to_stage"])
        for r in got
        if r["kind"] == "transition" and r["customer_id"] == "bob"
    ]
    assert ("cart_recovery", "completed") in bob and ("onboarding", "completed") in bob
    assert bob.count(("lifecycle", "post_purchase")) == 1  # the duplicate bob-3 counted once
    carla = next(r for r in got if r["kind"] == "action" and r["customer_id"] == "carla")
    assert {t["channel"] for t in carla["context"]["recent"]} >= {"web", "chat", "call_center"}


def test_output_is_byte_for_byte_deterministic() -> None:
    first, second = simulate(), simulate()
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout and first.stdout


def test_until_fires_windows_beyond_the_last_event(tmp_path: Path) -> None:
    events = tmp_path / "e.jsonl"
    events.write_text(
        json.dumps(
            {
                "event_id": "1",
                "customer_id": "z",
                "channel": "web",
                "type": "cart_add",
                "occurred_at": "2026-05-01T10:00:00Z",
            }
        )
        + "\n"
    )
    assert "send_cart_reminder" not in simulate(events=events).stdout
    later = simulate("--until", "2026-05-01T10:31:00Z", events=events)
    assert "send_cart_reminder" in later.stdout


def test_bad_lines_are_reported_and_skipped(tmp_path: Path) -> None:
    events = tmp_path / "e.jsonl"
    events.write_text(
        '{"event_id": "1", "customer_id": "z", "channel": "web", '
        '"type": "page_view", "occurred_at": "2026-05-01T10:00:00Z"}\n'
        '{"event_id": "2"}\n'
    )
    run = simulate(events=events)
    assert run.returncode == 2
    assert f"{events}:2: skipped: occurred_at: required" in run.stderr
    assert '"to_stage":"awareness"' in run.stdout


def test_invalid_journeys_stop_simulate(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("apiVersion: percorso/v1\nkind: Journey\n")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "percorso.cli",
            "simulate",
            "--journeys",
            str(tmp_path),
            "--events",
            str(EXAMPLE),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 1 and f"{tmp_path / 'bad.yaml'}:1:" in run.stderr


def _line(event_id: str, customer: str, at: str, type_: str = "page_view") -> str:
    return json.dumps(
        {
            "event_id": event_id,
            "customer_id": customer,
            "channel": "web",
            "type": type_,
            "occurred_at": at,
        }
    )


def test_a_future_dated_touchpoint_is_refused_against_the_replays_clock(tmp_path: Path) -> None:
    """As a worker refuses what is dated beyond its wall clock plus the skew, the replay
    refuses what is beyond its own clock (--until) plus the skew, and the customer's later
    touchpoints are not made late by it."""
    events = tmp_path / "events.jsonl"
    events.write_text(
        "\n".join(
            [
                _line("a1", "ada", "2026-03-02T09:00:00Z", "cart_add"),
                _line("a2", "ada", "2099-01-01T00:00:00Z"),  # a producer's broken clock
                _line("a3", "ada", "2026-03-02T09:10:00Z", "purchase"),
                _line("b1", "bo", "2026-03-02T10:04:59Z"),  # within the skew of --until
                _line("b2", "bo", "2026-03-02T10:05:01Z"),  # beyond it
            ]
        )
        + "\n"
    )
    run = simulate(
        "--until", "2026-03-02T10:00:00Z", "--include", "transitions,late", events=events
    )
    assert run.returncode == 0, run.stderr
    out = records(run.stdout)
    assert [r["customer_id"] for r in out if r["kind"] == "future"] == ["ada", "bo"]
    assert "late" not in {r["kind"] for r in out}
    causes = {r["cause"] for r in out if r["kind"] == "transition"}
    assert {"a1", "a3", "b1"} <= causes and not {"a2", "b2"} & causes


def test_without_until_the_replay_clock_is_the_time_it_starts(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(_line("z1", "zed", "2099-01-01T00:00:00Z") + "\n")
    run = simulate("--include", "transitions,late", events=events)
    assert run.returncode == 0, run.stderr
    assert records(run.stdout) == [{"kind": "future", "customer_id": "zed"}]


def test_the_replay_holds_touchpoints_to_the_input_limits(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(
        _line("n1", "new\u0085line", "2026-03-02T09:00:00Z")
        + "\n"
        + json.dumps(
            {
                "event_id": "n2",
                "customer_id": "ok",
                "channel": "chat",
                "type": "chat_started",
                "occurred_at": "2026-03-02T09:00:00Z",
                "attributes": {"topic": "t" * 257},  # escalation correlates on topic
            }
        )
        + "\n"
    )
    run = simulate(events=events)
    assert run.returncode == 2
    assert ":1: skipped: customer_id: must not contain control characters" in run.stderr
    assert ":2: skipped: attributes.topic:" in run.stderr
    assert "PERCORSO_MAX_CORRELATION_VALUE_BYTES" in run.stderr


def test_simulate_into_a_reader_that_stops_early_ends_quietly(tmp_path: Path) -> None:
    """`percorso simulate ... | head`: no traceback when the reader goes away. The output is
    far larger than a pipe's buffer, so the writer is still writing when the reader closes."""
    from percorso.records import iso
    from percorso.synthetic import SyntheticTraffic

    events = tmp_path / "events.jsonl"
    with events.open("w") as f:
        for tp in SyntheticTraffic(200, seed=3).take(3000):
            f.write(json.dumps(dict(tp, occurred_at=iso(tp["occurred_at"]))) + "\n")
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "percorso.cli",
            "simulate",
            "--journeys",
            "journeys/catalog",
            "--events",
            str(events),
        ],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # like `head -1`
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141, err
    assert first.startswith(b"{") and "Traceback" not in err
