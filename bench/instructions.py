"""Instructions per touchpoint of ``Engine.advance``, counted with valgrind: a measure of the
engine's work that does not move with the load on a shared machine, as CPU time does (the
count repeats to about 0.05%). It misses what instructions do not show (cache misses, the
collector's walks, which it leaves out: the collector is off), so it judges changes to the
engine's code, not the bench's rows.

    python -m bench.instructions [--commit REF] [--events N] [--customers N] [--journeys 5|50]

counts the replay of the engine scenario's traffic (final ticks included) through this
checkout's engine, or through the engine of ``REF`` taken from git (``bench.engine``'s
``baseline_engine``): the whole process under valgrind once with no replay and once with one,
the difference divided by the touchpoints. Needs ``valgrind`` on the PATH.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.engine import DAY, REPO, START_MS, replicated, replicated_traffic, traffic


def replay(commit: str | None, events: int, customers: int, journeys: int, times: int) -> None:
    from bench.engine import CATALOG_DIR, baseline_engine
    from journeys.loader import load_catalog

    if commit is None:
        from journeys import engine as module
    else:  # every module of journeys/ at that commit (the engine's imports changed over time)
        listed = subprocess.run(
            ["git", "ls-tree", "--name-only", commit, "journeys/"],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        ).stdout.split()
        names = tuple(Path(f).stem for f in listed if f.endswith(".py") and "__init__" not in f)
        module = baseline_engine(commit, names)
    catalog = load_catalog(CATALOG_DIR)
    touchpoints = traffic(events, customers)
    if journeys == 50:
        catalog, touchpoints = replicated(catalog), replicated_traffic(touchpoints)
    engine: Any = module.Engine(catalog)
    gc.collect()
    gc.disable()
    for _ in range(times):
        states: dict[str, Any] = {}
        for tp in touchpoints:
            step = engine.advance(states.get(tp["customer_id"]), tp)
            states[tp["customer_id"]] = step.state
        for state in states.values():
            engine.advance(state, module.Tick(START_MS + 8 * DAY))


def instructions(args: argparse.Namespace, times: int) -> int:
    command = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "bench.instructions",
        "--events",
        str(args.events),
        "--customers",
        str(args.customers),
        "--journeys",
        str(args.journeys),
        "--replays",
        str(times),
    ]
    if args.commit:
        command += ["--commit", args.commit]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{done.stderr}")
    return int(found.group(1).replace(",", ""))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions")
    parser.add_argument("--commit", help="the engine of this commit (default: this checkout's)")
    parser.add_argument("--events", type=int, default=5_000)
    parser.add_argument("--customers", type=int, default=1_500)
    parser.add_argument("--journeys", type=int, choices=(5, 50), default=5)
    parser.add_argument("--replays", type=int, help=argparse.SUPPRESS)  # inside valgrind
    args = parser.parse_args()
    if args.replays is not None:
        replay(args.commit, args.events, args.customers, args.journeys, args.replays)
        return 0
    per_touchpoint = (instructions(args, 1) - instructions(args, 0)) // args.events
    print(
        f"engine of {args.commit or 'this checkout'}, {args.journeys} journeys, "
        f"{args.events:,} touchpoints of {args.customers:,} customers: "
        f"{per_touchpoint:,} instructions per touchpoint"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
