"""ConfluentSchemaRegistry, through the real confluent-kafka client, against two servers: an
in-process stand-in speaking the subset of the Schema Registry REST API the client uses, and a real
Schema Registry (Apicurio Registry's Confluent-compatible API, see registry_server.py)."""

from __future__ import annotations

import json
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from registry_server import RegistryServer

from percorso import clients
from percorso.clients import Codecs
from percorso.codec import (
    AvroCodec,
    ConfluentSchemaRegistry,
    IncompatibleSchemaError,
    LocalSchemaRegistry,
    SerializationError,
)
from percorso.config import Settings
from percorso.produce import TouchpointSender, send_all
from percorso.tail import tail
from percorso.topics import TOUCHPOINT_SUBJECT, ensure_topics, percorso_topics


class FakeRegistry:
    def __init__(self) -> None:
        self.schemas: dict[int, str] = {}
        self.subjects: dict[str, list[int]] = {}
        self.refuse: set[str] = set()
        self.next_id = 100


def serve(registry: FakeRegistry) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # register: /subjects/<subject>/versions
            parts = self.path.split("?")[0].strip("/").split("/")
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            subject = parts[1]
            if subject in registry.refuse:
                self._reply(409, {"error_code": 409, "message": "incompatible schema"})
                return
            schema = json.dumps(json.loads(body["schema"]), sort_keys=True)
            sid = next((i for i, text in registry.schemas.items() if text == schema), None)
            if sid is None:
                sid = registry.next_id
                registry.next_id += 1
                registry.schemas[sid] = schema
            versions = registry.subjects.setdefault(subject, [])
            if sid not in versions:  # registering a subject's existing version is a no-op
                versions.append(sid)
            self._reply(200, {"id": sid})

        def do_GET(self) -> None:  # /schemas/ids/<id>, /subjects/<subject>/versions
            parts = self.path.split("?")[0].strip("/").split("/")
            if parts[:2] == ["schemas", "ids"] and int(parts[2]) in registry.schemas:
                self._reply(200, {"schema": registry.schemas[int(parts[2])]})
            elif parts[:1] == ["subjects"] and parts[2:] == ["versions"]:
                ids = registry.subjects.get(urllib.parse.unquote(parts[1]), [])
                self._reply(200, list(range(1, len(ids) + 1)))
            elif parts[:1] == ["subjects"] and parts[2:3] == ["versions"]:
                ids = registry.subjects[urllib.parse.unquote(parts[1])]
                self._reply(200, {"id": ids[int(parts[3]) - 1], "version": int(parts[3])})
            else:
                self._reply(404, {"error_code": 40403, "message": "Schema not found"})

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def subject_ids(url: str, subject: str) -> list[int]:
    """The schema ids of ``subject``'s versions, oldest first, as the server at ``url`` reports."""

    def get(path: str) -> Any:
        with urllib.request.urlopen(url + path, timeout=30) as resp:
            return json.loads(resp.read())

    quoted = urllib.parse.quote(subject, safe="")
    return [
        get(f"/subjects/{quoted}/versions/{v}")["id"] for v in get(f"/subjects/{quoted}/versions")
    ]


def clear(server: RegistryServer) -> None:
    """Delete every subject (with its versions and settings): the server lives for the session."""
    for subject in server.request("GET", "/subjects"):
        quoted = urllib.parse.quote(subject, safe="")
        server.request("DELETE", f"/subjects/{quoted}")
        server.request("DELETE", f"/subjects/{quoted}?permanent=true")
    assert server.request("GET", "/subjects") == []


class RegistryUnderTest:
    """One server the tests run against: its URL, what it holds, and how to make it refuse."""

    def __init__(
        self, url: str, refuse: Callable[[str], None], server: RegistryServer | None = None
    ) -> None:
        self.url = url
        self.refuse = refuse
        self.server = server

    def ids(self, subject: str) -> list[int]:
        return subject_ids(self.url, subject)


def _stand_in(request: pytest.FixtureRequest) -> Iterator[RegistryUnderTest]:
    registry = FakeRegistry()
    server = serve(registry)
    yield RegistryUnderTest(f"http://127.0.0.1:{server.server_address[1]}", registry.refuse.add)
    server.shutdown()


# A record named like Action with nothing in common: BACKWARD compatibility refuses Action v1
# after it, because Action's required fields have no defaults.
UNRELATED_ACTION = {
    "type": "record",
    "name": "Action",
    "namespace": "io.percorso",
    "fields": [{"name": "unrelated", "type": "int"}],
}


def _real(request: pytest.FixtureRequest) -> Iterator[RegistryUnderTest]:
    server: RegistryServer = request.getfixturevalue("apicurio")

    def refuse(subject: str) -> None:
        quoted = urllib.parse.quote(subject, safe="")
        server.request("PUT", f"/config/{quoted}", {"compatibility": "BACKWARD"})
        server.request(
            "POST", f"/subjects/{quoted}/versions", {"schema": json.dumps(UNRELATED_ACTION)}
        )

    clear(server)
    yield RegistryUnderTest(server.url, refuse, server)


