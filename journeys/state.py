"""A customer's state across all journeys, as plain typed dicts.

The shape is exactly the Avro record ``io.percorso.CustomerState`` (``schemas/``), so the
runtime stores it with the same framed codec as everything else and a newer engine reads older
state through Avro schema resolution; no conversion layer sits on the hot path.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict


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
    return CustomerState(
        customer_id=customer_id,
        watermark=0,
        seen=[],
        recent=[],
        timezone=None,
        opted_out=[],
        suppressions={},
        engagement={},
        sent=[],
        journeys={},
        pending=[],
    )
