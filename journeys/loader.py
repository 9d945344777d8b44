"""Load journey files: YAML -> JSON Schema -> semantic checks -> the frozen model.

Every problem names the file, the line and the field (``cart.yaml:14: windows[0].within: ...``);
loading collects all problems of all files instead of stopping at the first.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from jsonschema import Draft202012Validator

from journeys.durations import parse_duration_ms
from journeys.limits import (
    MAX_FILE_BYTES,
    MAX_ITEMS,
    MAX_NAME_LENGTH,
    MAX_NESTING_DEPTH,
    MAX_NUMBER_LITERAL,
    MAX_TEXT_LENGTH,
    MAX_YAML_NODES,
)
from journeys.model import (
    EXIT_STAGES,
    ActionSpec,
    Catalog,
    Condition,
    ConversionSpec,
    EventAction,
    Experiment,
    FrequencyCap,
    Journey,
    Migration,
    Outcome,
    Policies,
    Predicate,
    QuietHours,
    Reentry,
    ScoreWeights,
    Stage,
    Suppression,
    Window,
    state_key,
)
from journeys.vocabulary import STANDARD_TOUCHPOINT_TYPES

Path_ = tuple[str | int, ...]
SCHEMA_PATH = Path(__file__).with_name("journey.schema.json")


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field or '(file)'}: {self.message}"


class JourneyError(Exception):
    """One or more journey files are invalid; ``problems`` lists every one."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("invalid journey files:\n" + "\n".join(str(p) for p in problems))


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))


