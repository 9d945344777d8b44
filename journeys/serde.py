"""Customer state on disk and in changelogs: Avro ``io.percorso.CustomerState``, Confluent-framed
with the repository's fixed ids (never a Schema Registry: state is private to Percorso).

A newer engine reads state written by an older one through Avro schema resolution, so state
survives upgrades without a migration step; ``tests/percorso/test_compat.py`` keeps the schema
BACKWARD_TRANSITIVE.
"""

from __future__ import annotations

from functools import cache
from typing import cast

from journeys.state import CustomerState
from percorso.codec import AvroCodec, LocalSchemaRegistry

STATE_SUBJECT = "io.percorso.CustomerState"


@cache
def state_codec() -> AvroCodec:
    return AvroCodec(LocalSchemaRegistry(), STATE_SUBJECT)


def encode_state(state: CustomerState) -> bytes:
    return state_codec().encode(state)


def decode_state(data: bytes) -> CustomerState:
    return cast(CustomerState, state_codec().decode(data))
