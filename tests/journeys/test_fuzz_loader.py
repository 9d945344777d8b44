"""Fuzzing the journey loader: whatever the file, the loader answers with problems or a catalog.

Random text and bytes, and mutations of the shipped catalog (in its structure and in its text),
go through ``load_catalog``. The only exception allowed is JourneyError, every problem reads
``FILE:LINE: FIELD: message`` on one line, and a catalog that is accepted respects every bound of
``journeys.limits``. ``make test`` runs a few hundred examples; ``make fuzz`` runs many more
(PERCORSO_FUZZ_EXAMPLES).
"""

from __future__ import annotations

import copy
import math
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from journeys.limits import (
    MAX_ACTION_PARAMETERS,
    MAX_DURATION_MS,
    MAX_INTEGER,
    MAX_ITEMS,
    MAX_NAME_LENGTH,
    MAX_TEXT_LENGTH,
    MAX_WINDOWS,
    MIN_INTEGER,
)
from journeys.loader import JourneyError, load_catalog
from journeys.model import ActionSpec, Catalog, Condition
from tests.journeys.harness import CATALOG_DIR

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("PERCORSO_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

CATALOG_FILES = sorted(CATALOG_DIR.glob("*.yaml"))
CATALOG_TEXT = {p.name: p.read_text(encoding="utf-8") for p in CATALOG_FILES}
CATALOG_DATA = {name: yaml.safe_load(text) for name, text in CATALOG_TEXT.items()}


def _keys(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from _keys(item)


KNOWN_KEYS = sorted({key for data in CATALOG_DATA.values() for key in _keys(data)})
EDGE_STRINGS = [
    "percorso/v1",
    "Journey",
    "Policies",
    "366d",
    "367d",
    "52w2d",
    "99999999w",
    "0s",
    "1ms",
    "1h30m",
    "-1h",
    "never",
    "always",
    "marketing",
    "purchase",
    "cart_add",
    "email",
    "${attributes.sku}",
    "2001-02-30",
    "\x00",
    "\x1f",
    "é",
]
LIMIT_LENGTHS = [MAX_NAME_LENGTH, MAX_NAME_LENGTH + 1, MAX_TEXT_LENGTH, MAX_TEXT_LENGTH + 1]
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([MIN_INTEGER - 1, MAX_INTEGER + 1, 2**63, -(2**64), 10**40]),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(EDGE_STRINGS),
    st.sampled_from(LIMIT_LENGTHS).map(lambda n: "x" * n),
)
values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
YAML_TOKENS = [
    "&a ",
    "*a",
    "&b [*a, *a, *a]",
    "<<: ",
    "!!int ",
    "!!binary ",
    "!!timestamp ",
    "!!python/object:os.system ",
    "!custom ",
    "? ",
    "- ",
    ": ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "#",
    "'",
    '"',
    "|",
    ">",
    "\t",
    "\n",
    "\r\n",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "\x00",
    "\ufeff",
    ".inf",
    ".nan",
    "9" * 40,
    "99999999w",
    "[" * 40,
]


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, (*path, i))


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        value = value[part]
    return value


@st.composite
def mutated_documents(draw: st.DrawFn) -> str:
    """A shipped catalog file with a few structural changes, dumped back to YAML."""
    name = draw(st.sampled_from(sorted(CATALOG_DATA)))
    doc: Any = copy.deepcopy(CATALOG_DATA[name])
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(list(_paths(doc))))
        op = draw(st.sampled_from(["replace", "delete", "insert", "graft", "multiply"]))
        if not path:
            doc = draw(values) if op == "replace" else doc
            continue
        parent, last = _at(doc, path[:-1]), path[-1]
        if op == "replace":
            parent[last] = draw(values)
        elif op == "delete":
            del parent[last]
        elif op == "insert" and isinstance(parent, dict):
            parent[draw(st.sampled_from(KNOWN_KEYS))] = draw(values)
        elif op == "insert":
            parent.insert(last, draw(values))
        elif op == "graft":  # a piece of another catalog file where it may not belong
            other = CATALOG_DATA[draw(st.sampled_from(sorted(CATALOG_DATA)))]
            parent[last] = copy.deepcopy(_at(other, draw(st.sampled_from(list(_paths(other))))))
        elif isinstance(parent[last], list) and parent[last]:  # multiply: many more items
            first = parent[last][0]
            scalar = not isinstance(first, dict | list)
            count = draw(st.sampled_from([2, MAX_WINDOWS + 1, MAX_ITEMS + 1 if scalar else 3]))
            parent[last] = [copy.deepcopy(first) for _ in range(count)]
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    unicode = draw(st.booleans())
    return yaml.dump(doc, Dumper=dumper, sort_keys=False, allow_unicode=unicode, width=10**6)


@st.composite
def mutated_texts(draw: st.DrawFn) -> bytes:
    """A shipped catalog file (or a structural mutant) with a few textual edits."""
    text = draw(st.sampled_from(sorted(CATALOG_TEXT.values())) | mutated_documents())
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "duplicate_line", "indent"]))
        if op == "insert":
            token = draw(
                st.sampled_from(YAML_TOKENS)
                | st.text(max_size=6)
                | st.sampled_from(LIMIT_LENGTHS).map(lambda n: "x" * n)
            )
            text = text[:at] + token + text[at:]
        elif op == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 40)) :]
        else:
            start = text.rfind("\n", 0, at) + 1
            end = text.find("\n", at)
            end = len(text) if end < 0 else end + 1
            line = text[start:end]
            replacement = line * 2 if op == "duplicate_line" else "  " + line
            text = text[:start] + replacement + text[end:]
    raw = text.encode("utf-8")
    if draw(st.integers(0, 9)) == 0:  # now and then, bytes that are not UTF-8
        at = draw(st.integers(0, len(raw)))
        raw = (
            raw[:at]
            + draw(st.sampled_from([b"\xff", b"\xe9", b"\xc3", b"\xed\xa0\x80"]))
            + raw[at:]
        )
    return raw


