"""The plain writer (``percorso.codec.plainwrite``) against fastavro.

``AvroCodec.encode`` writes the records of the newest schema itself and leaves the rest to
fastavro. On every record, valid or not, it must give what fastavro gives: the same bytes, or
the same error. Records are drawn from the schemas themselves (transitions, actions,
conversions), with optional fields left out, and with values of the wrong type mixed in.
"""

from __future__ import annotations

import io
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from percorso.codec import AvroCodec, LocalSchemaRegistry, SerializationError
from percorso.codec.avro import _without_logical_types
from percorso.codec.plainwrite import Unwritable, write_plan
from percorso.topics import (
    ACTION_SUBJECT,
    CONVERSION_SUBJECT,
    TOUCHPOINT_SUBJECT,
    TRANSITION_SUBJECT,
)

REGISTRY = LocalSchemaRegistry()
SUBJECTS = (TRANSITION_SUBJECT, ACTION_SUBJECT, CONVERSION_SUBJECT, TOUCHPOINT_SUBJECT)
SCHEMAS = {s: _without_logical_types(dict(REGISTRY.latest(s).schema)) for s in SUBJECTS}
CODECS = {s: AvroCodec(REGISTRY, s) for s in SUBJECTS}
WRITERS = {s: write_plan(SCHEMAS[s]) for s in SUBJECTS}

# short and long strings (one- and several-byte lengths), any code point but lone surrogates
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=8) | st.text(
    st.characters(exclude_categories=["Cs"]), min_size=60, max_size=200
)
WRONG: st.SearchStrategy[Any] = st.sampled_from(
    [True, False, 1.5, 7, -(2**40), 2**63, 2**31, None, (), ("a",), "x", b"x", {}, [], {1: "a"}]
) | st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2)


def values(t: Any, named: dict[str, Any], wrong: bool) -> st.SearchStrategy[Any]:
    """Values of Avro type ``t``; with ``wrong``, now and then a value of another type."""
    s = _valid(t, named, wrong)
    return st.one_of(s, s, s, s, s, s, s, s, s, WRONG) if wrong else s


def _valid(t: Any, named: dict[str, Any], wrong: bool) -> st.SearchStrategy[Any]:
    if isinstance(t, list):
        return st.one_of(*(values(branch, named, wrong) for branch in t))
    if isinstance(t, str):
        if t in named:
            return named[t]
        return {
            "null": st.none(),
            "string": text,
            "long": st.integers(-(2**63), 2**63 - 1) | st.integers(-70, 70),
            "int": st.integers(-(2**31), 2**31 - 1) | st.integers(-70, 70),
            "double": st.floats(allow_nan=False) | st.floats(-1, 1),
        }[t]
    kind = t["type"]
    if kind in ("string", "long", "int", "double"):
        return _valid(kind, named, wrong)
    if kind == "enum":
        named[t["name"]] = st.sampled_from(t["symbols"])
        return named[t["name"]]
    if kind == "map":
        # small maps, and now and then one of 64 entries or more (a count of two varint
        # bytes), with distinct keys by construction and short values
        item = values(t["values"], named, wrong)
        short = st.text(max_size=2) if t["values"] == "string" and not wrong else item
        many = st.integers(64, 66).flatmap(
            lambda n: st.lists(short, min_size=n, max_size=n).map(
                lambda items: {f"k{i}": v for i, v in enumerate(items)}
            )
        )
        return st.dictionaries(text, item, max_size=4) | many
    if kind == "array":
        return st.lists(values(t["items"], named, wrong), max_size=4)
    assert kind == "record", kind
    fields = {f["name"]: values(f["type"], named, wrong) for f in t["fields"]}
    optional = [f["name"] for f in t["fields"] if "default" in f]
    record = st.fixed_dictionaries(fields)
    if not optional:
        return record
    return st.tuples(record, st.sets(st.sampled_from(optional))).map(
        lambda pair: {k: v for k, v in pair[0].items() if k not in pair[1]}
    )


def with_fastavro(subject: str, record: Any) -> bytes | str:
    """What fastavro writes for ``record`` (after the codec's framing), or its error's class."""
    codec = CODECS[subject]
    buf = io.BytesIO()
    try:
        fastavro.schemaless_writer(buf, codec.reader_schema, record)
    except Exception as exc:
        return type(exc).__name__
    return buf.getvalue()


def test_every_output_schema_has_a_plan() -> None:
    for subject in SUBJECTS:
        assert write_plan(SCHEMAS[subject]) is not None, subject
    assert (
        write_plan({"type": "record", "name": "R", "fields": [{"name": "b", "type": "bytes"}]})
        is None
    )
    assert (
        write_plan(
            {"type": "record", "name": "R", "fields": [{"name": "u", "type": ["int", "string"]}]}
        )
        is None
    )


@pytest.mark.parametrize("subject", SUBJECTS)
@settings(max_examples=120, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data())
def test_valid_records_are_written_by_the_plain_writer_as_fastavro_writes_them(
    subject: str, data: st.DataObject
) -> None:
    record = data.draw(values(SCHEMAS[subject], {}, wrong=False))
    out = bytearray()
    WRITERS[subject](out, record)  # type: ignore[misc]  # no fall-back on a valid record
    assert bytes(out) == with_fastavro(subject, record)
    assert CODECS[subject].encode(record) == CODECS[subject]._header + bytes(out)


@pytest.mark.parametrize("subject", SUBJECTS)
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data())
def test_any_record_encodes_as_fastavro_encodes_it_or_fails_as_it_fails(
    subject: str, data: st.DataObject
) -> None:
    record = data.draw(values(SCHEMAS[subject], {}, wrong=True))
    expected = with_fastavro(subject, record)
    out = bytearray()
    try:
        WRITERS[subject](out, record)  # type: ignore[misc]
    except (Unwritable, UnicodeEncodeError):
        pass  # left to fastavro
    else:
        assert bytes(out) == expected  # what it writes itself is what fastavro writes
    try:
        encoded: bytes | str = CODECS[subject].encode(record)
    except SerializationError as exc:
        assert isinstance(expected, str), expected
        assert f": {expected}: " in str(exc)
    else:
        assert encoded == CODECS[subject]._header + expected  # type: ignore[operator]
