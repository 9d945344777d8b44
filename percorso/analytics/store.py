"""The analytics process's state in RocksDB: figures, per-customer records, repeat guards and
the consumed offsets, written together in one atomic ``WriteBatch`` per commit.

Because the offsets are in the same write as the figures they produced, a restart (graceful or
not) resumes exactly where the last commit left off: nothing counted twice, nothing missed.
Per-customer records live on disk and are read back on demand, so memory does not grow with
the number of customers; the write cache holds only what changed since the last commit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from percorso.analytics.figures import CustomerRecord, DeadLetters, JourneyFigures

_SEP = "\x00"
CUSTOMER = "c"  # c \0 journey \0 customer -> CustomerRecord
SEEN = "s"  # s \0 kind \0 id -> b"" : actions (by action_id) and dead letters (by source)
JOURNEY = "j"  # j \0 journey -> JourneyFigures
GLOBAL = "g"  # g \0 name -> JSON (dead letters, totals)
OFFSET = "o"  # o \0 topic \0 partition -> next offset to read


def _key(*parts: str) -> bytes:
    return _SEP.join(parts).encode()


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class AnalyticsStore:
    def __init__(self, path: Path) -> None:
        from rocksdict import Options, Rdict

        path.mkdir(parents=True, exist_ok=True)
        self.db = Rdict(str(path), Options(raw_mode=True))
        self._pending: dict[bytes, bytes] = {}

    # -- reading at start-up ----------------------------------------------------------------

    def _scan(self, prefix: str) -> Iterator[tuple[list[str], bytes]]:
        start = (prefix + _SEP).encode()
        for key, value in self.db.items(from_key=start):
            assert isinstance(key, bytes) and isinstance(value, bytes)  # raw mode
            if not key.startswith(start):
                return
            yield key.decode().split(_SEP)[1:], value

    def offsets(self) -> dict[tuple[str, int], int]:
        return {(t, int(p)): int(v) for (t, p), v in self._scan(OFFSET)}

    def journeys(self) -> dict[str, JourneyFigures]:
        return {j: JourneyFigures.load(json.loads(v)) for (j,), v in self._scan(JOURNEY)}

    def dead_letters(self) -> DeadLetters:
        raw = self.db.get(_key(GLOBAL, "dead_letters"))
        return DeadLetters.load(json.loads(raw)) if raw is not None else DeadLetters()

    def totals(self) -> dict[str, int]:
        raw = self.db.get(_key(GLOBAL, "totals"))
        return json.loads(raw) if raw is not None else {}

    # -- per-record lookups (the write cache first) ------------------------------------------

    def _get(self, key: bytes) -> bytes | None:
        if key in self._pending:
            return self._pending[key]
        value: bytes | None = self.db.get(key)
        return value

    def customer(self, journey_id: str, customer_id: str) -> CustomerRecord | None:
        raw = self._get(_key(CUSTOMER, journey_id, customer_id))
        return json.loads(raw) if raw is not None else None

    def put_customer(self, journey_id: str, customer_id: str, record: CustomerRecord) -> None:
        self._pending[_key(CUSTOMER, journey_id, customer_id)] = _dumps(record)

    def first_time(self, kind: str, ident: str) -> bool:
        """True the first time (kind, ident) is seen, and remembers it."""
        key = _key(SEEN, kind, ident)
        if self._get(key) is not None:
            return False
        self._pending[key] = b""
        return True

    # -- the commit ---------------------------------------------------------------------------

    def commit(
        self,
        journeys: list[JourneyFigures],
        dead_letters: DeadLetters,
        totals: dict[str, int],
        offsets: dict[tuple[str, int], int],
    ) -> None:
        """Everything since the last commit, and the offsets it was read up to, in one write."""
        from rocksdict import WriteBatch

        batch = WriteBatch(raw_mode=True)
        for key, value in self._pending.items():
            batch.put(key, value)
        for figures in journeys:
            batch.put(_key(JOURNEY, figures.journey_id), _dumps(figures.dump()))
        batch.put(_key(GLOBAL, "dead_letters"), _dumps(dead_letters.dump()))
        batch.put(_key(GLOBAL, "totals"), _dumps(totals))
        for (topic, partition), offset in offsets.items():
            batch.put(_key(OFFSET, topic, str(partition)), str(offset).encode())
        self.db.write(batch)
        self._pending.clear()

    def close(self) -> None:
        self.db.close()
