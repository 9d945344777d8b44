"""The engine alone, without Kafka: this commit's engine against the engine before the speed
work (commit 2d286cc), in the same process, on the same touchpoints.

The old engine is taken from git at run time (``git show 2d286cc:journeys/<module>.py`` for
``conditions``, ``engine``, ``model`` and ``state``, written to a temporary package whose
imports are renamed), so the comparison needs a clone with history. Both engines get the catalog
loaded by this commit's loader (the journey model has not changed since).
"""

from __future__ import annotations

import gc
import importlib
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

from agents import stored
from journeys.engine import Engine, Tick
from journeys.loader import load_catalog
from journeys.model import Catalog, Condition, Journey
from journeys.vocabulary import STANDARD_TOUCHPOINT_TYPES
from percorso.clients import Codecs
from percorso.codec import LocalSchemaRegistry
from percorso.synthetic import SyntheticTraffic

REPO = Path(__file__).resolve().parents[1]
CATALOG_DIR = REPO / "journeys" / "catalog"
BASELINE_COMMIT = "2d286cc"
BASELINE_MODULES = ("conditions", "engine", "model", "state")
DAY = 86_400_000
START_MS = 1_767_225_600_000
REPLICAS = 10  # 10 x the 5 shipped journeys: a catalog of 50
ROUNDS = 3
CHECKPOINT_RECORDS = 5_000  # a worker's checkpoint interval (1 s) at its ~5,000 records/s


def baseline_engine(
    commit: str = BASELINE_COMMIT, modules: tuple[str, ...] = BASELINE_MODULES
) -> ModuleType:
    """``journeys.engine`` as it was at ``commit``, importable next to today's (``modules``:
    the modules of ``journeys`` it needs at that commit)."""
    package = f"journeys_{commit}"
    if f"{package}.engine" in sys.modules:
        return sys.modules[f"{package}.engine"]
    root = Path(tempfile.mkdtemp(prefix="percorso-engine-"))
    (root / package).mkdir()
    (root / package / "__init__.py").write_text("")
    for module in modules:
        source = subprocess.run(
            ["git", "show", f"{commit}:journeys/{module}.py"],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        ).stdout
        source = source.replace("from journeys.", f"from {package}.")
        (root / package / f"{module}.py").write_text(source)
    sys.path.insert(0, str(root))
    return importlib.import_module(f"{package}.engine")


# -- a catalog of 50 journeys ----------------------------------------------------------------


def _renamed(c: Condition, suffix: str, vocabulary: frozenset[str]) -> Condition:
    """The condition for a replica: its own types; "any type" becomes "any of its types"."""
    types = c.types or vocabulary
    return replace(c, types=frozenset(t + suffix for t in types))


def _replica(j: Journey, suffix: str, vocabulary: frozenset[str]) -> Journey:
    def r(c: Condition) -> Condition:
        return _renamed(c, suffix, vocabulary)

    return replace(
        j,
        id=j.id + suffix,
        entry=r(j.entry),
        stages=tuple(replace(s, when=r(s.when) if s.when else None) for s in j.stages),
        windows=tuple(
            replace(w, wait_for=r(w.wait_for), start=r(w.start) if w.start else None)
            for w in j.windows
        ),
        actions=tuple(replace(a, when=r(a.when)) for a in j.actions),
        goal=r(j.goal) if j.goal else None,
        exit_on=tuple(r(c) for c in j.exit_on),
    )


def suffix(replica: int) -> str:
    return f"_r{replica}"


def replicated(catalog: Catalog, replicas: int = REPLICAS) -> Catalog:
    """``replicas`` copies of every journey, copy k with ids and touchpoint types suffixed
    ``_rk``; a condition on any type becomes one on any of its copy's types (so each copy reacts
    to its own traffic only); the policies apply to every copy's types."""
    vocabulary = STANDARD_TOUCHPOINT_TYPES | catalog.policies.event_types
    journeys = tuple(
        _replica(j, suffix(k), vocabulary) for k in range(replicas) for j in catalog.journeys
    )

    def every(c: Condition) -> Condition:
        return replace(c, types=frozenset(t + suffix(k) for t in c.types for k in range(replicas)))

    p = catalog.policies
    policies = replace(
        p,
        consent_withdraw=every(p.consent_withdraw),
        consent_grant=every(p.consent_grant),
        suppressions=tuple(
            replace(s, start=every(s.start), end=every(s.end)) for s in p.suppressions
        ),
    )
    return Catalog(journeys, policies)


def replicated_traffic(
    touchpoints: list[dict[str, Any]], replicas: int = REPLICAS
) -> list[dict[str, Any]]:
    """Each customer belongs to one copy (by its number) and sends that copy's types."""
    out = []
    for tp in touchpoints:
        k = int(tp["customer_id"].rsplit("-", 1)[1]) % replicas
        out.append({**tp, "type": tp["type"] + suffix(k)})
    return out


# -- measurements -------------------------------------------------------------------------------


