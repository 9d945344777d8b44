"""``percorso tail TOPIC``: decode a Percorso topic to JSON lines."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

from percorso.clients import Codecs
from percorso.codec import AvroCodec, SerializationError
from percorso.config import Settings
from percorso.topics import (
    ACTION_SUBJECT,
    CONVERSION_SUBJECT,
    TOUCHPOINT_SUBJECT,
    TRANSITION_SUBJECT,
)


def subject_for(settings: Settings, topic: str) -> str | None:
    """The record type on ``topic``; None for the dead-letter topic (raw bytes)."""
    t = settings.topics
    if topic == t.dlq:
        return None
    if topic == t.touchpoints:
        return TOUCHPOINT_SUBJECT
    if topic == t.transitions:
        return TRANSITION_SUBJECT
    if topic == t.conversions:
        return CONVERSION_SUBJECT
    if topic.startswith(t.actions_prefix):
        return ACTION_SUBJECT
    raise ValueError(
        f"{topic!r} is not a Percorso topic (input {t.touchpoints}, actions "
        f"{t.actions_prefix}<channel>, {t.transitions}, {t.conversions}, {t.dlq})"
    )


def decode_message(msg: Any, codec: AvroCodec | None, with_meta: bool) -> dict[str, Any]:
    headers = {
        k: (v.decode(errors="replace") if v is not None else None) for k, v in (msg.headers() or [])
    }
    key = msg.key().decode(errors="replace") if msg.key() is not None else None
    meta = {
        "topic": msg.topic(),
        "partition": msg.partition(),
        "offset": msg.offset(),
        "key": key,
        "headers": headers,
    }
    if codec is None:  # dead letters: the original bytes, as they were (null stays null)
        raw = msg.value()
        return {**meta, "value_base64": None if raw is None else base64.b64encode(raw).decode()}
    value: Any
    try:
        value = codec.decode(msg.value())
    except SerializationError as exc:
        value = {"undecodable": str(exc)}
    if not with_meta:
        return value
    return {
        "topic": msg.topic(),
        "partition": msg.partition(),
        "offset": msg.offset(),
        "key": key,
        "headers": headers,
        "value": value,
    }


def tail(
    settings: Settings,
    topic: str,
    codecs: Codecs,
    from_beginning: bool = True,
    max_messages: int | None = None,
    idle_timeout: float | None = None,
    with_meta: bool = False,
) -> Iterator[dict[str, Any]]:
    """Yield decoded messages. Reads every partition by assignment (no consumer group), so it
    neither commits offsets nor waits for a group rebalance."""
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

    subject = subject_for(settings, topic)
    codec = codecs.for_subject(subject) if subject else None
    consumer = Consumer(
        {
            **settings.kafka_config(),
            "group.id": "percorso-tail",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        if topic not in metadata.topics or metadata.topics[topic].error is not None:
            raise ValueError(f"topic {topic!r} does not exist")
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign(
            [TopicPartition(topic, p, start) for p in sorted(metadata.topics[topic].partitions)]
        )
        seen = 0
        last = time.monotonic()
        while max_messages is None or seen < max_messages:
            msg = consumer.poll(0.2)
            if msg is None:
                if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                    return
                continue
            if msg.error():
                continue
            last = time.monotonic()
            seen += 1
            yield decode_message(msg, codec, with_meta)
    finally:
        consumer.close()


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
