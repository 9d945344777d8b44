"""Same decisions, byte for byte: ``percorso simulate`` output digests recorded before the
engine was optimised (see tests/journeys/golden.py; the 200k case runs with
``python -m tests.journeys.golden``)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tests.journeys.golden import (
    EXAMPLE,
    EXAMPLE_DIGEST,
    EXAMPLE_LINES,
    SMALL,
    digest,
    simulate,
)


def test_example_file_gives_the_recorded_bytes() -> None:
    output = simulate(EXAMPLE)
    assert output.count(b"\n") == EXAMPLE_LINES
    assert digest(output) == EXAMPLE_DIGEST, "a decision on examples/events.jsonl changed"


def test_synthetic_traffic_gives_the_recorded_bytes(tmp_path: Path) -> None:
    events = SMALL.write(tmp_path / "events.jsonl")
    assert digest(events.read_bytes()) == SMALL.input_digest, (
        "percorso.synthetic generates different traffic: the recorded digest no longer applies"
    )
    output = simulate(events, SMALL.until)
    kinds = Counter((r["kind"], r.get("reason", "")) for r in map(json.loads, output.splitlines()))
    # the input exercises what it is meant to: every kind of verdict appears
    for kind in [
        ("late", ""),
        ("duplicate", ""),
        ("suppressed", "cap"),
        ("suppressed", "suppression"),
    ]:
        assert kinds[kind] > 0, kind
    for reason in ("event", "window", "goal", "inactivity"):
        assert kinds[("transition", reason)] > 0, reason
    assert output.count(b"\n") == SMALL.lines, "records were added or lost"
    assert digest(output) == SMALL.digest, "a decision on the synthetic traffic changed"
