"""confluent-kafka clients and codecs built from Settings: one place for client defaults."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from percorso.codec import AvroCodec, SchemaRegistry, registry_from_env
from percorso.config import Settings
from percorso.topics import (
    ACTION_SUBJECT,
    CONVERSION_SUBJECT,
    TOUCHPOINT_SUBJECT,
    TRANSITION_SUBJECT,
)

log = logging.getLogger(__name__)


@dataclass
class Codecs:
    """The codecs of every record Percorso puts on the wire, sharing one registry."""

    registry: SchemaRegistry

    @classmethod
    def from_settings(cls, settings: Settings) -> Codecs:
        return cls(registry_from_env(settings.schema_registry_url))

    @cached_property
    def touchpoint(self) -> AvroCodec:
        return AvroCodec(self.registry, TOUCHPOINT_SUBJECT)

    @cached_property
    def action(self) -> AvroCodec:
        return AvroCodec(self.registry, ACTION_SUBJECT)

    @cached_property
    def transition(self) -> AvroCodec:
        return AvroCodec(self.registry, TRANSITION_SUBJECT)

    @cached_property
    def conversion(self) -> AvroCodec:
        return AvroCodec(self.registry, CONVERSION_SUBJECT)

    def for_subject(self, subject: str) -> AvroCodec:
        return {
            TOUCHPOINT_SUBJECT: self.touchpoint,
            ACTION_SUBJECT: self.action,
            TRANSITION_SUBJECT: self.transition,
            CONVERSION_SUBJECT: self.conversion,
        }[subject]


def producer(settings: Settings, **overrides: Any) -> Any:
    from confluent_kafka import Producer

    conf = {
        **settings.kafka_config(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "compression.type": "lz4",
        # The Java client's partitioner (murmur2), as Percorso's repartition topic and the
        # docs expect: librdkafka's default (CRC32) would put a customer's keyed touchpoints
        # on another partition than its re-keyed ones, splitting its state.
        "partitioner": "murmur2_random",
        "logger": log,
        **overrides,
    }
    return Producer(conf)


def admin(settings: Settings) -> Any:
    from confluent_kafka.admin import AdminClient

    conf: dict[str, Any] = {**settings.kafka_config(), "logger": log}
    return AdminClient(conf)


def consumer(settings: Settings, **overrides: Any) -> Any:
    from confluent_kafka import Consumer

    conf = {
        **settings.kafka_config(),
        "group.id": f"{settings.app_id}-tools",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "logger": log,
        **overrides,
    }
    return Consumer(conf)
