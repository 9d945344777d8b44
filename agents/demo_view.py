"""What ``percorso demo`` shows: drawn from the analytics process's ``/api/overview``.

One function per form: ``live_view`` (rich, redrawn in place, fits 80x24), ``summary_view``
(the one screen left after Ctrl-C) and ``plain_line`` (one greppable line, for pipes and logs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CHANNELS = ("email", "sms", "push", "agent", "web", "app")
LAST_ACTIONS = 2


@dataclass
class DemoStatus:
    """What the demo itself knows, next to the analytics overview."""

    page_url: str
    broker: str
    time_scale: float
    produced: int
    rate: float
    poison: int
    elapsed_s: float


def _n(value: Any) -> str:
    return "-" if value is None else f"{value:,}"


def _short(value: Any) -> str:
    """A count in at most four characters: 9999, 12k, 123k, 1.2M, 12M."""
    if value is None:
        return "-"
    for limit, unit in ((1_000_000, "M"), (1_000, "k")):
        if value >= max(limit, 10_000):
            scaled = value / limit
            return f"{scaled:.1f}{unit}" if scaled < 10 else f"{scaled:.0f}{unit}"
    return str(value)


def totals(overview: dict[str, Any] | None) -> dict[str, int]:
    if not overview:
        return {"transitions": 0, "actions": 0, "deferred": 0, "dead_letters": 0}
    t = overview["totals"]
    return {
        "transitions": t.get("transitions", 0),
        "actions": t.get("actions", 0),
        "deferred": sum(d["deferred"] for d in overview["detail"].values() if d),
        "dead_letters": overview["dead_letters"]["total"],
    }


def by_action(overview: dict[str, Any] | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for journey_id, d in sorted((overview or {}).get("detail", {}).items()):
        for a in d["actions"] if d else []:
            key = f"{journey_id}/{a['action']}"
            out[key] = out.get(key, 0) + a["count"]
    return out


def plain_line(
    status: DemoStatus, overview: dict[str, Any] | None, with_actions: bool = True
) -> str:
    t = totals(overview)
    line = (
        f"touchpoints={status.produced} transitions={t['transitions']} actions={t['actions']} "
        f"deferred={t['deferred']} dead_letters={t['dead_letters']}"
    )
    return f"{line} by_action={by_action(overview)}" if with_actions else line


def _header(
    status: DemoStatus, overview: dict[str, Any] | None, title: str, page: bool = True
) -> Any:
    from rich.console import Group
    from rich.text import Text

    lag = (overview or {}).get("workers", {}).get("lag")
    top = Text(title, style="bold")
    if page:
        top.append(" · journey page ")
        top.append(status.page_url, style="bold cyan underline")
    second = Text(
        f"{_n(status.produced)} touchpoints, {status.rate:.0f}/s · worker lag {_short(lag)} · "
        f"durations ÷{status.time_scale:g} · broker {status.broker}",
        style="dim",
    )
    for line in (top, second):
        line.no_wrap = True
        line.overflow = "ellipsis"
    return Group(top, second)


def _stages(overview: dict[str, Any] | None) -> Any:
    from rich.table import Table

    table = Table(box=None, pad_edge=False, expand=True, header_style="bold underline")
    table.add_column("journey", no_wrap=True, style="bold")
    table.add_column("customers in each stage now", ratio=1)
    for j in (overview or {}).get("journeys", []):
        # "stage:count", no space inside: a wrapped cell never parts a stage from its count
        stages = "  ".join(f"{s}:[bold]{_short(n)}[/]" for s, n in j["now"].items())
        table.add_row(j["journey_id"], stages)
    return table


def _flows(overview: dict[str, Any] | None) -> Any:
    """Per journey: entries, completions, other exits, then actions by channel."""
    from rich.table import Table

    detail = (overview or {}).get("detail", {})
    counts: dict[str, dict[str, int]] = {}
    for journey_id, d in sorted(detail.items()):
        row = counts.setdefault(journey_id, {})
        for a in d["actions"] if d else []:
            row[a["channel"]] = row.get(a["channel"], 0) + a["count"]
    channels = [c for c in CHANNELS if any(c in r for r in counts.values())]
    channels += sorted({c for r in counts.values() for c in r} - set(channels))
    table = Table(
        box=None, padding=(0, 0, 0, 1), pad_edge=False, expand=True, header_style="bold underline"
    )
    table.add_column("journey", no_wrap=True, style="bold")
    for name in ("entered", "goal", "exited"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("", no_wrap=True, width=1)
    for c in channels or ["actions"]:
        table.add_column(c, justify="right", no_wrap=True)
    for journey_id, d in sorted(detail.items()):
        if not d:
            continue
        ended = sum(d["exits"].values())
        row = counts[journey_id]
        table.add_row(
            journey_id,
            _short(d["entries"]),
            _short(d["completions"]),
            _short(ended - d["completions"]),
            "",
            *(_short(row[c]) if c in row else "" for c in channels or ["actions"]),
        )
    return table


def _last_actions(overview: dict[str, Any] | None, limit: int) -> Any:
    from rich.table import Table
    from rich.text import Text

    latest: list[dict[str, Any]] = []
    for d in (overview or {}).get("detail", {}).values():
        latest += d["last_actions"] if d else []
    latest.sort(key=lambda a: a.get("created_at") or 0, reverse=True)
    grid = Table.grid(expand=True)
    grid.add_column(no_wrap=True, overflow="ellipsis")
    grid.add_row(Text("latest actions, with the context the channel receives", style="bold"))
    for a in latest[:limit]:
        stages = ", ".join(f"{k}={v}" for k, v in a["context"]["stages"].items())
        recent = " ← ".join(f"{r['channel']}:{r['type']}" for r in a["context"]["recent"][:4])
        grid.add_row(
            Text.assemble(
                (a["customer_id"], "cyan"),
                " ",
                (a["action"], "bold"),
                " → ",
                (a["channel"], "bold green"),
                f" (in {a['stage']})" if a.get("stage") else "",
            )
        )
        grid.add_row(Text.assemble("  ", (recent or "-", ""), "  ", (stages, "dim")))
    if not latest:
        grid.add_row(Text("none yet (cart reminders come once a cart waits 30 s)", style="dim"))
    return grid


def _dead_letters(overview: dict[str, Any] | None, poison: int) -> Any:
    from rich.text import Text

    dead = (overview or {}).get("dead_letters") or {"total": 0, "by_class": {}, "last": []}
    classes = ", ".join(f"{c} {_short(n)}" for c, n in dead["by_class"].items()) or "none"
    line = Text.assemble(
        ("dead letters ", "bold"),
        f"{_short(dead['total'])} ({classes}; {poison} sent broken on purpose)",
    )
    if dead["last"]:
        line.append(f" — {dead['last'][0]['message']}", style="dim")
    line.no_wrap = True
    line.overflow = "ellipsis"
    return line


def live_view(status: DemoStatus, overview: dict[str, Any] | None) -> Any:
    from rich.console import Group

    return Group(
        _header(status, overview, "Percorso demo (Ctrl-C stops)"),
        _stages(overview),
        _flows(overview),
        _last_actions(overview, LAST_ACTIONS),
        _dead_letters(overview, status.poison),
    )


def summary_view(status: DemoStatus, overview: dict[str, Any] | None) -> Any:
    from rich.console import Group
    from rich.text import Text

    t = totals(overview)
    return Group(
        _header(
            status, overview, f"Percorso demo stopped after {status.elapsed_s:.0f} s", page=False
        ),
        _stages(overview),
        _flows(overview),
        _dead_letters(overview, status.poison),
        Text(
            f"{_n(status.produced)} touchpoints → {_n(t['transitions'])} transitions, "
            f"{_n(t['actions'])} actions, {_n(t['deferred'])} after quiet hours",
            style="bold",
            no_wrap=True,
            overflow="ellipsis",
        ),
    )
