"""Does a touchpoint match a condition? (Types, channels, attribute predicates.)"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, TypeAlias

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


# -- compiled ---------------------------------------------------------------------------------
#
# The engine does not interpret conditions per event. For each (channel, type) it meets, it
# asks once what is left of a condition: ``NEVER`` (the type or channel rules it out), ``None``
# (it holds for every touchpoint of that channel and type) or a test of the attributes, compiled
# from the predicates. ``matches`` stays the reference the compiled form is tested against.

AttributeTest: TypeAlias = Callable[[Mapping[str, str]], bool]


class Impossible:
    """The residual of a condition the touchpoint's channel or type already rules out."""

    def __repr__(self) -> str:
        return "NEVER"


NEVER: Final = Impossible()
Residual: TypeAlias = AttributeTest | Impossible | None


def compile_predicate(p: Predicate) -> AttributeTest:
    """``predicate_holds(p, attributes.get(p.attribute))`` as one small closure."""
    name, op, value = p.attribute, p.op, p.value
    if op == "exists":
        wanted = bool(value)
        return lambda a: (a.get(name) is not None) is wanted
    if op == "eq":
        return lambda a: a.get(name) == value
    if op == "ne":
        return lambda a: a.get(name) != value
    if op in ("in", "not_in"):
        members = frozenset(value)  # type: ignore[arg-type]
        if op == "in":
            return lambda a: a.get(name) in members
        return lambda a: a.get(name) not in members
    bound = float(value)  # type: ignore[arg-type]

    def compare(a: Mapping[str, str]) -> bool:
        number = _number(a.get(name))
        if number is None:
            return False
        if op == "gt":
            return number > bound
        if op == "gte":
            return number >= bound
        if op == "lt":
            return number < bound
        return number <= bound  # lte

    return compare


def compile_predicates(predicates: tuple[Predicate, ...]) -> AttributeTest | None:
    """All of them, in order; None when there are none."""
    if not predicates:
        return None
    tests = tuple(compile_predicate(p) for p in predicates)
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        first, second = tests
        return lambda a: first(a) and second(a)
    return lambda a: all(t(a) for t in tests)


def residual(c: Condition, channel: str, type_: str) -> Residual:
    """What ``c`` still has to check of a touchpoint of this channel and type."""
    if c.types and type_ not in c.types:
        return NEVER
    if c.channels and channel not in c.channels:
        return NEVER
    return compile_predicates(c.predicates)


def holds(test: Residual, attributes: Mapping[str, str]) -> bool:
    """A residual applied (the engine inlines this on its hot path)."""
    if test is None:
        return True
    if isinstance(test, Impossible):
        return False
    return test(attributes)
