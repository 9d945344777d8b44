"""ConfluentSchemaRegistry against an in-process server speaking the Schema Registry REST API
subset the real confluent-kafka client uses (no Schema Registry installs here; this fakes the
HTTP server, not the client)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from percorso.codec import (
    AvroCodec,
    ConfluentSchemaRegistry,
    IncompatibleSchemaError,
    LocalSchemaRegistry,
    SerializationError,
)
from percorso.topics import TOUCHPOINT_SUBJECT


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
            registry.subjects.setdefault(subject, []).append(sid)
            self._reply(200, {"id": sid})

        def do_GET(self) -> None:  # /schemas/ids/<id>
            parts = self.path.split("?")[0].strip("/").split("/")
            if parts[:2] == ["schemas", "ids"] and int(parts[2]) in registry.schemas:
                self._reply(200, {"schema": registry.schemas[int(parts[2])]})
            else:
                self._reply(404, {"error_code": 40403, "message": "Schema not found"})

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def fake() -> Iterator[tuple[FakeRegistry, str]]:
    registry = FakeRegistry()
    server = serve(registry)
    yield registry, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


TP = {
    "event_id": "e",
    "customer_id": "c",
    "channel": "web",
    "type": "page_view",
    "occurred_at": 1_800_000_000_000,
    "attributes": {},
    "source": None,
}


def test_ids_come_from_the_registry(fake: tuple[FakeRegistry, str]) -> None:
    registry, url = fake
    codec = AvroCodec(ConfluentSchemaRegistry(url), TOUCHPOINT_SUBJECT)
    data = codec.encode(TP)
    assert codec.schema_id == 100 and data[1:5] == (100).to_bytes(4, "big")
    assert registry.subjects[TOUCHPOINT_SUBJECT] == [100]
    # another process resolves the writer schema by id through the registry
    reader = AvroCodec(ConfluentSchemaRegistry(url), TOUCHPOINT_SUBJECT)
    assert reader.decode(data) == TP


def test_unknown_ids_and_refusals_are_typed_errors(fake: tuple[FakeRegistry, str]) -> None:
    registry, url = fake
    codec = AvroCodec(ConfluentSchemaRegistry(url), TOUCHPOINT_SUBJECT)
    local = AvroCodec(LocalSchemaRegistry(), TOUCHPOINT_SUBJECT).encode(TP)
    with pytest.raises(SerializationError, match="unknown schema id 1001"):
        codec.decode(local)  # the local id means nothing to this registry
    registry.refuse.add("io.percorso.Action")
    with pytest.raises(IncompatibleSchemaError, match="refused"):
        ConfluentSchemaRegistry(url).latest("io.percorso.Action")
