"""Touchpoints as Percorso handles them: plain dicts with the Avro field names, times in epoch ms.

Parsing from JSON lines (``occurred_at`` ISO-8601 or epoch milliseconds) and the validation that
decoded records must pass before the engine sees them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

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

# Event times before 2000-01-01 or after 2100-01-01 are taken for unit mistakes (seconds, µs).
_MIN_MS = 946_684_800_000
_MAX_MS = 4_102_444_800_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class InvalidTouchpoint(ValueError):
    """A touchpoint that must not reach the engine; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


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


def validate_touchpoint(record: Mapping[str, Any]) -> dict[str, Any]:
    """Check a decoded touchpoint; return it normalised (attributes present, source present)."""
    for name in _REQUIRED_STRINGS:
        value = record.get(name)
        if not isinstance(value, str) or not value.strip():
            raise InvalidTouchpoint(name, "required, a non-empty string")
    occurred = record.get("occurred_at")
    if not isinstance(occurred, int) or isinstance(occurred, bool):
        raise InvalidTouchpoint("occurred_at", "required, epoch milliseconds")
    if not _MIN_MS <= occurred < _MAX_MS:
        raise InvalidTouchpoint("occurred_at", f"{occurred} is not a plausible epoch-ms time")
    attributes = record.get("attributes") or {}
    if not isinstance(attributes, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()
    ):
        raise InvalidTouchpoint("attributes", "must map strings to strings")
    return {
        "event_id": record["event_id"],
        "customer_id": record["customer_id"],
        "channel": record["channel"],
        "type": record["type"],
        "occurred_at": occurred,
        "attributes": dict(attributes),
        "source": record.get("source"),
    }


def touchpoint_from_json(obj: Any) -> dict[str, Any]:
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
    return validate_touchpoint(record)


def iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
