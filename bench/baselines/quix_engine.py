"""Quix Streams running Percorso's own engine: the same journey work as ``percorso worker``, in
the peer's runtime. Per record: Avro decode of the touchpoint with Percorso's codec (Confluent
framing, the local registry of ids, as the worker reads it), validation, the customer's state
from Quix's RocksDB store (keyed by customer id: the input is keyed that way), decoded and
encoded with Percorso's Avro state codec, ``Engine.advance``, and the transitions and actions
encoded with Percorso's codecs and produced with Quix's ``to_topic``. Invalid and late
touchpoints go to the dead-letter topic, as the worker sends them.

Runs in the Quix virtualenv (Quix pins an older confluent-kafka than Percorso), from the
repository: ``python -m bench.baselines.quix_engine`` with the repository as working directory,
so ``percorso`` and ``journeys`` import from it. Configured by the BENCH_* variables; prints
``BENCH n=<count> first=<t> last=<t>`` (monotonic seconds) once it has processed the target,
then ``BENCH-OUTPUTS`` with what it produced, and stops gracefully (Quix commits its
checkpoint and flushes the producer).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from quixstreams import Application
from quixstreams.models.serializers import Serializer

from journeys.engine import Engine
from journeys.loader import load_catalog
from journeys.serde import decode_state, encode_state
from percorso.clients import Codecs
from percorso.codec import SerializationError
from percorso.config import Settings
from percorso.records import InvalidTouchpoint, validate_touchpoint

STATE_KEY = b"customer"  # one value per customer: the state store is keyed by the message key
STOP_GRACE_S = 120.0  # after the target: time allowed for Quix's final checkpoint

target = int(os.environ["BENCH_TARGET"])
transitions_name = os.environ["BENCH_TRANSITIONS"]
actions_prefix = os.environ["BENCH_ACTIONS_PREFIX"]
dlq_name = os.environ["BENCH_DLQ"]
channels = os.environ["BENCH_CHANNELS"].split(",")

settings = Settings()  # the shipped catalog, and the local registry of schema ids
codecs = Codecs.from_settings(settings)
touchpoint_codec, transition_codec, action_codec = (
    codecs.touchpoint,
    codecs.transition,
    codecs.action,
)
engine = Engine(load_catalog(settings.journeys_dir))


class Encoded(Serializer):
    """Output values are (topic, bytes, headers): the bytes are already Percorso's Avro."""

    def __call__(self, value: tuple[Any, bytes, list[tuple[str, bytes]]], ctx: Any) -> bytes:
        return value[1]


app = Application(
    broker_address=os.environ["BENCH_BROKER"],
    consumer_group=os.environ["BENCH_APP_ID"],
    auto_offset_reset="earliest",
    state_dir=os.environ["BENCH_DATA"],
    processing_guarantee="at-least-once",
    consumer_extra_config={"session.timeout.ms": 6000},
)
source = app.topic(os.environ["BENCH_TOPIC"], key_deserializer="bytes", value_deserializer="bytes")


def output(name: str) -> Any:
    return app.topic(name, key_serializer="bytes", value_serializer=Encoded())


transitions_topic = output(transitions_name)
dlq_topic = output(dlq_name)
action_topics = {c: output(f"{actions_prefix}{c}") for c in channels}
counts = {"n": 0, "first": 0.0, "transitions": 0, "actions": 0, "dead_letters": 0}


def dead_letter(value: bytes, error_class: str, message: str) -> tuple[Any, bytes, list[Any]]:
    headers = [
        ("percorso.error.class", error_class.encode()),
        ("percorso.error.message", message[:4000].encode()),
    ]
    counts["dead_letters"] += 1
    return (dlq_topic, value, headers)


def process(value: bytes, key: bytes, _timestamp: int, _headers: Any, state: Any) -> list[Any]:
    if counts["n"] == 0:
        counts["first"] = time.monotonic()
    counts["n"] += 1
    out: list[Any] = []
    try:
        touchpoint = validate_touchpoint(touchpoint_codec.decode(value))
    except SerializationError as exc:
        out.append(dead_letter(value, "SerializationError", str(exc)))
    except InvalidTouchpoint as exc:
        out.append(dead_letter(value, "InvalidTouchpoint", str(exc)))
    else:
        if key != touchpoint["customer_id"].encode():
            # the worker re-keys such input through a repartition topic; the bench's is keyed
            raise RuntimeError(f"input not keyed by customer id: {key!r}")
        stored = state.get_bytes(STATE_KEY)
        step = engine.advance(
            decode_state(stored) if stored is not None else None,
            touchpoint,
            int(time.time() * 1000),
        )
        if step.outcome == "late":
            out.append(dead_letter(value, "LateEvent", "older than the allowed lateness"))
        else:
            state.set_bytes(STATE_KEY, encode_state(step.state))
            for t in step.transitions:
                out.append((transitions_topic, transition_codec.encode(t), []))
            for a in step.actions:
                headers = [
                    ("percorso.action_id", a["action_id"].encode()),
                    ("percorso.journey_id", a["journey_id"].encode()),
                ]
                out.append((action_topics[a["channel"]], action_codec.encode(a), headers))
            counts["transitions"] += len(step.transitions)
            counts["actions"] += len(step.actions)
    if counts["n"] == target:
        print(f"BENCH n={counts['n']} first={counts['first']} last={time.monotonic()}", flush=True)
        print(
            f"BENCH-OUTPUTS transitions={counts['transitions']} actions={counts['actions']} "
            f"dead_letters={counts['dead_letters']}",
            flush=True,
        )
        app.stop()  # after this record's outputs: Quix commits and flushes on the way out
        threading.Timer(STOP_GRACE_S, os._exit, (1,)).start()
    return out


sdf = app.dataframe(source)
sdf = sdf.apply(process, stateful=True, metadata=True, expand=True)
sdf = sdf.set_headers(lambda value, _key, _timestamp, _headers: value[2])
sdf.to_topic(lambda value, _key, _timestamp, _headers: value[0])

if __name__ == "__main__":
    app.run()
    print("BENCH-STOPPED", flush=True)
    os._exit(0)  # the grace timer is a non-daemon thread