def field_name(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _plain(part):  # quoted, so a problem stays one readable line
            out += f"[{_shown(part)}]"
        else:
            out += f".{part}" if out else part
    return out


def _plain(name: str) -> bool:
    return bool(name) and name.isprintable() and not any(c.isspace() for c in name)


def _shown(name: str) -> str:
    return name if _plain(name) else repr(name)


class _Refused(yaml.MarkedYAMLError):
    """A YAML construct journey files do not allow, at ``path``."""

    def __init__(self, path: Path_, mark: yaml.Mark, problem: str) -> None:
        super().__init__(problem=problem, problem_mark=mark)
        self.path = path


class _JourneyYamlLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases and bounds depth and size while composing.

    Journey files have no use for aliases, and an alias is how a few lines expand into billions
    of values ("billion laughs") or into a value that contains itself; refusing them before any
    value is built is simpler and safer than bounding the expansion. Depth is bounded here
    because composing recurses once per nesting level.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._open: list[Path_] = []  # the path of every node being composed, outermost first
        self._nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        base = self._open[-1] if self._open else ()
        if isinstance(index, int):
            path: Path_ = (*base, index)
        elif isinstance(index, yaml.ScalarNode):
            path = (*base, index.value)
        else:  # the document, or a mapping key
            path = base
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(
                path,
                event.start_mark,
                "YAML anchors and aliases (&name, *name) are not allowed in journey files; "
                "write the value out",
            )
        self._nodes += 1
        if self._nodes > MAX_YAML_NODES:
            raise _Refused(path, event.start_mark, f"more than {MAX_YAML_NODES} values in one file")
        if len(self._open) >= MAX_NESTING_DEPTH:
            raise _Refused(path, event.start_mark, f"nested deeper than {MAX_NESTING_DEPTH} levels")
        self._open.append(path)
        try:
            return super().compose_node(parent, index)
        finally:
            self._open.pop()


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _Source:
    """One YAML document with the line of every key and item."""

    def __init__(self, file: str, text: str, time_scale: float = 1.0) -> None:
        self.file = file
        self.time_scale = time_scale
        self.lines: dict[Path_, int] = {}
        self.problems: list[Problem] = []
        self.data: Any = None
        loader: _JourneyYamlLoader | None = None
        try:
            loader = _JourneyYamlLoader(text)
            node = loader.get_single_node()
        except _Refused as exc:
            assert exc.problem_mark is not None and exc.problem is not None
            self.problems.append(
                Problem(file, exc.problem_mark.line + 1, field_name(exc.path), exc.problem)
            )
            return
        except yaml.reader.ReaderError as exc:
            line = text.count("\n", 0, exc.position) + 1
            self.problems.append(
                Problem(file, line, "", f"not valid YAML: {exc.reason} ({exc.character!r})")
            )
            return
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else 1
            self.problems.append(
                Problem(file, line, "", f"not valid YAML: {getattr(exc, 'problem', None) or exc}")
            )
            return
        finally:
            if loader is not None:
                loader.dispose()
        self.data = self._build(node, ()) if node is not None else None

    def _build(self, node: yaml.Node, path: Path_) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and len(node.value) > MAX_ITEMS:
            self.problem(path, f"{len(node.value)} entries, more than the limit of {MAX_ITEMS}")
            return None
        if isinstance(node, yaml.MappingNode):
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    self.problems.append(
                        Problem(
                            self.file,
                            key_node.start_mark.line + 1,
                            field_name(path),
                            "keys must be plain names, not lists or mappings",
                        )
                    )
                    continue
                key = key_node.value
                child = (*path, key)
                if len(key) > MAX_NAME_LENGTH:
                    self.problems.append(
                        Problem(
                            self.file,
                            key_node.start_mark.line + 1,
                            field_name(path),
                            f"a key of {len(key)} characters, longer than the limit of "
                            f"{MAX_NAME_LENGTH}",
                        )
                    )
                    continue
                if key in result:
                    self.problems.append(
                        Problem(
                            self.file,
                            key_node.start_mark.line + 1,
                            field_name(child),
                            "duplicate key",
                        )
                    )
                self.lines[child] = key_node.start_mark.line + 1
                result[key] = self._build(value_node, child)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self._build(item, (*path, i)) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        if len(node.value) > MAX_TEXT_LENGTH:
            self.problem(
                path,
                f"{len(node.value)} characters, longer than the limit of {MAX_TEXT_LENGTH}",
            )
            return None
        try:
            value = _scalar(node)
        # AttributeError/TypeError: PyYAML's constructors for explicit tags raise them on a
        # value that does not fit the tag (``!!timestamp null``)
        except (yaml.YAMLError, ValueError, OverflowError, AttributeError, TypeError) as exc:
            reason = _one_line(str(getattr(exc, "problem", None) or exc))
            self.problem(path, f"cannot read {node.value[:40]!r} as {node.tag}: {reason}")
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.problem(path, f"{node.value!r}: numbers must be finite")
            return None
        if isinstance(value, int) and abs(value) > MAX_NUMBER_LITERAL:
            self.problem(path, f"a number larger than the limit of {MAX_NUMBER_LITERAL}")
            return None
        return value

    def line(self, path: Iterable[str | int]) -> int:
        p = tuple(path)
        while p and p not in self.lines:
            p = p[:-1]
        return self.lines.get(p, 1)

    def problem(self, path: Iterable[str | int], message: str) -> None:
        p = tuple(path)
        self.problems.append(Problem(self.file, self.line(p), field_name(p), message))


def _scalar(node: yaml.ScalarNode) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


_TOO_MANY = {"maxLength": "characters", "maxItems": "items", "maxProperties": "entries"}


def _schema_problems(src: _Source) -> None:
    errors = sorted(_validator().iter_errors(src.data), key=lambda e: list(map(str, e.path)))
    for error in errors:
        if error.validator in ("if", "allOf"):
            continue
        path = tuple(error.absolute_path)
        message = error.message
        if error.validator in _TOO_MANY:
            # jsonschema quotes the whole value, which is what is too large here
            unit = _TOO_MANY[error.validator]
            more = "longer" if unit == "characters" else "more"
            message = f"{more} than the limit of {error.validator_value} {unit}"
        if error.validator == "additionalProperties":
            extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
            for key in extra:
                src.problem((*path, key), "unknown key (not part of the format)")
            continue
        if error.validator == "oneOf" and error.context:
            # report the branch that fits the value's shape, not "is not of type ..."
            fitting = [e for e in error.context if e.validator != "type"] or error.context
            best = min(fitting, key=lambda e: len(list(e.absolute_path)))
            if best.validator == "additionalProperties":
                extra = sorted(set(best.instance) - set(best.schema.get("properties", {})))
                message = (
                    f"unknown comparison {', '.join(map(_shown, extra))} (expected one of "
                    f"{', '.join(sorted(best.schema.get('properties', {})))})"
                )
            else:
                message = best.message
        src.problem(path, message)


def _strings(value: Any) -> frozenset[str]:
    if value is None:
        return frozenset()
    return frozenset([value] if isinstance(value, str) else value)


def _condition(raw: dict[str, Any] | None) -> Condition:
    raw = raw or {}
    predicates = []
    for name, spec in sorted((raw.get("attributes") or {}).items()):
        if isinstance(spec, dict):
            for op, value in sorted(spec.items()):
                if op in ("in", "not_in"):
                    value = tuple(str(v) for v in value)
                elif op in ("eq", "ne"):
                    value = str(value)
                elif op in ("gt", "gte", "lt", "lte"):
                    value = float(value)
                predicates.append(Predicate(name, op, value))
        else:
            literal = ("true" if spec else "false") if isinstance(spec, bool) else str(spec)
            predicates.append(Predicate(name, "eq", literal))
    return Condition(_strings(raw.get("type")), _strings(raw.get("channel")), tuple(predicates))


def condition_types(c: Condition | None) -> frozenset[str]:
    return c.types if c is not None else frozenset()


class _JourneyBuilder:
    def __init__(self, src: _Source) -> None:
        self.src = src
        self.data: dict[str, Any] = src.data

    def duration(self, path: Path_, value: str) -> int:
        try:
            return max(1, round(parse_duration_ms(value) / self.src.time_scale))
        except ValueError as exc:
            self.src.problem(path, str(exc))
            return 1

    def action(self, path: Path_, raw: dict[str, Any], category: str, priority: int) -> ActionSpec:
        if ("channel" in raw) == ("channels" in raw):
            self.src.problem(path, "give exactly one of channel or channels")
        channels = tuple(raw["channels"]) if "channels" in raw else (raw.get("channel", "?"),)
        if len(set(channels)) != len(channels):
            self.src.problem((*path, "channels"), "a channel is listed twice")
        params = tuple(
            sorted(
                (k, str(v).lower() if isinstance(v, bool) else str(v))
                for k, v in (raw.get("parameters") or {}).items()
            )
        )
        return ActionSpec(
            name=raw["name"],
            channels=channels,
            priority=int(raw.get("priority", priority)),
            category=raw.get("category", category),
            expires_after_ms=self.duration((*path, "expires_after"), raw["expires_after"])
            if "expires_after" in raw
            else None,
            parameters=params,
            variants=frozenset(raw.get("variants", ())),
        )

    def outcome(
        self, path: Path_, raw: dict[str, Any] | None, category: str, priority: int
    ) -> Outcome:
        if not raw:
            return Outcome()
        action = (
            self.action((*path, "action"), raw["action"], category, priority)
            if "action" in raw
            else None
        )
        return Outcome(goto=raw.get("goto"), action=action)

    def build(self) -> Journey:
        d = self.data
        category = d.get("category", "marketing")
        priority = int(d.get("priority", 50))
        entry = d["entry"]
        reentry_raw = entry.get("reentry", "never")
        reentry_after = None
        reentry: Reentry
        if isinstance(reentry_raw, dict):
            reentry = "after"
            reentry_after = self.duration(("entry", "reentry", "after"), reentry_raw["after"])
        else:
            reentry = reentry_raw if reentry_raw in ("never", "always") else "never"
        exit_ = d.get("exit") or {}
        stages = tuple(
            Stage(
                s["id"],
                _condition(s["when"]) if "when" in s else None,
                frozenset(s.get("from", ())),
            )
            for s in d["stages"]
        )
        windows = []
        for i, w in enumerate(d.get("windows") or []):
            p: Path_ = ("windows", i)
            windows.append(
                Window(
                    id=w["id"],
                    within_ms=self.duration((*p, "within"), w["within"]),
                    wait_for=_condition(w["wait_for"]),
                    start=_condition(w["start"]) if "start" in w else None,
                    after=w.get("after"),
                    correlate=tuple(w.get("correlate", ())),
                    on_timeout=self.outcome(
                        (*p, "on_timeout"), w.get("on_timeout"), category, priority
                    ),
                    on_match=self.outcome((*p, "on_match"), w.get("on_match"), category, priority),
                )
            )
        actions = tuple(
            EventAction(
                a["id"],
                _condition(a["when"]),
                self.action(("actions", i, "action"), a["action"], category, priority),
                frozenset(a.get("in_stages", ())),
            )
            for i, a in enumerate(d.get("actions") or [])
        )
        experiment = None
        if "experiment" in d:
            e = d["experiment"]
            experiment = Experiment(
                e["id"],
                float(e.get("holdout", 0.0)),
                tuple(sorted((k, float(v)) for k, v in e["variants"].items())),
            )
        score = ScoreWeights(**(d.get("score") or {}))
        version = d.get("version")
        migrate = None
        if "migrate" in d:
            m = d["migrate"]
            migrate = Migration(int(m["from"]), tuple(sorted(m["stages"].items())))
        conversion = None
        if "conversion" in d:
            c = d["conversion"]
            conversion = ConversionSpec(
                _condition(c["when"]),
                self.duration(("conversion", "within"), c["within"]),
                c.get("value"),
            )
        journey = Journey(
            id=state_key(d["id"], version),
            name=d.get("name", d["id"]),
            category=category,
            priority=priority,
            entry=_condition(entry["when"]),
            reentry=reentry,
            reentry_after_ms=reentry_after,
            stages=stages,
            windows=tuple(windows),
            actions=actions,
            goal=_condition(exit_["goal"]) if "goal" in exit_ else None,
            exit_on=tuple(_condition(c) for c in exit_.get("events", ())),
            inactivity_ms=self.duration(("exit", "inactivity"), exit_["inactivity"])
            if "inactivity" in exit_
            else None,
            experiment=experiment,
            score=score,
            source=self.src.file,
            journey_id=d["id"] if version is not None else "",
            version=version,
            status=d.get("status", "active"),
            migrate=migrate,
            conversion=conversion,
            instance_attribute=d["instance_key"][len("${attributes.") : -1]
            if "instance_key" in d
            else None,
            max_instances=int(d.get("max_instances", 8)),
        )
        self.check(journey)
        return journey

    def check(self, j: Journey) -> None:
        problem = self.src.problem
        stage_ids = [s.id for s in j.stages]
        _duplicates(self.src, "stages", stage_ids)
        _duplicates(self.src, "windows", [w.id for w in j.windows])
        _duplicates(self.src, "actions", [a.id for a in j.actions])
        known = set(stage_ids)
        for i, s in enumerate(j.stages):
            if s.id in EXIT_STAGES.values():
                problem(
                    ("stages", i, "id"),
                    f"{s.id!r} is reserved for exits ({', '.join(sorted(EXIT_STAGES.values()))})",
                )
            for k, src_stage in enumerate(sorted(s.allowed_from)):
                if src_stage not in known:
                    problem(("stages", i, "from", k), f"unknown stage {src_stage!r}")
        window_ids = {w.id for w in j.windows}
        for i, w in enumerate(j.windows):
            p: Path_ = ("windows", i)
            if (w.start is None) == (w.after is None):
                problem(
                    p,
                    "give exactly one of start (an event arms it) or after (another "
                    "window's timeout arms it)",
                )
            if w.after is not None:
                if w.after not in window_ids:
                    problem((*p, "after"), f"unknown window {w.after!r}")
                if w.correlate:
                    problem(
                        (*p, "correlate"),
                        "a window armed by another window inherits "
                        "its correlation; remove correlate",
                    )
            for name, outcome in (("on_timeout", w.on_timeout), ("on_match", w.on_match)):
                if outcome.goto is not None and outcome.goto not in known:
                    problem((*p, name, "goto"), f"unknown stage {outcome.goto!r}")
        for i, w in enumerate(j.windows):
            seen, cur = {w.id}, w.after
            while cur is not None and cur in window_ids:
                if cur in seen:
                    problem(("windows", i, "after"), "windows arm each other in a cycle")
                    break
                seen.add(cur)
                cur = next(x.after for x in j.windows if x.id == cur)
        for i, a in enumerate(j.actions):
            for st in sorted(a.in_stages - known):
                problem(("actions", i, "in_stages"), f"unknown stage {st!r}")
        for i, name in _unreachable(j):
            problem(
                ("stages", i, "id"),
                f"stage {name!r} is unreachable: no entry condition or window leads to it",
            )
        if j.experiment is not None and j.experiment.holdout >= 1:
            problem(("experiment", "holdout"), "a holdout of 1 leaves no one in the journey")
        if j.reentry == "after" and j.reentry_after_ms is None:
            problem(("entry", "reentry"), "after needs a duration")
        if j.migrate is not None:
            if j.version is None:
                problem(("migrate",), "a migration needs the version of this journey (version)")
            elif j.migrate.from_version >= j.version:
                problem(
                    ("migrate", "from"),
                    f"migrates from version {j.migrate.from_version}, not older than this "
                    f"version {j.version}",
                )
            for old, new in j.migrate.stages:
                if new not in known:
                    problem(("migrate", "stages", old), f"unknown stage {new!r} of this version")


def _mentioned_types(j: Journey) -> frozenset[str]:
    conds = [
        j.entry,
        j.goal,
        *j.exit_on,
        *(s.when for s in j.stages),
        *(a.when for a in j.actions),
        *(w.start for w in j.windows),
    ]
    return frozenset().union(*(condition_types(c) for c in conds))


def _duplicates(src: _Source, section: str, ids: list[str]) -> None:
    seen: set[str] = set()
    for i, item in enumerate(ids):
        if item in seen:
            src.problem((section, i, "id"), f"duplicate id {item!r}")
        seen.add(item)


def _unreachable(j: Journey) -> list[tuple[int, str]]:
    by_id = {s.id: s for s in j.stages}
    gotos = {o.goto for w in j.windows for o in (w.on_timeout, w.on_match) if o.goto}
    reachable = {j.stages[0].id} | {s.id for s in j.stages if s.when is not None} | gotos
    changed = True
    while changed:
        changed = False
        for s in j.stages:
            if s.id not in reachable and s.when is not None and s.allowed_from & reachable:
                reachable.add(s.id)
                changed = True
    return [(i, s.id) for i, s in enumerate(j.stages) if s.id not in reachable and s.id in by_id]


def _policies(src: _Source) -> Policies:
    d = src.data
    b = _JourneyBuilder(src)
    caps = tuple(
        FrequencyCap(
            c["channel"], int(c["max"]), b.duration(("frequency_caps", i, "per"), c["per"])
        )
        for i, c in enumerate(d.get("frequency_caps") or [])
    )
    quiet = None
    if "quiet_hours" in d:
        q = d["quiet_hours"]
        tz = q.get("default_timezone", "UTC")
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            src.problem(("quiet_hours", "default_timezone"), f"unknown time zone {tz!r}")
        start_h, start_m = map(int, q["start"].split(":"))
        end_h, end_m = map(int, q["end"].split(":"))
        if (start_h, start_m) == (end_h, end_m):
            src.problem(("quiet_hours", "end"), "start and end are equal")
        quiet = QuietHours(start_h * 60 + start_m, end_h * 60 + end_m, frozenset(q["channels"]), tz)
    consent = d.get("consent") or {}
    defaults = Policies()
    suppressions = tuple(
        Suppression(
            s["id"],
            _condition(s["start"]),
            _condition(s["end"]),
            b.duration(("suppressions", i, "max_duration"), s["max_duration"])
            if "max_duration" in s
            else None,
            frozenset(s.get("categories", ("marketing",))),
        )
        for i, s in enumerate(d.get("suppressions") or [])
    )
    _duplicates(src, "suppressions", [s.id for s in suppressions])
    return Policies(
        frequency_caps=caps,
        quiet_hours=quiet,
        consent_withdraw=_condition(consent["withdraw"])
        if "withdraw" in consent
        else defaults.consent_withdraw,
        consent_grant=_condition(consent["grant"])
        if "grant" in consent
        else defaults.consent_grant,
        consent_channel_attribute=consent.get(
            "channel_attribute", defaults.consent_channel_attribute
        ),
        suppressions=suppressions,
        marketing_actions_per_step=int(
            (d.get("arbitration") or {}).get(
                "marketing_actions_per_step", defaults.marketing_actions_per_step
            )
        ),
        recent_touchpoints=int(
            (d.get("context") or {}).get("recent_touchpoints", defaults.recent_touchpoints)
        ),
        allowed_lateness_ms=b.duration(("lateness", "allowed"), d["lateness"]["allowed"])
        if "allowed" in (d.get("lateness") or {})
        else defaults.allowed_lateness_ms,
        remember_events=int(
            (d.get("deduplication") or {}).get("remember_events", defaults.remember_events)
        ),
        event_types=frozenset(d.get("event_types", ())),
        source=src.file,
    )


def journey_files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml"))
        else:
            files.append(path)
    return files


def _load_file(path: Path, time_scale: float = 1.0) -> tuple[_Source, Journey | Policies | None]:
    src = _Source(str(path), "")
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        src.problems.append(Problem(str(path), 1, "", f"cannot read: {exc.strerror}"))
        return src, None
    if len(raw) > MAX_FILE_BYTES:
        src.problems.append(
            Problem(str(path), 1, "", f"larger than the limit of {MAX_FILE_BYTES} bytes")
        )
        return src, None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        src.problems.append(
            Problem(
                str(path),
                line,
                "",
                f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start} cannot be "
                f"decoded (journey files must be UTF-8)",
            )
        )
        return src, None
    src = _Source(str(path), text, time_scale)
    if src.problems:
        return src, None
    if not isinstance(src.data, dict):
        src.problem((), "expected a mapping with apiVersion and kind")
        return src, None
    _schema_problems(src)
    if src.problems:
        return src, None
    if src.data["kind"] == "Policies":
        return src, _policies(src)
    return src, _JourneyBuilder(src).build()


