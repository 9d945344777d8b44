"""A customer's state across all journeys, as plain typed dicts.

The shape is exactly the Avro record ``io.percorso.CustomerState`` (``schemas/``), so the
runtime stores it with the same framed codec as everything else and a newer engine reads older
state through Avro schema resolution; no conversion layer sits on the hot path.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

# Bounds on the collections a customer's touchpoints make grow. They are part of the engine's
# decisions (the same in every worker and in ``percorso simulate``), so they are constants, not
# settings; the shipped journeys and traffic stay far inside them. Touchpoint fields are bounded
# before they get here (``percorso.limits``), which bounds every stored string; these bound the
# number of them. Windows are bounded in ``journeys.engine`` (MAX_WINDOWS_PER_JOURNEY), context
# attributes too (MAX_CONTEXT_ATTRIBUTES, MAX_ATTRIBUTE_CHARS).

MAX_SEEN_CHARS = 16 * 1024
"""Characters of the event ids remembered for de-duplication, together. The policy's
``remember_events`` (64 shipped) is the first bound; when the ids are long, the oldest are
forgotten first until the rest fit (64 ids of the longest allowed 256 bytes just fit)."""

MAX_ENGAGEMENT_CHANNELS = 32
"""Channels whose touchpoints are counted for the channel choice. A touchpoint on a new channel
when 32 are counted replaces the least engaged one (ties: the first counted), so the channels a
customer really uses are kept; the shipped traffic uses 10."""

MAX_OPTED_OUT = 32
"""Channels a customer withdrew consent for, one by one. A withdrawal beyond 32 distinct
channels is recorded as a withdrawal for all channels (``all``): when in doubt, do not send."""

MAX_CHANNEL_CHARS = 256
"""Characters of a channel name a consent change may name (the consent channel attribute):
longer, it cannot name a channel of any journey file, and the change is ignored."""


class RecentTouchpoint(TypedDict):
    event_id: str
    channel: str
    type: str
    occurred_at: int
    attributes: dict[str, str]


class WindowState(TypedDict):
    key: str  # the window id, plus correlation values for correlated windows
    window: str
    instance_id: str  # the trigger id of what the window causes
    origin_event: str  # the touchpoint that armed it (or armed the window that armed it)
    armed_at: int
    deadline: int
    correlation: dict[str, str]
    attributes: dict[str, str]  # of the arming touchpoint, for action parameters


class JourneyState(TypedDict):
    instance: int
    active: bool
    stage: str | None
    stage_since: int
    entered_at: int
    last_activity: int
    exited_at: int | None
    touchpoints: int
    channel_switches: int
    last_channel: str | None
    satisfaction: float | None
    windows: list[WindowState]
    # journeys.lifecycle, only for journeys measured by conversions: absent in older state and
    # in the others. Not in the Avro record, which only reads values stored before the
    # MessagePack envelope (agents.stored version 1, whose journeys had no conversions).
    last_action: NotRequired[str | None]  # the last action this instance sent
    converted_at: NotRequired[int | None]  # when this instance converted


class PendingAction(TypedDict):
    """An action deferred by quiet hours, released at ``due``."""

    due: int
    decided_at: int
    action_id: str
    journey_id: str
    action: str
    channel: str
    priority: int
    trigger: str
    trigger_kind: str
    parameters: dict[str, str]
    category: str
    variant: str | None
    expires_at: int | None


class SentAction(TypedDict):
    at: int
    channel: str


class CustomerState(TypedDict):
    customer_id: str
    watermark: int  # the latest event time seen for this customer
    seen: list[str]  # the most recent event ids, oldest first, for de-duplication
    recent: list[RecentTouchpoint]  # newest first
    timezone: str | None
    opted_out: list[str]  # channels without consent ("all" for every channel)
    suppressions: dict[str, int]  # active suppression id -> since
    engagement: dict[str, int]  # channel -> touchpoints the customer made there
    sent: list[SentAction]  # for frequency caps (future entries: deferred, reserved)
    journeys: dict[str, JourneyState]
    pending: list[PendingAction]


def new_customer(customer_id: str) -> CustomerState:
    return {  # a literal: cheaper than calling the TypedDict, on every new customer
        "customer_id": customer_id,
        "watermark": 0,
        "seen": [],
        "recent": [],
        "timezone": None,
        "opted_out": [],
        "suppressions": {},
        "engagement": {},
        "sent": [],
        "journeys": {},
        "pending": [],
    }
