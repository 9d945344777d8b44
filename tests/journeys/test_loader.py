"""Journey files: the catalog is valid; broken files get file, line and field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
