"""Durations in journey files: ``90s``, ``30m``, ``24h``, ``3d``, ``2w``, or combined ``1h30m``."""

from __future__ import annotations

import re

from journeys.limits import MAX_DURATION_MS

_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_PART = re.compile(r"(\d+)(ms|s|m|h|d|w)")
PATTERN = r"^(\d+(ms|s|m|h|d|w))+$"


def parse_duration_ms(text: str) -> int:
    """Milliseconds in ``text``; raises ValueError for anything that is not a positive duration
    of at most MAX_DURATION_MS."""
    if not isinstance(text, str) or not re.fullmatch(PATTERN, text.strip()):
        raise ValueError(f"{text!r} is not a duration (e.g. 90s, 30m, 24h, 3d, 1h30m)")
    total = sum(int(n) * _UNIT_MS[unit] for n, unit in _PART.findall(text.strip()))
    if total <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    if total > MAX_DURATION_MS:
        raise ValueError(
            f"{text!r} is longer than the limit of {format_duration_ms(MAX_DURATION_MS)} "
            f"(every deadline must fit the deadline index's key)"
        )
    return total


def format_duration_ms(ms: int) -> str:
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNIT_MS[unit]
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