def traffic(events: int, customers: int, days: int = 7) -> list[dict[str, Any]]:
    """The throughput scenario's traffic: seed 1, ``events`` over ``days`` of event time."""
    return SyntheticTraffic(
        customers, seed=1, start_ms=START_MS, rate=events / (days * 86_400)
    ).take(events)


def pure_engine(
    engine: Any, tick: Any, codec: Any, records: list[bytes], end: int, collect: bool = True
) -> tuple[float, float]:
    """Seconds (elapsed, and CPU of this process) to decode and advance every record, then
    tick every customer to ``end``: the "pure engine" row of the throughput scenario. With
    ``collect=False`` the garbage collector is off meanwhile: this loop keeps every customer's
    state alive (a worker holds one at a time), and collecting that heap costs as much as the
    engine itself at 50,000 customers, whichever engine runs."""
    states: dict[str, Any] = {}
    if not collect:
        gc.disable()
    cpu = time.process_time()
    began = time.perf_counter()
    for value in records:
        tp = codec.decode(value)
        step = engine.advance(states.get(tp["customer_id"]), tp)
        states[tp["customer_id"]] = step.state
    for state in states.values():
        engine.advance(state, tick(end))
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    gc.enable()
    return elapsed, cpu


def as_a_worker(
    engine: Any,
    tick: Any,
    codec: Any,
    records: list[bytes],
    end: int,
    interval: int = CHECKPOINT_RECORDS,
) -> tuple[float, float]:
    """``pure_engine`` holding the states as the worker does (``agents.store``): stored
    encoded (``agents.stored``, MessagePack in its envelope; a dict stands in for RocksDB),
    decoded when a customer is next seen, kept decoded while it changes in the current
    checkpoint interval, and encoded for every customer changed in it at each checkpoint
    (every ``interval`` records). The final ticks go the same way. The collector stays on:
    what it walks is the interval's changed customers, as in a worker."""
    db: dict[str, bytes] = {}
    changed: dict[str, Any] = {}
    encode, decode, Customer = stored.encode, stored.decode, stored.Customer

    def checkpoint() -> None:
        for customer_id, state in changed.items():
            db[customer_id] = encode(Customer(state, None))
        changed.clear()

    cpu = time.process_time()
    began = time.perf_counter()
    n = 0
    for value in records:
        tp = codec.decode(value)
        customer_id = tp["customer_id"]
        state = changed.get(customer_id)
        if state is None and customer_id in db:
            state = decode(db[customer_id]).state
        step = engine.advance(state, tp)
        if step.outcome not in ("duplicate", "late"):  # the worker stores neither
            changed[customer_id] = step.state
        n += 1
        if n == interval:
            checkpoint()
            n = 0
    checkpoint()
    for customer_id in list(db):
        state = decode(db[customer_id]).state
        changed[customer_id] = engine.advance(state, tick(end)).state
        n += 1
        if n == interval:
            checkpoint()
            n = 0
    checkpoint()
    return time.perf_counter() - began, time.process_time() - cpu


