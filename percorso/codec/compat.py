"""Avro schema-resolution compatibility: can a reader schema read what a writer schema wrote?

Implements the resolution rules of the Avro specification, enough to enforce
BACKWARD_TRANSITIVE evolution (each new version reads data written by every earlier one) the way a
Schema Registry would. Returns the list of problems, empty when compatible.
"""

from __future__ import annotations

from typing import Any

Schema = Any

_PROMOTIONS: dict[str, set[str]] = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "double": {"double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
    "boolean": {"boolean"},
    "null": {"null"},
}


def _type_name(schema: Schema) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return "union"
    return str(schema["type"])


def _full_name(schema: dict[str, Any], namespace: str | None) -> str:
    name = str(schema["name"])
    if "." in name:
        return name
    ns = schema.get("namespace", namespace)
    return f"{ns}.{name}" if ns else name


class _Checker:
    def __init__(self) -> None:
        self.named_writer: dict[str, Schema] = {}
        self.named_reader: dict[str, Schema] = {}
        self.seen: set[tuple[str, str]] = set()

    def _register(self, schema: Schema, table: dict[str, Schema], namespace: str | None) -> Schema:
        """Resolve references to named types, remember named types where they are defined, and
        reduce annotated primitives (logical types) to their primitive."""
        if isinstance(schema, str):
            if schema in _PROMOTIONS:
                return schema
            qualified = schema if "." in schema or namespace is None else f"{namespace}.{schema}"
            return table.get(qualified, table.get(schema, schema))
        if isinstance(schema, list):
            return schema
        kind = schema["type"]
        if kind in ("record", "error", "enum", "fixed"):
            table[_full_name(schema, namespace)] = schema
            table.setdefault(str(schema["name"]).split(".")[-1], schema)
            return schema
        if kind in ("array", "map"):
            return schema
        return self._register(kind, table, namespace)

    def check(
        self, reader: Schema, writer: Schema, path: str, rns: str | None, wns: str | None
    ) -> list[str]:
        reader = self._register(reader, self.named_reader, rns)
        writer = self._register(writer, self.named_writer, wns)
        rt, wt = _type_name(reader), _type_name(writer)

        if wt == "union":
            problems: list[str] = []
            for branch in writer:
                problems += self.check(reader, branch, path, rns, wns)
            return problems
        if rt == "union":
            for branch in reader:
                if not self.check(branch, writer, path, rns, wns):
                    return []
            return [
                f"{path}: writer type {self._describe(writer)} matches no branch of the "
                f"reader union"
            ]
        if wt in _PROMOTIONS:
            if rt in _PROMOTIONS and rt in _PROMOTIONS[wt]:
                return []
            return [f"{path}: reader type {rt} cannot read writer type {wt}"]
        if rt != wt:
            return [f"{path}: reader type {rt} cannot read writer type {wt}"]
        if wt == "array":
            return self.check(reader["items"], writer["items"], f"{path}[]", rns, wns)
        if wt == "map":
            return self.check(reader["values"], writer["values"], f"{path}{{}}", rns, wns)
        if wt == "fixed":
            if reader["size"] != writer["size"]:
                return [f"{path}: fixed size {reader['size']} != writer size {writer['size']}"]
            return self._names_match(reader, writer, path, rns, wns)
        if wt == "enum":
            problems = self._names_match(reader, writer, path, rns, wns)
            missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
            if missing and "default" not in reader:
                problems.append(
                    f"{path}: enum symbols {missing} written by the writer are "
                    f"missing in the reader, which has no default symbol"
                )
            return problems
        if wt in ("record", "error"):
            return self._check_record(reader, writer, path, rns, wns)
        return [f"{path}: unsupported schema type {wt}"]

    def _names_match(
        self,
        reader: dict[str, Any],
        writer: dict[str, Any],
        path: str,
        rns: str | None,
        wns: str | None,
    ) -> list[str]:
        rname, wname = _full_name(reader, rns), _full_name(writer, wns)
        aliases = set(reader.get("aliases", []))
        if rname.split(".")[-1] == wname.split(".")[-1] or rname == wname or wname in aliases:
            return []
        return [f"{path}: reader name {rname} does not match writer name {wname}"]

    def _check_record(
        self,
        reader: dict[str, Any],
        writer: dict[str, Any],
        path: str,
        rns: str | None,
        wns: str | None,
    ) -> list[str]:
        rname, wname = _full_name(reader, rns), _full_name(writer, wns)
        if (rname, wname) in self.seen:
            return []
        self.seen.add((rname, wname))
        problems = self._names_match(reader, writer, path, rns, wns)
        rns2 = rname.rsplit(".", 1)[0] if "." in rname else rns
        wns2 = wname.rsplit(".", 1)[0] if "." in wname else wns
        writer_fields = {f["name"]: f for f in writer["fields"]}
        for rf in reader["fields"]:
            candidates = [rf["name"], *rf.get("aliases", [])]
            wf = next((writer_fields[n] for n in candidates if n in writer_fields), None)
            fpath = f"{path}.{rf['name']}"
            if wf is None:
                if "default" not in rf:
                    problems.append(
                        f"{fpath}: field added without a default (data written by "
                        f"the older version cannot be read)"
                    )
                continue
            problems += self.check(rf["type"], wf["type"], fpath, rns2, wns2)
        return problems

    @staticmethod
    def _describe(schema: Schema) -> str:
        return schema if isinstance(schema, str) else str(schema.get("type"))


def reader_problems(reader: Schema, writer: Schema) -> list[str]:
    """Why ``reader`` cannot read data written with ``writer`` (empty list: it can)."""
    name = reader.get("name", "schema") if isinstance(reader, dict) else str(reader)
    return _Checker().check(reader, writer, str(name), None, None)


def backward_transitive_problems(versions: list[Schema]) -> list[str]:
    """Problems of the newest schema in ``versions`` reading every earlier version."""
    if not versions:
        return []
    newest = versions[-1]
    problems: list[str] = []
    for number, older in enumerate(versions[:-1], start=1):
        problems += [
            f"v{len(versions)} cannot read v{number}: {p}" for p in reader_problems(newest, older)
        ]
    return problems