def load_catalog_with_problems(
    paths: Iterable[Path], time_scale: float = 1.0
) -> tuple[Catalog | None, list[Problem], int]:
    """``time_scale`` > 1 divides every duration (windows, caps, lateness...) by it: the demo
    uses it to show a 30-minute window in 30 seconds."""
    files = journey_files(paths)
    problems: list[Problem] = []
    journeys: list[Journey] = []
    policies: list[tuple[_Source, Policies]] = []
    journeys_src: list[tuple[Journey, _Source]] = []
    families: dict[str, list[tuple[Journey, str]]] = {}  # journey id -> versions, files
    for path in files:
        src, loaded = _load_file(path, time_scale)
        problems += src.problems
        if isinstance(loaded, Policies):
            policies.append((src, loaded))
        elif isinstance(loaded, Journey):
            family = families.setdefault(loaded.public_id, [])
            same = [f for j, f in family if j.version == loaded.version]
            if family and (loaded.version is None or family[0][0].version is None):
                src.problem(
                    ("id",),
                    f"journey id {loaded.public_id!r} is already defined in {family[0][1]}"
                    + (
                        " (several files of one journey each need a different version)"
                        if loaded.version is not None or family[0][0].version is not None
                        else ""
                    ),
                )
                problems += src.problems[-1:]
            elif same:
                src.problem(
                    ("version",),
                    f"version {loaded.version} of journey {loaded.public_id!r} is already "
                    f"defined in {same[0]}",
                )
                problems += src.problems[-1:]
            else:
                family.append((loaded, src.file))
                journeys.append(loaded)
                journeys_src.append((loaded, src))
    for src, _ in policies[1:]:
        problems.append(
            Problem(
                src.file,
                src.line(("kind",)),
                "kind",
                f"a second Policies file (the first is {policies[0][0].file})",
            )
        )
    if not files:
        problems.append(
            Problem(
                ", ".join(str(p) for p in paths), 1, "", "no journey files (*.yaml, *.yml) found"
            )
        )
    known = STANDARD_TOUCHPOINT_TYPES | frozenset(t for _, pol in policies for t in pol.event_types)
    known = known.union(*(_mentioned_types(j) for j, _ in journeys_src))
    for journey, src in journeys_src:
        for i, w in enumerate(journey.windows):
            for t in sorted(w.wait_for.types - known):
                src.problem(
                    ("windows", i, "wait_for", "type"),
                    f"waits for {t!r}, a touchpoint type that is not standard and that "
                    f"no journey's stages, entry, exit or actions produce, so the window "
                    f"could only ever time out (declare custom types in Policies "
                    f"event_types)",
                )
                problems.append(src.problems[-1])
    problems += _version_problems(journeys_src)
    if problems:
        return None, problems, len(files)
    catalog = Catalog(
        tuple(sorted(journeys, key=lambda j: j.id)), policies[0][1] if policies else Policies()
    )
    return catalog, [], len(files)


