"""Does a touchpoint match a condition? (Types, channels, attribute predicates.)"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from journeys.model import Condition, Predicate


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def predicate_holds(p: Predicate, value: str | None) -> bool:
    """Missing attributes satisfy only ``exists: false``, ``ne`` and ``not_in``; numeric
    comparisons on values that are not numbers are false."""
    op = p.op
    if op == "exists":
        return (value is not None) is bool(p.value)
    if op == "eq":
        return value == p.value
    if op == "ne":
        return value != p.value
    if op == "in":
        return value in p.value  # type: ignore[operator]
    if op == "not_in":
        return value not in p.value  # type: ignore[operator]
    number = _number(value)
    if number is None:
        return False
    bound = float(p.value)  # type: ignore[arg-type]
    if op == "gt":
        return number > bound
    if op == "gte":
        return number >= bound
    if op == "lt":
        return number < bound
    return number <= bound  # lte


def matches(c: Condition, touchpoint: Mapping[str, Any]) -> bool:
    if c.types and touchpoint["type"] not in c.types:
        return False
    if c.channels and touchpoint["channel"] not in c.channels:
        return False
    if c.predicates:
        attributes = touchpoint["attributes"]
        return all(predicate_holds(p, attributes.get(p.attribute)) for p in c.predicates)
    return True
