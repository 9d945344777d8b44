"""The demo's terminal view fits an 80x24 terminal, whatever the figures."""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

from rich.console import Console

from agents.demo_view import DemoStatus, live_view, plain_line, summary_view
from percorso.analytics.figures import JourneyFigures, action_summary
from percorso.analytics.service import journey_catalog
from percorso.config import Settings


def busy_overview() -> dict[str, Any]:
    """Every shipped journey, every stage occupied, six-digit counts, every channel used."""
    order, names = journey_catalog(Settings())
    detail = {}
    for journey_id, stages in order.items():
        f = JourneyFigures(journey_id, entries=987_654)
        f.now = Counter({s: 123_456 for s in stages})
        f.reached = Counter({s: 234_567 for s in stages})
        f.exits = Counter({"goal": 45_678, "exit": 3_456, "inactivity": 99_999})
        f.actions = Counter(
            {f"some_long_action_name\t{c}": 88_888 for c in Settings().action_channels}
        )
        for i in range(3):
            f.action(
                {
                    "action_id": f"{journey_id}-{i}",
                    "customer_id": f"c-1796268592-{i:06d}",
                    "journey_id": journey_id,
                    "action": "send_cart_reminder",
                    "channel": "email",
                    "stage": stages[-1],
                    "created_at": i,
                    "parameters": {"sku": "X" * 40},
                    "context": {
                        "stages": {j: s[0] for j, s in order.items()},
                        "recent": [
                            {
                                "channel": "call_center",
                                "type": "survey_response",
                                "occurred_at": 0,
                                "attributes": {},
                            }
                        ]
                        * 6,
                    },
                }
            )
        detail[journey_id] = f.view(stages)
    assert action_summary  # the view reads what the analytics process stores
    return {
        "journeys": [
            {
                "journey_id": j,
                "name": names[j],
                **{k: d[k] for k in ("entries", "active", "completions", "actions_total", "now")},
            }
            for j, d in detail.items()
        ],
        "detail": detail,
        "dead_letters": {
            "total": 12_345,
            "by_class": {"SerializationError": 12_000, "InvalidTouchpoint": 300, "LateEvent": 45},
            "last": [{"class": "SerializationError", "message": "cannot decode " * 20}],
        },
        "workers": {"lag": 123_456},
        "stream": {"events_per_second": 999.0, "lag": 5},
        "totals": {"transitions": 1_234_567, "actions": 7_654_321},
    }


STATUS = DemoStatus(
    page_url="http://127.0.0.1:6067/",
    broker="127.0.0.1:49679 (embedded)",
    time_scale=60,
    produced=1_234_567,
    rate=40.0,
    poison=17,
    elapsed_s=95,
)


def render(renderable: Any) -> list[str]:
    out = io.StringIO()
    console = Console(file=out, width=80, height=24, force_terminal=True, color_system=None)
    console.print(renderable)
    return out.getvalue().rstrip("\n").split("\n")


def test_live_view_fits_80_by_24_with_busy_figures() -> None:
    lines = render(live_view(STATUS, busy_overview()))
    assert max(len(line) for line in lines) <= 80
    assert len(lines) <= 23, "\n".join(lines)  # one line to spare: nothing scrolls
    text = "\n".join(lines)
    assert "http://127.0.0.1:6067/" in text  # the journey page's URL
    assert "cart_recovery" in text and "carted:123k" in text
    assert "SerializationError 12k" in text
    assert "call_center:survey_response" in text  # the context the channel received


def test_views_before_any_figures_and_the_summary_fit_one_screen() -> None:
    assert len(render(live_view(STATUS, None))) <= 23
    summary = render(summary_view(STATUS, busy_overview()))
    assert max(len(line) for line in summary) <= 80 and len(summary) <= 22
    assert "1,234,567 touchpoints → 1,234,567 transitions, 7,654,321 actions" in "\n".join(summary)


def test_plain_line_is_one_line_of_totals() -> None:
    line = plain_line(STATUS, busy_overview())
    assert line.startswith("touchpoints=1234567 transitions=1234567 actions=7654321 ")
    assert "by_action={" in line and "\n" not in line
