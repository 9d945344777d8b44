"""Golden replays: the bytes ``percorso simulate`` prints for fixed, generated inputs.

The engine may get faster; it may not decide differently. Each case is a deterministic input
(``percorso.synthetic`` traffic with duplicates, delayed and late events mixed in, or the example
file) replayed through the shipped catalog with every kind of output record, and the SHA-256 of
the output bytes recorded from the engine before the speed work (commit 2d286cc). A change that
alters any transition, action, suppression or late/duplicate verdict changes the digest.

``python -m tests.journeys.golden`` checks every case, the 200,000-touchpoint one included
(about a minute); ``make test`` checks the smaller ones (tests/journeys/test_golden.py).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from journeys.simulate import run_simulation
from percorso.synthetic import SyntheticTraffic, disordered

REPO = Path(__file__).resolve().parents[2]
CATALOG = REPO / "journeys" / "catalog"
EXAMPLE = REPO / "examples" / "events.jsonl"
INCLUDE = "actions,transitions,suppressed,late"
DAY = 86_400_000
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@dataclass(frozen=True)
class Case:
    name: str
    events: int  # before duplicates and late copies are added
    customers: int
    days: int
    seed: int
    input_digest: str  # of the generated file: tells a generator change from an engine change
    digest: str
    lines: int  # output lines, to tell a lost record from a changed one

    def write(self, path: Path) -> Path:
        traffic = SyntheticTraffic(
            self.customers,
            seed=self.seed,
            start_ms=START_MS,
            rate=self.events / (self.days * 86_400),
        )
        touchpoints = disordered(traffic.take(self.events), seed=self.seed)
        with path.open("w", encoding="utf-8") as f:
            for tp in touchpoints:
                f.write(json.dumps(tp, sort_keys=True) + "\n")
        return path

    @property
    def until(self) -> str:
        # long after the last event: every window, deferral and inactivity timeout fires
        return str(START_MS + (self.days + 45) * DAY)


SMALL = Case(
    "30k",
    events=30_000,
    customers=1_500,
    days=4,
    seed=11,
    input_digest="c5c45a64df01caa7247a7975eee86d77e6ec0ccd36f31d707e1d4683c2478e85",
    digest="9b6eaba4241e71084ab7f669be7057a01fd78631139edfed63ce8f063d326d37",
    lines=41_476,
)
LARGE = Case(
    "200k",
    events=200_000,
    customers=20_000,
    days=7,
    seed=12,
    input_digest="9ff525da77dd48b6a6faf87b4fa2d60a6d47c83f6e47745d14eb6b4567fc2479",
    digest="91d6889ed89674a2ce42d5f9c5f8e6a11cc2263f0f8bbab6853a4a497acae1a1",
    lines=345_433,
)
EXAMPLE_DIGEST = "7922e83736e98c003fb869249a04efe1a5ecfc1b4561725b1941aa5d46389eae"
EXAMPLE_LINES = 51


def simulate(events: Path, until: str | None = None) -> bytes:
    out, err = io.StringIO(), io.StringIO()
    code = run_simulation(CATALOG, str(events), out, err, until=until, include=INCLUDE)
    if code != 0:
        raise RuntimeError(f"simulate exited {code}: {err.getvalue()[-500:]}")
    return out.getvalue().encode("utf-8")


def digest(output: bytes) -> str:
    return hashlib.sha256(output).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.journeys.golden")
    parser.add_argument("--keep", type=Path, help="folder to keep the inputs and outputs in")
    args = parser.parse_args()
    import tempfile

    folder = args.keep or Path(tempfile.mkdtemp(prefix="percorso-golden-"))
    folder.mkdir(parents=True, exist_ok=True)
    failed = 0
    runs: list[tuple[str, Path, str | None, str, int]] = [
        ("example", EXAMPLE, None, EXAMPLE_DIGEST, EXAMPLE_LINES)
    ]
    for case in (SMALL, LARGE):
        events = case.write(folder / f"{case.name}.jsonl")
        if digest(events.read_bytes()) != case.input_digest:
            print(f"{case.name:8} the generated input changed: the digests no longer apply")
            failed += 1
        runs.append((case.name, events, case.until, case.digest, case.lines))
    for name, events, until, expected, lines in runs:
        began = time.perf_counter()
        output = simulate(events, until)
        (folder / f"{name}.out.jsonl").write_bytes(output)
        got, count = digest(output), output.count(b"\n")
        ok = got == expected and count == lines
        failed += not ok
        print(
            f"{name:8} {'ok' if ok else 'DIFFERENT':9} {got} lines={count} "
            f"({time.perf_counter() - began:.1f} s)"
        )
    print(f"inputs and outputs in {folder}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