def _version_problems(journeys_src: list[tuple[Journey, _Source]]) -> list[Problem]:
    """Across the files of one journey id: one file without a version, or distinct versions
    (checked while loading); migrations name an existing older version and its stages."""
    problems: list[Problem] = []
    by_key = {j.id: j for j, _ in journeys_src}
    for journey, src in journeys_src:
        m = journey.migrate
        if m is None or journey.version is None or m.from_version >= journey.version:
            continue
        old = by_key.get(state_key(journey.public_id, m.from_version))
        if old is not None and old.instance_attribute != journey.instance_attribute:
            src.problem(
                ("migrate",),
                f"version {m.from_version} is keyed by {old.instance_attribute!r} and this "
                f"version by {journey.instance_attribute!r}: a migration keeps instances, so "
                f"both need the same instance_key",
            )
            problems.append(src.problems[-1])
        if old is None:
            src.problem(
                ("migrate", "from"),
                f"version {m.from_version} of journey {journey.public_id!r} is not in the catalog",
            )
            problems.append(src.problems[-1])
            continue
        old_stages = {s.id for s in old.stages}
        for stage, _ in m.stages:
            if stage not in old_stages:
                src.problem(
                    ("migrate", "stages", stage),
                    f"version {m.from_version} has no stage {stage!r}",
                )
                problems.append(src.problems[-1])
    return problems


def load_catalog(*paths: Path, time_scale: float = 1.0) -> Catalog:
    """The catalog in ``paths`` (files or folders); raises JourneyError listing every problem."""
    catalog, problems, _ = load_catalog_with_problems(paths, time_scale)
    if catalog is None:
        raise JourneyError(problems)
    return catalog


def validate_paths(paths: list[Path]) -> tuple[list[str], int]:
    """(problems as ``file:line: field: message`` strings, files checked)."""
    _, problems, count = load_catalog_with_problems(paths)
    return [str(p) for p in problems], count
