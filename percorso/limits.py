"""Upper bounds for touchpoints and for what a worker stores and sends, declared once.

A touchpoint is trusted to describe what a customer did, not to be small or well-formed: the
worker refuses anything beyond these bounds (``validate_touchpoint``, ``Processor.decode``)
before the engine or any send path sees it, and dead-letters it with a reason that names the
bound. That keeps every record the worker derives from a touchpoint (the re-keyed copy, the
customer's stored state and its changelog record, the actions and the dead letter itself) under
the 1 MB a Kafka record may carry by default, whatever a producer sends.

Each bound has a default here and a setting (``Settings.limits``, environment variable in
``ENV``); docs/operations.md lists them. The bounds on a customer's stored collections (event
ids, engagement channels, opt-outs) are part of the engine's decisions, so they are not
settings: they live in ``journeys/state.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

MAX_TOUCHPOINT_BYTES = 512 * 1024
"""Size of one input record's value (Avro, framing included) and headers together: a re-keyed
copy carries both. A touchpoint within every field bound below encodes to under 300 KB; beyond
this, the record is refused before it is decoded.
Half of Kafka's default 1 MB leaves room for headers and for the stored state a dead letter may
carry."""

MAX_ID_BYTES = 256
"""UTF-8 bytes of ``event_id``, ``customer_id``, ``channel``, ``type`` and ``source``. Ids and
names must also be free of control characters (newline, NUL, ...): a customer id is part of
the state table's keys and of the lists of customers a wake-up touched."""

MAX_ATTRIBUTES = 64
"""Attributes of one touchpoint; the shipped traffic has at most 6."""

MAX_ATTRIBUTE_KEY_BYTES = 256
"""UTF-8 bytes of an attribute name (journey files allow names of 256 characters)."""

MAX_ATTRIBUTE_VALUE_BYTES = 4096
"""UTF-8 bytes of an attribute value: room for a survey comment, not for a document."""

MAX_CORRELATION_VALUE_BYTES = 256
"""UTF-8 bytes of the value of an attribute a window correlates on (``correlate:`` in a
journey file, e.g. ``sku`` or ``topic``): the value becomes part of the window's key, of its
instance id and of the trigger of every action the window causes."""

MAX_STATE_BYTES = 512 * 1024
"""Size of one customer's stored value (state and stage summary). The bounded collections keep
a customer far below it (a few KB in the shipped journeys); a value beyond it is not written at
the checkpoint: the customer keeps its last stored value and the value goes to the dead-letter
topic (``StateTooLarge``), so the changelog record always fits in a Kafka record."""

MAX_EVENT_SKEW_MS = 5 * 60_000
"""How far a touchpoint's ``occurred_at`` may be ahead of the worker's wall clock (clocks of
channel systems drift). Beyond it the touchpoint is dead-lettered (``FutureEvent``): accepted,
it would move the customer's event time ahead and make every later real touchpoint late."""

MAX_DEAD_LETTER_BYTES = 768 * 1024
"""Key, value and headers of one dead letter together. A record beyond it (an oversized
touchpoint, a large stored state in a header) is cut to fit, with headers saying so
(``percorso.error.truncated``, ``percorso.error.original_size``); librdkafka's default
``message.max.bytes`` is 1,000,000."""


@dataclass(frozen=True)
class Limits:
    """The bounds a worker enforces (defaults: the constants of this module)."""

    max_touchpoint_bytes: int = MAX_TOUCHPOINT_BYTES
    max_id_bytes: int = MAX_ID_BYTES
    max_attributes: int = MAX_ATTRIBUTES
    max_attribute_key_bytes: int = MAX_ATTRIBUTE_KEY_BYTES
    max_attribute_value_bytes: int = MAX_ATTRIBUTE_VALUE_BYTES
    max_correlation_value_bytes: int = MAX_CORRELATION_VALUE_BYTES
    max_state_bytes: int = MAX_STATE_BYTES
    max_event_skew_ms: int = MAX_EVENT_SKEW_MS
    max_dead_letter_bytes: int = MAX_DEAD_LETTER_BYTES

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"limit {f.name} must not be negative")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Limits:
        limits = cls()
        for name, variable in ENV.items():
            if env.get(variable):
                try:
                    limits = replace(limits, **{name: int(env[variable])})
                except ValueError as exc:
                    raise ValueError(f"{variable}={env[variable]!r}: {exc}") from None
        return limits


ENV = {
    "max_touchpoint_bytes": "PERCORSO_MAX_TOUCHPOINT_BYTES",
    "max_id_bytes": "PERCORSO_MAX_ID_BYTES",
    "max_attributes": "PERCORSO_MAX_ATTRIBUTES",
    "max_attribute_key_bytes": "PERCORSO_MAX_ATTRIBUTE_KEY_BYTES",
    "max_attribute_value_bytes": "PERCORSO_MAX_ATTRIBUTE_VALUE_BYTES",
    "max_correlation_value_bytes": "PERCORSO_MAX_CORRELATION_VALUE_BYTES",
    "max_state_bytes": "PERCORSO_MAX_STATE_BYTES",
    "max_event_skew_ms": "PERCORSO_MAX_EVENT_SKEW_MS",
    "max_dead_letter_bytes": "PERCORSO_MAX_DEAD_LETTER_BYTES",
}
"""The environment variable of every limit."""

DEFAULT = Limits()
