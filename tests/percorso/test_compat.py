"""The schema contract: every registered version reads all earlier ones (BACKWARD_TRANSITIVE)."""

from __future__ import annotations

import copy
import json

import pytest

from percorso.codec import LocalSchemaRegistry, backward_transitive_problems, reader_problems
from percorso.schemas import schemas_dir

REGISTRY = LocalSchemaRegistry()
TOUCHPOINT = REGISTRY.latest("io.percorso.Touchpoint").schema


def test_repository_registry_is_backward_transitive() -> None:
    assert REGISTRY.compatibility == "BACKWARD_TRANSITIVE"
    assert REGISTRY.check_compatibility() == {}


def test_every_schema_file_is_registered_and_documented() -> None:
    files = {p.name for p in schemas_dir().glob("*.avsc")}
    registered = {v.file for s in REGISTRY.subjects() for v in REGISTRY.versions(s)}
    assert files == registered

    def walk(schema: object, where: str) -> None:
        if isinstance(schema, dict):
            if schema.get("type") in ("record", "enum"):
                assert schema.get("doc"), f"{where}: {schema['name']} has no doc"
                assert "." in schema["name"] or schema.get("namespace") or where != "top", where
            if schema.get("type") == "enum":
                assert "default" in schema, f"{where}: enum {schema['name']} has no default"
            for field in schema.get("fields", []):
                assert field.get("doc"), f"{where}: field {field['name']} has no doc"
                walk(field["type"], f"{where}.{field['name']}")
            for key in ("items", "values"):
                if key in schema:
                    walk(schema[key], where)
        elif isinstance(schema, list):
            for branch in schema:
                walk(branch, where)

    for name in files:
        schema = json.loads((schemas_dir() / name).read_text())
        assert schema.get("namespace") == "io.percorso", name
        walk(schema, name)


def _with(schema: dict, mutate) -> dict:  # type: ignore[no-untyped-def]
    copy_ = copy.deepcopy(schema)
    mutate(copy_)
    return copy_


def test_adding_an_optional_field_is_compatible() -> None:
    v2 = _with(
        TOUCHPOINT,
        lambda s: s["fields"].append(
            {"name": "device", "type": ["null", "string"], "default": None, "doc": "d"}
        ),
    )
    assert backward_transitive_problems([TOUCHPOINT, v2]) == []


def test_adding_a_required_field_is_rejected() -> None:
    v2 = _with(
        TOUCHPOINT, lambda s: s["fields"].append({"name": "device", "type": "string", "doc": "d"})
    )
    problems = backward_transitive_problems([TOUCHPOINT, v2])
    assert problems and "Touchpoint.device: field added without a default" in problems[0]


def test_changing_a_type_is_rejected() -> None:
    def mutate(s: dict) -> None:
        next(f for f in s["fields"] if f["name"] == "occurred_at")["type"] = "string"

    problems = backward_transitive_problems([TOUCHPOINT, _with(TOUCHPOINT, mutate)])
    assert any("occurred_at" in p and "cannot read writer type long" in p for p in problems)


def test_removing_an_enum_symbol_needs_a_default() -> None:
    enum = {"type": "enum", "name": "Reason", "symbols": ["a", "b", "c"], "doc": "r"}
    shrunk = {"type": "enum", "name": "Reason", "symbols": ["a", "b"], "doc": "r"}
    assert reader_problems(shrunk, enum)
    assert reader_problems({**shrunk, "default": "a"}, enum) == []


def test_type_promotion_and_unions() -> None:
    assert reader_problems("long", "int") == []
    assert reader_problems("int", "long")
    assert reader_problems(["null", "string"], "string") == []
    assert reader_problems("string", ["null", "string"])  # null written, reader cannot hold it


def test_transitive_means_against_every_earlier_version() -> None:
    """v2 drops a field (fine for v2 reading v1), v3 re-adds it without default: v3 still reads
    v2 data? No - v2 data lacks it. The check must compare v3 with v1 and v2."""
    v2 = _with(
        TOUCHPOINT,
        lambda s: s.__setitem__("fields", [f for f in s["fields"] if f["name"] != "source"]),
    )
    v3 = _with(
        TOUCHPOINT, lambda s: next(f for f in s["fields"] if f["name"] == "source").pop("default")
    )
    problems = backward_transitive_problems([TOUCHPOINT, v2, v3])
    assert any(p.startswith("v3 cannot read v2") for p in problems)


@pytest.mark.parametrize(
    "file", ["touchpoint.v1.avsc", "action.v1.avsc", "stage_transition.v1.avsc"]
)
def test_registry_refuses_an_incompatible_new_version(tmp_path, file: str) -> None:  # type: ignore[no-untyped-def]
    """A deliberately incompatible v2 (a new required field) in a copy of the registry fails."""
    schema = json.loads((schemas_dir() / file).read_text())
    broken = _with(
        schema,
        lambda s: s["fields"].append(
            {"name": "must_exist", "type": "string", "doc": "breaks old data"}
        ),
    )
    (tmp_path / "v1.avsc").write_text(json.dumps(schema))
    (tmp_path / "v2.avsc").write_text(json.dumps(broken))
    (tmp_path / "registry.json").write_text(
        json.dumps(
            {
                "subjects": {
                    "s": [
                        {"version": 1, "id": 1, "file": "v1.avsc"},
                        {"version": 2, "id": 2, "file": "v2.avsc"},
                    ]
                }
            }
        )
    )
    found = LocalSchemaRegistry(tmp_path).check_compatibility()
    assert list(found) == ["s"]
    assert "must_exist" in found["s"][0]