def breakdown(engine: Any, codecs: Codecs, records: list[bytes]) -> dict[str, Any]:
    """µs per touchpoint of each part of a worker's step without Kafka: decode the touchpoint,
    ``Engine.advance`` (p50, p99, mean), encode the transitions and actions it caused; and the
    garbage collector's share of all that (it runs inside whichever step allocates, and its
    cost grows with the states this loop keeps alive, which a worker does not)."""
    decode, encode_t, encode_a = (
        codecs.touchpoint.decode,
        codecs.transition.encode,
        codecs.action.encode,
    )
    states: dict[str, Any] = {}
    advance_ns: list[int] = []
    decode_ns = encode_ns = 0
    clock = time.perf_counter_ns
    collecting = [0, 0]  # ns in the collector, start of the current collection

    def collector(phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            collecting[1] = clock()
        else:
            collecting[0] += clock() - collecting[1]

    gc.callbacks.append(collector)
    for value in records:
        t0 = clock()
        tp = decode(value)
        t1 = clock()
        step = engine.advance(states.get(tp["customer_id"]), tp)
        t2 = clock()
        for t in step.transitions:
            encode_t(t)
        for a in step.actions:
            encode_a(a)
        t3 = clock()
        states[tp["customer_id"]] = step.state
        decode_ns += t1 - t0
        advance_ns.append(t2 - t1)
        encode_ns += t3 - t2
    gc.callbacks.remove(collector)
    advance_ns.sort()
    n = len(records)
    return {
        "decode_us": round(decode_ns / n / 1000, 2),
        "advance_us": {
            "p50": round(advance_ns[n // 2] / 1000, 2),
            "p99": round(advance_ns[min(n - 1, int(n * 0.99))] / 1000, 2),
            "mean": round(sum(advance_ns) / n / 1000, 2),
        },
        "encode_outputs_us": round(encode_ns / n / 1000, 2),
        "of_which_gc_us": round(collecting[0] / n / 1000, 2),
    }


def engine_scenario(events: int, customers: int, rounds: int = ROUNDS) -> dict[str, Any]:
    """This engine against the one of ``BASELINE_COMMIT``, with the 5 shipped journeys and with
    a catalog of 50 (each touchpoint can affect the 5 journeys of its copy)."""
    old = baseline_engine()
    codecs = Codecs(LocalSchemaRegistry())
    shipped = load_catalog(CATALOG_DIR)
    touchpoints = traffic(events, customers)
    end = START_MS + 8 * DAY
    results: dict[str, Any] = {"events": events, "customers": customers, "rounds": rounds}
    for label, catalog, tps in (
        ("5 journeys", shipped, touchpoints),
        (f"{5 * REPLICAS} journeys", replicated(shipped), replicated_traffic(touchpoints)),
    ):
        records = [codecs.touchpoint.encode(tp) for tp in tps]
        engines = {
            f"engine of {BASELINE_COMMIT}": (old.Engine(catalog), old.Tick),
            "this engine": (Engine(catalog), Tick),
        }
        best = {name: float("inf") for name in engines}
        best_cpu, best_no_gc = dict(best), dict(best)
        best_worker, best_worker_cpu = dict(best), dict(best)
        for _ in range(rounds):  # interleaved, best of: the machine is shared
            for name, (engine, tick) in engines.items():
                gc.collect()
                wall, cpu = pure_engine(engine, tick, codecs.touchpoint, records, end)
                best[name], best_cpu[name] = min(best[name], wall), min(best_cpu[name], cpu)
                gc.collect()
                _wall, cpu = pure_engine(engine, tick, codecs.touchpoint, records, end, False)
                best_no_gc[name] = min(best_no_gc[name], cpu)
                gc.collect()
                wall, cpu = as_a_worker(engine, tick, codecs.touchpoint, records, end)
                best_worker[name] = min(best_worker[name], wall)
                best_worker_cpu[name] = min(best_worker_cpu[name], cpu)
        row: dict[str, Any] = {}
        for name, (engine, _tick) in engines.items():
            gc.collect()
            row[name] = {
                "pure_engine_events_per_s": round(len(records) / best[name], 1),
                "pure_engine_events_per_cpu_s": round(len(records) / best_cpu[name], 1),
                "pure_engine_events_per_cpu_s_gc_off": round(len(records) / best_no_gc[name], 1),
                "as_a_worker_events_per_s": round(len(records) / best_worker[name], 1),
                "as_a_worker_events_per_cpu_s": round(len(records) / best_worker_cpu[name], 1),
                **breakdown(engine, codecs, records),
            }
        before, after = row[f"engine of {BASELINE_COMMIT}"], row["this engine"]
        for key, field in (
            ("speedup", "pure_engine_events_per_s"),
            ("speedup_cpu", "pure_engine_events_per_cpu_s"),
            ("speedup_cpu_gc_off", "pure_engine_events_per_cpu_s_gc_off"),
            ("speedup_as_a_worker", "as_a_worker_events_per_s"),
            ("speedup_as_a_worker_cpu", "as_a_worker_events_per_cpu_s"),
        ):
            row[key] = round(after[field] / before[field], 2)
        results[label] = row
    return results


def table(results: dict[str, Any]) -> str:
    lines = [
        f"engine alone, {results['events']:,} touchpoints of {results['customers']:,} customers "
        f"(best of {results['rounds']}):",
        f"  {'':34} {'decode+advance/s':>16} {'per CPU s':>10} {'GC off':>8} "
        f"{'as a worker/s':>13} {'per CPU s':>10} {'decode µs':>10} "
        f"{'advance p50':>12} {'p99':>8} {'mean':>8} {'encode µs':>10} {'GC µs':>7}",
    ]
    for label, row in results.items():
        if not isinstance(row, dict):
            continue
        for name, r in row.items():
            if not isinstance(r, dict):
                continue
            a = r["advance_us"]
            lines.append(
                f"  {label + ', ' + name:34} {r['pure_engine_events_per_s']:>16,.0f} "
                f"{r['pure_engine_events_per_cpu_s']:>10,.0f} "
                f"{r['pure_engine_events_per_cpu_s_gc_off']:>8,.0f} "
                f"{r['as_a_worker_events_per_s']:>13,.0f} "
                f"{r['as_a_worker_events_per_cpu_s']:>10,.0f} "
                f"{r['decode_us']:>10} {a['p50']:>12} {a['p99']:>8} {a['mean']:>8} "
                f"{r['encode_outputs_us']:>10} {r['of_which_gc_us']:>7}"
            )
        lines.append(
            f"  {label}: this engine x{row['speedup']} the engine of {BASELINE_COMMIT} "
            f"(x{row['speedup_cpu']} in CPU time, "
            f"x{row['speedup_cpu_gc_off']} with the collector off; "
            f"x{row['speedup_as_a_worker']} with the states held as a worker holds them, "
            f"x{row['speedup_as_a_worker_cpu']} in CPU time)"
        )
    return "\n".join(lines)


def main() -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m bench.engine")
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--customers", type=int, default=8_000)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = engine_scenario(args.events, args.customers, args.rounds)
    print(json.dumps(results, indent=2) if args.json else table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