def _load(content: bytes) -> Catalog | None:
    """Load one file; assert the refusal (if any) is JourneyError with well-formed problems."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzzed.yaml"
        path.write_bytes(content)
        try:
            catalog = load_catalog(path)
        except JourneyError as exc:
            assert exc.problems
            for problem in exc.problems:
                text = str(problem)
                assert text.isprintable(), text  # one line: no newline or control character
                assert re.fullmatch(rf"{re.escape(str(path))}:[1-9]\d*: .+: .+", text), text
            event("refused")
            return None
    event("accepted")
    assert_within_limits(catalog)
    return catalog


def _names(*groups: Any) -> list[str]:
    return [name for group in groups for name in group]


def _condition_ok(c: Condition | None) -> None:
    if c is None:
        return
    for name in _names(c.types, c.channels, (p.attribute for p in c.predicates)):
        assert 0 < len(name) <= MAX_NAME_LENGTH
    for p in c.predicates:
        items = p.value if isinstance(p.value, tuple) else (p.value,)
        assert len(items) <= MAX_ITEMS
        for item in items:
            if isinstance(item, str):
                assert len(item) <= MAX_TEXT_LENGTH
            if isinstance(item, float):
                assert math.isfinite(item)


def _action_ok(a: ActionSpec | None) -> None:
    if a is None:
        return
    assert MIN_INTEGER <= a.priority <= MAX_INTEGER
    assert len(a.parameters) <= MAX_ACTION_PARAMETERS
    for key, value in a.parameters:
        assert len(key) <= MAX_NAME_LENGTH and len(value) <= MAX_TEXT_LENGTH
    for name in _names(a.channels, a.variants):
        assert len(name) <= MAX_NAME_LENGTH
    assert a.expires_after_ms is None or 0 < a.expires_after_ms <= MAX_DURATION_MS


def assert_within_limits(catalog: Catalog) -> None:
    """Every bound of journeys.limits holds in an accepted catalog."""
    durations: list[int | None] = []
    for j in catalog.journeys:
        assert len(j.name) <= MAX_NAME_LENGTH
        assert MIN_INTEGER <= j.priority <= MAX_INTEGER
        assert len(j.windows) <= MAX_WINDOWS
        assert len(j.stages) <= MAX_ITEMS and len(j.actions) <= MAX_ITEMS
        durations += [j.inactivity_ms, j.reentry_after_ms, *(w.within_ms for w in j.windows)]
        for c in (j.entry, j.goal, *j.exit_on, *(s.when for s in j.stages)):
            _condition_ok(c)
        for w in j.windows:
            _condition_ok(w.start)
            _condition_ok(w.wait_for)
            assert all(len(name) <= MAX_NAME_LENGTH for name in w.correlate)
            _action_ok(w.on_timeout.action)
            _action_ok(w.on_match.action)
        for a in j.actions:
            _condition_ok(a.when)
            _action_ok(a.action)
        if j.experiment is not None:
            assert 0 <= j.experiment.holdout < 1
            assert all(math.isfinite(weight) for _, weight in j.experiment.variants)
        score = j.score
        assert all(math.isfinite(x) for x in (score.completion, score.satisfaction, score.effort))
        assert 1 <= score.effort_budget <= MAX_INTEGER
    p = catalog.policies
    durations += [p.allowed_lateness_ms, *(c.per_ms for c in p.frequency_caps)]
    durations += [s.max_duration_ms for s in p.suppressions]
    for cap in p.frequency_caps:
        assert 0 <= cap.max <= MAX_INTEGER and len(cap.channel) <= MAX_NAME_LENGTH
    for s in p.suppressions:
        _condition_ok(s.start)
        _condition_ok(s.end)
    _condition_ok(p.consent_grant)
    _condition_ok(p.consent_withdraw)
    assert len(p.consent_channel_attribute) <= MAX_NAME_LENGTH
    assert all(len(t) <= MAX_NAME_LENGTH for t in p.event_types)
    if p.quiet_hours is not None:
        assert all(len(c) <= MAX_NAME_LENGTH for c in p.quiet_hours.channels)
    assert 0 <= p.marketing_actions_per_step <= MAX_INTEGER
    for duration in durations:
        assert duration is None or 0 < duration <= MAX_DURATION_MS


def test_the_shipped_catalog_is_within_the_limits() -> None:
    assert_within_limits(load_catalog(CATALOG_DIR))


@FUZZ
@given(st.binary(max_size=2000) | st.text(max_size=2000).map(str.encode))
def test_random_content_is_refused_or_loaded(content: bytes) -> None:
    _load(content)


@FUZZ
@given(mutated_documents().map(str.encode))
def test_structural_mutations_of_the_catalog(content: bytes) -> None:
    _load(content)


@FUZZ
@given(mutated_texts())
def test_textual_mutations_of_the_catalog(content: bytes) -> None:
    _load(content)
