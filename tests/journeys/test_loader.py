"""Journey files: the catalog is valid; broken files get file, line and field."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from journeys.durations import format_duration_ms
from journeys.limits import (
    MAX_ACTION_PARAMETERS,
    MAX_DURATION_MS,
    MAX_FILE_BYTES,
    MAX_INTEGER,
    MAX_ITEMS,
    MAX_NAME_LENGTH,
    MAX_NESTING_DEPTH,
    MAX_TEXT_LENGTH,
    MAX_WINDOWS,
    MAX_YAML_NODES,
    MIN_INTEGER,
)
from journeys.loader import JourneyError, load_catalog, validate_paths
from tests.journeys.harness import CATALOG_DIR

VALID = """\
apiVersion: percorso/v1
kind: Journey
id: cart
entry:
  when: {type: cart_add}
stages:
  - id: carted
    when: {type: cart_add}
  - id: abandoned
windows:
  - id: reminder
    start: {type: cart_add}
    wait_for: {type: purchase}
    within: 30m
    on_timeout:
      goto: abandoned
      action: {name: remind, channel: email}
"""


def problems_of(tmp_path: Path, text: str, name: str = "j.yaml") -> list[str]:
    (tmp_path / name).write_text(text)
    found, _ = validate_paths([tmp_path])
    return found


def test_shipped_catalog_is_valid() -> None:
    found, count = validate_paths([CATALOG_DIR.parent])
    assert found == [] and count == 6
    assert len(load_catalog(CATALOG_DIR).journeys) == 5


def test_valid_minimal_journey(tmp_path: Path) -> None:
    assert problems_of(tmp_path, VALID) == []


BROKEN = [
    # (what, replace this, with that, expected "line: field: message" fragment)
    (
        "unknown key",
        "    within: 30m\n",
        "    within: 30m\n    retries: 3\n",
        "15: windows[0].retries: unknown key",
    ),
    ("typo in a top-level key", "entry:\n", "entyr:\n", "4: entyr: unknown key"),
    ("missing required", "stages:\n", "stagez:\n", "1: (file): 'stages' is a required"),
    (
        "duration not a duration",
        "within: 30m",
        "within: 30 minutes",
        "14: windows[0].within: '30 minutes' does not match",
    ),
    (
        "zero duration",
        "within: 30m",
        "within: 0m",
        "14: windows[0].within: '0m' must be longer than zero",
    ),
    (
        "duplicate stage",
        "  - id: abandoned\n",
        "  - id: carted\n",
        "9: stages[1].id: duplicate id 'carted'",
    ),
    (
        "unknown goto",
        "goto: abandoned",
        "goto: abandonned",
        "16: windows[0].on_timeout.goto: unknown stage 'abandonned'",
    ),
    (
        "unreachable stage",
        "      goto: abandoned\n",
        "",
        "9: stages[1].id: stage 'abandoned' is unreachable",
    ),
    (
        "window waits for an event nobody sends",
        "wait_for: {type: purchase}",
        "wait_for: {type: purchse}",
        "13: windows[0].wait_for.type: waits for 'purchse'",
    ),
    (
        "start and after",
        "    start: {type: cart_add}\n",
        "    start: {type: cart_add}\n    after: reminder\n",
        "11: windows[0]: give exactly one of start",
    ),
    (
        "reserved stage id",
        "  - id: abandoned\n",
        "  - id: completed\n",
        "9: stages[1].id: 'completed' is reserved",
    ),
    (
        "channel and channels",
        "channel: email}",
        "channel: email, channels: [sms]}",
        "17: windows[0].on_timeout.action: give exactly one of channel or channels",
    ),
    ("duplicate YAML key", "id: cart\n", "id: cart\nid: cart2\n", "4: id: duplicate key"),
    (
        "bad YAML",
        "  when: {type: cart_add}\nstages",
        "  when: {type: cart_add\nstages",
        "6: (file): not valid YAML: expected ',' or '}'",
    ),
    (
        "unknown comparison",
        "wait_for: {type: purchase}",
        "wait_for: {type: purchase, attributes: {amount: {greater: 5}}}",
        "13: windows[0].wait_for.attributes.amount: unknown comparison greater",
    ),
    (
        "bad api version",
        "apiVersion: percorso/v1",
        "apiVersion: percorso/v2",
        "1: apiVersion: 'percorso/v1' was expected",
    ),
    ("bad id", "id: cart\n", "id: Cart Recovery\n", "3: id: 'Cart Recovery' does not match"),
    (
        "unknown from stage",
        "  - id: abandoned\n",
        "  - id: abandoned\n    from: [nowhere]\n",
        "10: stages[1].from[0]: unknown stage 'nowhere'",
    ),
]


@pytest.mark.parametrize(("what", "old", "new", "expected"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_files_get_precise_messages(
    tmp_path: Path, what: str, old: str, new: str, expected: str
) -> None:
    assert old in VALID, what
    found = problems_of(tmp_path, VALID.replace(old, new, 1))
    assert any(f"j.yaml:{expected}" in p for p in found), found
    assert all(p.startswith(str(tmp_path / "j.yaml")) for p in found)


def test_window_cycles_are_refused(tmp_path: Path) -> None:
    text = (
        VALID
        + """\
  - id: a
    after: b
    wait_for: {type: purchase}
    within: 1h
  - id: b
    after: a
    wait_for: {type: purchase}
    within: 1h
