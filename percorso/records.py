"""Touchpoints as Percorso handles them: plain dicts with the Avro field names, times in epoch ms.

Parsing from JSON lines (``occurred_at`` ISO-8601 or epoch milliseconds) and the validation that
decoded records must pass before the engine sees them.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from percorso.limits import DEFAULT, ENV, Limits

TOUCHPOINT_FIELDS = (
    "event_id",
    "customer_id",
    "channel",
    "type",
    "occurred_at",
    "attributes",
    "source",
)
_REQUIRED_STRINGS = ("event_id", "customer_id", "channel", "type")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

# Event times before 2000-01-01 or after 2100-01-01 are taken for unit mistakes (seconds, µs).
_MIN_MS = 946_684_800_000
_MAX_MS = 4_102_444_800_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class InvalidTouchpoint(ValueError):
    """A touchpoint that must not reach the engine; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class FutureEvent(ValueError):
    """A touchpoint dated further ahead of the clock than the allowed skew."""


def parse_time_ms(value: Any, field: str = "occurred_at") -> int:
    """Epoch milliseconds from an int/float (ms) or an ISO-8601 string (naive means UTC)."""
    if isinstance(value, bool):
        raise InvalidTouchpoint(field, f"expected epoch milliseconds or ISO-8601, got {value!r}")
    if isinstance(value, int | float):
        ms = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            ms = int(text)
        else:
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise InvalidTouchpoint(
                    field, f"not ISO-8601 or epoch milliseconds: {value!r}"
                ) from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            ms = (parsed - _EPOCH) // timedelta(milliseconds=1)  # exact, no float rounding
    else:
        raise InvalidTouchpoint(
            field, f"expected epoch milliseconds or ISO-8601, got {type(value).__name__}"
        )
    if not _MIN_MS <= ms < _MAX_MS:
        raise InvalidTouchpoint(
            field,
            f"{value!r} is not a plausible epoch-milliseconds time "
            f"(seconds or microseconds by mistake?)",
        )
    return ms


def _size(value: str) -> int:
    """UTF-8 bytes of ``value``; -1 for a string that has none (a lone surrogate)."""
    if value.isascii():  # the common case, without encoding
        return len(value)
    try:
        return len(value.encode())
    except UnicodeEncodeError:
        return -1


def _refuse_size(field: str, value: str, limit: int, name: str) -> InvalidTouchpoint:
    if _size(value) < 0:
        return InvalidTouchpoint(field, "not valid Unicode (a lone surrogate)")
    return InvalidTouchpoint(
        field, f"longer than {limit} bytes of UTF-8 (limit {name}, {ENV[name]})"
    )


def _fits(value: str, limit: int) -> bool:
    return len(value) <= limit and 0 <= _size(value) <= limit  # characters <= bytes


def validate_touchpoint(
    record: Mapping[str, Any], limits: Limits = DEFAULT, correlated: Collection[str] = ()
) -> dict[str, Any]:
    """Check a decoded touchpoint against the record's rules and ``limits``; return it
    normalised (attributes present, source present). ``correlated``: the attributes a window
    correlates on, whose values have their own, smaller bound."""
    max_id = limits.max_id_bytes
    for name in _REQUIRED_STRINGS:
        value = record.get(name)
        if not isinstance(value, str) or not value.strip():
            raise InvalidTouchpoint(name, "required, a non-empty string")
        if not _fits(value, max_id):
            raise _refuse_size(name, value, max_id, "max_id_bytes")
        if _CONTROL.search(value):
            raise InvalidTouchpoint(name, "must not contain control characters (newline, NUL, ...)")
    occurred = record.get("occurred_at")
    if not isinstance(occurred, int) or isinstance(occurred, bool):
        raise InvalidTouchpoint("occurred_at", "required, epoch milliseconds")
    if not _MIN_MS <= occurred < _MAX_MS:
        raise InvalidTouchpoint("occurred_at", f"{occurred} is not a plausible epoch-ms time")
    attributes = record.get("attributes") or {}
    if not isinstance(attributes, Mapping):
        raise InvalidTouchpoint("attributes", "must map strings to strings")
    if len(attributes) > limits.max_attributes:
        raise InvalidTouchpoint(
            "attributes",
            f"{len(attributes)} attributes, more than {limits.max_attributes} "
            f"(limit max_attributes, {ENV['max_attributes']})",
        )
    max_key = limits.max_attribute_key_bytes
    max_value = limits.max_attribute_value_bytes
    max_correlation = limits.max_correlation_value_bytes
    for k, v in attributes.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidTouchpoint("attributes", "must map strings to strings")
        if not _fits(k, max_key):
            raise _refuse_size("attributes", k, max_key, "max_attribute_key_bytes")
        if k in correlated:
            if not _fits(v, max_correlation):
                raise _refuse_size(
                    f"attributes.{k}", v, max_correlation, "max_correlation_value_bytes"
                )
        elif not _fits(v, max_value):
            raise _refuse_size(f"attributes.{k}", v, max_value, "max_attribute_value_bytes")
    source = record.get("source")
    if source is not None:
        if not isinstance(source, str):
            raise InvalidTouchpoint("source", "a string or null")
        if not _fits(source, max_id):
            raise _refuse_size("source", source, max_id, "max_id_bytes")
    return {
        "event_id": record["event_id"],
        "customer_id": record["customer_id"],
        "channel": record["channel"],
        "type": record["type"],
        "occurred_at": occurred,
        "attributes": dict(attributes),
        "source": source,
    }


def check_event_time(occurred_at: int, now: int, limits: Limits = DEFAULT) -> None:
    """Refuse an event time more than ``limits.max_event_skew_ms`` ahead of ``now``."""
    ahead = occurred_at - now
    if ahead > limits.max_event_skew_ms:
        raise FutureEvent(
            f"occurred_at: {iso(occurred_at)} is {ahead} ms ahead of the clock ({iso(now)}), "
            f"more than the {limits.max_event_skew_ms} ms allowed "
            f"(limit max_event_skew_ms, {ENV['max_event_skew_ms']})"
        )


def touchpoint_from_json(
    obj: Any, limits: Limits = DEFAULT, correlated: Collection[str] = ()
) -> dict[str, Any]:
    """A touchpoint from one decoded JSON line; unknown fields are errors (typos lose data)."""
    if not isinstance(obj, dict):
        raise InvalidTouchpoint("(line)", f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(TOUCHPOINT_FIELDS))
    if unknown:
        raise InvalidTouchpoint(
            unknown[0], f"unknown field (expected fields: {', '.join(TOUCHPOINT_FIELDS)})"
        )
    if "occurred_at" not in obj:
        raise InvalidTouchpoint("occurred_at", "required")
    record = dict(obj)
    record["occurred_at"] = parse_time_ms(obj["occurred_at"])
    attributes = obj.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise InvalidTouchpoint("attributes", "must be an object of string values")
    converted = {}
    for key, value in attributes.items():
        if isinstance(value, bool):
            converted[key] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            converted[key] = str(value)
        else:
            raise InvalidTouchpoint(f"attributes.{key}", "values must be strings or numbers")
    record["attributes"] = converted
    return validate_touchpoint(record, limits, correlated)


def iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
