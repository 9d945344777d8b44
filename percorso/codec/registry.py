"""Schema registries: where schema ids come from.

``LocalSchemaRegistry`` maps the versions recorded in ``schemas/registry.json`` to fixed ids, so
producers and workers that share the repository agree on ids without a server.
``ConfluentSchemaRegistry`` registers those same versions with a Confluent-compatible Schema
Registry (record-name subjects, since one record type is written to several topics) and resolves
ids other producers registered.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from percorso.codec.compat import backward_transitive_problems
from percorso.codec.errors import IncompatibleSchemaError, SchemaNotFoundError, SerializationError
from percorso.schemas import schemas_dir

Schema = dict[str, Any]


@dataclass(frozen=True)
class SchemaVersion:
    subject: str
    version: int
    schema_id: int
    schema: Schema
    file: str


class SchemaRegistry(Protocol):
    def latest(self, subject: str) -> SchemaVersion:
        """The newest version of ``subject``: what this process writes and reads into."""
        ...

    def schema_by_id(self, schema_id: int) -> Schema:
        """The writer schema behind ``schema_id``; raises SchemaNotFoundError."""
        ...


class LocalSchemaRegistry:
    """The ids recorded in the repository (``schemas/registry.json``)."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or schemas_dir()
        with (self.folder / "registry.json").open(encoding="utf-8") as f:
            manifest = json.load(f)
        self.compatibility: str = manifest.get("compatibility", "BACKWARD_TRANSITIVE")
        self._subjects: dict[str, list[SchemaVersion]] = {}
        self._by_id: dict[int, SchemaVersion] = {}
        for subject, versions in manifest["subjects"].items():
            loaded = []
            for entry in sorted(versions, key=lambda v: v["version"]):
                with (self.folder / entry["file"]).open(encoding="utf-8") as f:
                    schema = json.load(f)
                sv = SchemaVersion(subject, entry["version"], entry["id"], schema, entry["file"])
                if sv.schema_id in self._by_id:
                    raise ValueError(
                        f"registry.json: schema id {sv.schema_id} used twice "
                        f"({self._by_id[sv.schema_id].file} and {sv.file})"
                    )
                self._by_id[sv.schema_id] = sv
                loaded.append(sv)
            self._subjects[subject] = loaded

    def subjects(self) -> list[str]:
        return list(self._subjects)

    def versions(self, subject: str) -> list[SchemaVersion]:
        try:
            return self._subjects[subject]
        except KeyError:
            raise SerializationError(
                f"no schema subject {subject!r} in {self.folder / 'registry.json'}"
            ) from None

    def latest(self, subject: str) -> SchemaVersion:
        return self.versions(subject)[-1]

    def schema_by_id(self, schema_id: int) -> Schema:
        try:
            return self._by_id[schema_id].schema
        except KeyError:
            raise SchemaNotFoundError(
                f"unknown schema id {schema_id}: not in the local registry "
                f"({self.folder / 'registry.json'}); was it written with a Schema Registry? "
                f"Set SCHEMA_REGISTRY_URL"
            ) from None

    def check_compatibility(self) -> dict[str, list[str]]:
        """Problems per subject under BACKWARD_TRANSITIVE (empty dict: all compatible)."""
        found = {}
        for subject, versions in self._subjects.items():
            problems = backward_transitive_problems([v.schema for v in versions])
            if problems:
                found[subject] = problems
        return found


class ConfluentSchemaRegistry:
    """A Confluent-compatible Schema Registry; the repository's versions are registered in order."""

    def __init__(
        self,
        url: str,
        local: LocalSchemaRegistry | None = None,
        client_config: dict[str, Any] | None = None,
    ) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self.local = local or LocalSchemaRegistry()
        self.client = SchemaRegistryClient({"url": url, **(client_config or {})})
        self._lock = threading.Lock()
        self._latest: dict[str, SchemaVersion] = {}
        self._by_id: dict[int, Schema] = {}

    def latest(self, subject: str) -> SchemaVersion:
        with self._lock:
            if subject not in self._latest:
                self._latest[subject] = self._register_all(subject)
            return self._latest[subject]

    def _register_all(self, subject: str) -> SchemaVersion:
        from confluent_kafka.schema_registry import Schema as SRSchema
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        registered: SchemaVersion | None = None
        for sv in self.local.versions(subject):
            try:
                schema_id = self.client.register_schema(
                    subject, SRSchema(json.dumps(sv.schema), "AVRO")
                )
            except SchemaRegistryError as exc:
                if exc.http_status_code == 409:
                    raise IncompatibleSchemaError(
                        f"Schema Registry refused {sv.file} for subject {subject}: "
                        f"{exc.error_message}"
                    ) from exc
                raise SerializationError(f"Schema Registry error for {subject}: {exc}") from exc
            self._by_id[schema_id] = sv.schema
            registered = SchemaVersion(subject, sv.version, schema_id, sv.schema, sv.file)
        assert registered is not None
        return registered

    def schema_by_id(self, schema_id: int) -> Schema:
        with self._lock:
            if schema_id in self._by_id:
                return self._by_id[schema_id]
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            fetched = self.client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            raise SchemaNotFoundError(
                f"unknown schema id {schema_id}: {exc.error_message}"
            ) from exc
        schema: Schema = json.loads(fetched.schema_str or "null")
        with self._lock:
            self._by_id[schema_id] = schema
        return schema


def registry_from_env(url: str | None) -> SchemaRegistry:
    """The Schema Registry at ``url`` if given, else the local registry of the repository."""
    return ConfluentSchemaRegistry(url) if url else LocalSchemaRegistry()