"""
    )
    found = problems_of(tmp_path, text)
    assert any("windows[1].after: windows arm each other in a cycle" in p for p in found)


def test_duplicate_journey_ids_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(VALID)
    (tmp_path / "b.yaml").write_text(VALID)
    found, count = validate_paths([tmp_path])
    assert count == 2
    assert found == [
        f"{tmp_path / 'b.yaml'}:3: id: journey id 'cart' is already defined in "
        f"{tmp_path / 'a.yaml'}"
    ]


def test_policy_problems(tmp_path: Path) -> None:
    (tmp_path / "j.yaml").write_text(VALID)
    (tmp_path / "p.yaml").write_text("""\
apiVersion: percorso/v1
kind: Policies
quiet_hours: {start: "21:00", end: "08:00", channels: [sms], default_timezone: Mars/Base}
frequency_caps:
  - {channel: email, max: 2, per: 0d}
""")
    (tmp_path / "q.yaml").write_text("apiVersion: percorso/v1\nkind: Policies\n")
    found, _ = validate_paths([tmp_path])
    assert (
        f"{tmp_path / 'p.yaml'}:3: quiet_hours.default_timezone: unknown time zone "
        f"'Mars/Base'" in found
    )
    assert any(p.startswith(f"{tmp_path / 'p.yaml'}:5: frequency_caps[0].per:") for p in found)
    assert any(
        p.startswith(f"{tmp_path / 'q.yaml'}:2: kind: a second Policies file") for p in found
    )


def test_custom_event_types_can_be_declared(tmp_path: Path) -> None:
    (tmp_path / "j.yaml").write_text(
        VALID.replace("wait_for: {type: purchase}", "wait_for: {type: loyalty_signup}")
    )
    assert validate_paths([tmp_path])[0]
    (tmp_path / "p.yaml").write_text(
        "apiVersion: percorso/v1\nkind: Policies\nevent_types: [loyalty_signup]\n"
    )
    assert validate_paths([tmp_path])[0] == []


def test_all_problems_are_reported_not_just_the_first(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(VALID.replace("within: 30m", "within: 0m"))
    (tmp_path / "b.yaml").write_text(VALID.replace("id: cart\n", "id: other\nfoo: 1\n"))
    found, _ = validate_paths([tmp_path])
    assert len(found) == 2


def test_load_catalog_raises_with_every_problem(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(VALID.replace("within: 30m", "within: 0m"))
    with pytest.raises(JourneyError) as info:
        load_catalog(tmp_path)
    assert len(info.value.problems) == 1 and info.value.problems[0].line == 14


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    assert validate_paths([tmp_path])[0][0].endswith("no journey files (*.yaml, *.yml) found")


def test_validate_command_line(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "percorso.cli", "validate", str(CATALOG_DIR)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0 and "ok: 6 file(s) valid" in ok.stdout
    (tmp_path / "j.yaml").write_text(VALID.replace("within: 30m", "within: soon"))
    bad = subprocess.run(
        [sys.executable, "-m", "percorso.cli", "validate", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1
    assert f"{tmp_path / 'j.yaml'}:14: windows[0].within:" in bad.stderr


def test_published_schema_matches_every_catalog_file() -> None:
    import json

    import yaml
    from jsonschema import Draft202012Validator

    schema = json.loads((CATALOG_DIR.parent / "journey.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    for path in CATALOG_DIR.glob("*.yaml"):
        assert (
            list(Draft202012Validator(schema).iter_errors(yaml.safe_load(path.read_text()))) == []
        ), path


# Hostile and careless files: every one is refused with FILE:LINE: FIELD: message, never a
# traceback, never a hang (see journeys/limits.py for the bounds).
BOMB = VALID + "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}' if prev else 'lol'] * 9)}]\n"
    for prev, name in zip(["", "a", "b", "c", "d", "e", "f", "g", "h"], "abcdefghi", strict=True)
)
PARAMETER = "action: {name: remind, channel: email}"


def _big_parameter(length: int) -> str:
    return VALID.replace(
        PARAMETER, f"action: {{name: remind, channel: email, parameters: {{text: {'x' * length}}}}}"
    )


HOSTILE: list[tuple[str, str | bytes, str]] = [
    # (what, the whole file, expected "line: field: message" fragment)
    ("alias bomb", BOMB, "18: a: YAML anchors and aliases (&name, *name) are not allowed"),
    (
        "recursive alias",
        VALID.replace("  when: {type: cart_add}\nstages", "  when: &w {type: *w}\nstages"),
        "5: entry.when: YAML anchors and aliases",
    ),
    ("alias of nothing", VALID + "extra: *nothing\n", "18: extra: YAML anchors and aliases"),
    (
        "not UTF-8",
        VALID.encode().replace(b"id: cart\n", b"id: caf\xe9\n"),
        "3: (file): not UTF-8 text: byte 0xe9 at offset",
    ),
    (
        "file too large",
        "# " + "x" * MAX_FILE_BYTES + "\n" + VALID,
        f"1: (file): larger than the limit of {MAX_FILE_BYTES} bytes",
    ),
    (
        "10 MB-style parameter (any value above the limit)",
        _big_parameter(MAX_TEXT_LENGTH + 1),
        f"17: windows[0].on_timeout.action.parameters.text: {MAX_TEXT_LENGTH + 1} characters, "
        f"longer than the limit of {MAX_TEXT_LENGTH}",
    ),
    (
        "window longer than the key allows",
        VALID.replace("within: 30m", "within: 99999999w"),
        "14: windows[0].within: '99999999w' is longer than the limit of 366d",
    ),
    (
        "window one day too long",
        VALID.replace("within: 30m", "within: 367d"),
        "14: windows[0].within: '367d' is longer than the limit of 366d",
    ),
    (
        "too many windows",
        VALID
        + "".join(
            f"  - id: w{i}\n    start: {{type: cart_add}}\n    wait_for: {{type: purchase}}\n"
            f"    within: 1h\n"
            for i in range(MAX_WINDOWS)
        ),
        f"10: windows: more than the limit of {MAX_WINDOWS} items",
    ),
    (
        "nested too deep",
        VALID + "extra: " + "[" * (MAX_NESTING_DEPTH + 5) + "]" * (MAX_NESTING_DEPTH + 5) + "\n",
        f"18: extra{'[0]' * (MAX_NESTING_DEPTH - 1)}: nested deeper than {MAX_NESTING_DEPTH}",
    ),
    (
        "too many entries",
        VALID + "extra: [" + ", ".join(["1"] * (MAX_ITEMS + 1)) + "]\n",
        f"18: extra: {MAX_ITEMS + 1} entries, more than the limit of {MAX_ITEMS}",
    ),
    (
        "too many values",
        VALID + "extra:\n" + "".join(f"  - [{', '.join(['1'] * 200)}]\n" for _ in range(60)),
        f"68: extra[49][98]: more than {MAX_YAML_NODES} values in one file",
    ),
    (
        "channel name too long",
        VALID.replace("channel: email}", f"channel: {'e' * (MAX_NAME_LENGTH + 1)}}}"),
        f"17: windows[0].on_timeout.action.channel: longer than the limit of {MAX_NAME_LENGTH} "
        f"characters",
    ),
    (
        "key too long",
        VALID.replace(
            PARAMETER, f"action: {{name: r, channel: e, parameters: {{{'k' * 300}: v}}}}"
        ),
        f"17: windows[0].on_timeout.action.parameters: a key of 300 characters, longer than the "
        f"limit of {MAX_NAME_LENGTH}",
    ),
    (
        "too many parameters",
        VALID.replace(
            PARAMETER,
            "action: {name: r, channel: e, parameters: {"
            + ", ".join(f"p{i}: v" for i in range(MAX_ACTION_PARAMETERS + 1))
            + "}}",
        ),
        f"17: windows[0].on_timeout.action.parameters: more than the limit of "
        f"{MAX_ACTION_PARAMETERS} entries",
    ),
    (
        "priority beyond an Avro int",
        VALID.replace("id: cart\n", "id: cart\npriority: 2147483648\n"),
        "4: priority: 2147483648 is greater than the maximum of 2147483647",
    ),
    (
        "invalid date",
        VALID.replace("id: cart\n", "id: cart\nname: 2001-02-30\n"),
        "4: name: cannot read '2001-02-30' as tag:yaml.org,2002:timestamp: day is out of range",
    ),
    (
        "bad explicit tag",
        VALID.replace("id: cart\n", "id: cart\nname: !!int abc\n"),
        "4: name: cannot read 'abc' as tag:yaml.org,2002:int",
    ),
    (
        "explicit timestamp tag on a value that is not one (found by the fuzz test)",
        VALID.replace("id: cart\n", "id: cart\nname: !!timestamp null\n"),
        "4: name: cannot read 'null' as tag:yaml.org,2002:timestamp",
    ),
    (
        "unknown tag",
        VALID.replace("id: cart\n", "id: cart\nname: !!python/name:os.system x\n"),
        "4: name: cannot read 'x' as tag:yaml.org,2002:python/name:os.system: could not "
        "determine a constructor",
    ),
    (
        "number beyond 64 bits",
        VALID.replace(
            "wait_for: {type: purchase}", f"wait_for: {{attributes: {{n: {{gt: {'9' * 30}}}}}}}"
        ),
        "13: windows[0].wait_for.attributes.n.gt: a number larger than the limit of",
    ),
    (
        "infinite number",
        VALID.replace("wait_for: {type: purchase}", "wait_for: {attributes: {n: {gt: .inf}}}"),
        "13: windows[0].wait_for.attributes.n.gt: '.inf': numbers must be finite",
    ),
    (
        "a list as a key",
        VALID.replace("id: cart\n", "id: cart\n? [a, b]\n: c\n"),
        "4: (file): keys must be plain names, not lists or mappings",
    ),
    (
        "control character",
        VALID.replace("id: cart\n", "id: cart\nname: a\x00b\n"),
        "4: (file): not valid YAML: special characters are not allowed",
    ),
]


@pytest.mark.parametrize(("what", "content", "expected"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_files_are_refused_with_file_line_and_field(
    tmp_path: Path, what: str, content: str | bytes, expected: str
) -> None:
    path = tmp_path / "j.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    found, count = validate_paths([tmp_path])
    assert count == 1
    assert any(p.startswith(f"{path}:{expected}") for p in found), (what, found)
    for problem in found:
        assert re.fullmatch(rf"{re.escape(str(path))}:\d+: \S+: .+", problem), problem
    with pytest.raises(JourneyError) as info:
        load_catalog(path)
    assert [str(p) for p in info.value.problems] == found


def test_the_bounds_themselves_are_accepted(tmp_path: Path) -> None:
    text = _big_parameter(MAX_TEXT_LENGTH).replace("within: 30m", "within: 366d")
    assert problems_of(tmp_path, text) == []
    windows = load_catalog(tmp_path).journeys[0].windows
    assert windows[0].within_ms == MAX_DURATION_MS
    assert dict(windows[0].on_timeout.action.parameters)["text"] == "x" * MAX_TEXT_LENGTH


def test_the_alias_bomb_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    # nine levels of nine aliases expand to 9**9 (~387 million) values; refusing them is instant
    (tmp_path / "j.yaml").write_text(BOMB)
    found, _ = validate_paths([tmp_path])
    assert len(found) == 1


def test_every_deadline_fits_the_deadline_index_key() -> None:
    """The latest deadline a valid catalog can set still fits the 13 digits of the key."""
    from agents.processor import index_key, parse_index_key
    from percorso.records import _MAX_MS as LATEST_EVENT_MS

    # the chain of windows armed by each other's timeouts, then inactivity after the last
    latest_due = LATEST_EVENT_MS + (MAX_WINDOWS + 1) * MAX_DURATION_MS
    assert latest_due < 10**13
    key = index_key(99999, latest_due, "c")
    assert parse_index_key(key) == (99999, latest_due, "c")
    assert len(key) == len(index_key(99999, 0, "c"))


def test_published_schema_states_the_same_limits() -> None:
    import json

    schema = json.loads((CATALOG_DIR.parent / "journey.schema.json").read_text())
    defs = schema["$defs"]
    action = defs["action"]["properties"]
    journey = defs["Journey"]["properties"]
    policies = defs["Policies"]["properties"]
    stated = [
        (defs["strings"]["oneOf"][0]["maxLength"], MAX_NAME_LENGTH),
        (defs["strings"]["oneOf"][1]["items"]["maxLength"], MAX_NAME_LENGTH),
        (defs["strings"]["oneOf"][1]["maxItems"], MAX_ITEMS),
        (action["channel"]["maxLength"], MAX_NAME_LENGTH),
        (action["channels"]["items"]["maxLength"], MAX_NAME_LENGTH),
        (action["variants"]["items"]["maxLength"], MAX_NAME_LENGTH),
        (action["parameters"]["maxProperties"], MAX_ACTION_PARAMETERS),
        (action["parameters"]["additionalProperties"]["maxLength"], MAX_TEXT_LENGTH),
        (action["priority"]["minimum"], MIN_INTEGER),
        (action["priority"]["maximum"], MAX_INTEGER),
        (journey["priority"]["minimum"], MIN_INTEGER),
        (journey["priority"]["maximum"], MAX_INTEGER),
        (journey["name"]["maxLength"], MAX_NAME_LENGTH),
        (journey["description"]["maxLength"], MAX_TEXT_LENGTH),
        (journey["windows"]["maxItems"], MAX_WINDOWS),
        (
            journey["windows"]["items"]["properties"]["correlate"]["items"]["maxLength"],
            MAX_NAME_LENGTH,
        ),
        (journey["score"]["properties"]["effort_budget"]["maximum"], MAX_INTEGER),
        (policies["description"]["maxLength"], MAX_TEXT_LENGTH),
        (
            policies["frequency_caps"]["items"]["properties"]["channel"]["maxLength"],
            MAX_NAME_LENGTH,
        ),
        (policies["frequency_caps"]["items"]["properties"]["max"]["maximum"], MAX_INTEGER),
        (policies["quiet_hours"]["properties"]["channels"]["items"]["maxLength"], MAX_NAME_LENGTH),
        (policies["quiet_hours"]["properties"]["default_timezone"]["maxLength"], MAX_NAME_LENGTH),
        (policies["consent"]["properties"]["channel_attribute"]["maxLength"], MAX_NAME_LENGTH),
        (
            policies["arbitration"]["properties"]["marketing_actions_per_step"]["maximum"],
            MAX_INTEGER,
        ),
        (policies["event_types"]["items"]["maxLength"], MAX_NAME_LENGTH),
    ]
    assert [s for s, _ in stated] == [limit for _, limit in stated]
    assert "366d" in defs["duration"]["description"]
    assert format_duration_ms(MAX_DURATION_MS) == "366d"