@pytest.fixture(params=["stand-in", "apicurio"])
def registry(request: pytest.FixtureRequest) -> Iterator[RegistryUnderTest]:
    yield from (_stand_in if request.param == "stand-in" else _real)(request)


TP = {
    "event_id": "e",
    "customer_id": "c",
    "channel": "web",
    "type": "page_view",
    "occurred_at": 1_800_000_000_000,
    "attributes": {},
    "source": None,
}


def test_ids_come_from_the_registry(registry: RegistryUnderTest) -> None:
    codec = AvroCodec(ConfluentSchemaRegistry(registry.url), TOUCHPOINT_SUBJECT)
    data = codec.encode(TP)
    # every version in the repository is registered, in order; the newest is written
    ids = registry.ids(TOUCHPOINT_SUBJECT)
    assert len(ids) == len(LocalSchemaRegistry().versions(TOUCHPOINT_SUBJECT))
    assert codec.schema_id == ids[-1] and data[:5] == b"\x00" + ids[-1].to_bytes(4, "big")
    # another process resolves the writer schema by id through the registry
    reader = AvroCodec(ConfluentSchemaRegistry(registry.url), TOUCHPOINT_SUBJECT)
    assert reader.decode(data) == TP
    # registering again is idempotent: the same ids
    again = AvroCodec(ConfluentSchemaRegistry(registry.url), TOUCHPOINT_SUBJECT)
    assert again.encode(TP) == data and registry.ids(TOUCHPOINT_SUBJECT) == ids


def test_unknown_ids_and_refusals_are_typed_errors(registry: RegistryUnderTest) -> None:
    codec = AvroCodec(ConfluentSchemaRegistry(registry.url), TOUCHPOINT_SUBJECT)
    local = AvroCodec(LocalSchemaRegistry(), TOUCHPOINT_SUBJECT).encode(TP)
    with pytest.raises(SerializationError, match="unknown schema id 1001"):
        codec.decode(local)  # the local id means nothing to this registry
    registry.refuse("io.percorso.Action")
    with pytest.raises(IncompatibleSchemaError, match="refused"):
        ConfluentSchemaRegistry(registry.url).latest("io.percorso.Action")


def test_touchpoints_through_the_broker_with_the_real_registry(
    apicurio: RegistryServer, settings_factory: Callable[..., Settings]
) -> None:
    """Percorso's producer path encodes with ids from the real registry; Percorso's tail and
    confluent-kafka's own Avro deserializer both decode those bytes through that registry."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    clear(apicurio)
    settings = settings_factory(schema_registry_url=apicurio.url, partitions=1)
    ensure_topics(clients.admin(settings), percorso_topics(settings))
    sent = [
        {**TP, "event_id": f"e{i}", "customer_id": f"c{i % 3}", "attributes": {"n": str(i)}}
        for i in range(5)
    ]
    producer = clients.producer(settings)
    summary = send_all(
        TouchpointSender(producer, Codecs.from_settings(settings), settings.topics.touchpoints),
        sent,
    )
    assert summary.delivered == len(sent) and summary.failed == 0

    topic = settings.topics.touchpoints
    raw = Consumer({**settings.kafka_config(), "group.id": "unused", "enable.auto.commit": False})
    raw.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    values: list[bytes] = []
    try:
        while len(values) < len(sent):
            msg = raw.poll(30)
            assert msg is not None, f"only {len(values)} of {len(sent)} touchpoints read back"
            assert msg.error() is None, msg.error()
            values.append(msg.value())
    finally:
        raw.close()
    assert all(v[0] == 0 for v in values)  # Confluent framing: magic byte, then the id
    [schema_id] = {int.from_bytes(v[1:5], "big") for v in values}
    assert schema_id == subject_ids(apicurio.url, TOUCHPOINT_SUBJECT)[-1]

    # Percorso's own reader, as `percorso tail` runs it, with its own registry client
    tailed = list(
        tail(
            settings, topic, Codecs.from_settings(settings), max_messages=len(sent), idle_timeout=20
        )
    )
    assert tailed == sent

    # the Confluent client's own decoder agrees, writer schema fetched from the registry by id
    deserialize = AvroDeserializer(SchemaRegistryClient({"url": apicurio.url}))
    context = SerializationContext(topic, MessageField.VALUE)
    decoded = [deserialize(v, context) for v in values]
    for got, want in zip(decoded, sent, strict=True):
        assert got["occurred_at"] == datetime.fromtimestamp(want["occurred_at"] / 1000, UTC)
        assert {**got, "occurred_at": want["occurred_at"]} == want
