"""Upper bounds for journey files, declared once.

A journey file is trusted to describe a journey, not to be small: the loader refuses anything
beyond these bounds with a ``FILE:LINE: FIELD: message`` problem before it builds a model, so a
careless or hostile file can neither hang ``percorso validate`` and the worker nor produce actions
and deadlines that cannot be sent or stored. ``journeys/journey.schema.json`` repeats the bounds
it can express (``maxLength``, ``maxItems``, ...) for editors; a test keeps both in step, and
docs/journeys.md lists them.
"""

from __future__ import annotations

MAX_FILE_BYTES = 64 * 1024
"""Size of one journey file. The shipped files are under 2 KB, a journey with the maximum of
windows fits in about 20 KB; a larger file is read no further. YAML is parsed in pure Python at
roughly 100 KB/s, so this also bounds the time any file can take to refuse to well under a
second."""

MAX_NESTING_DEPTH = 16
"""Nested mappings and lists in one file (the format itself needs 8); deeper is refused while
parsing, before any recursion could exhaust the stack."""

MAX_YAML_NODES = 10_000
"""Values (mappings, lists and scalars) in one file; the shipped files have under 250."""

MAX_ITEMS = 256
"""Entries of any one mapping or list (stages, actions, ``in`` lists, attributes ...)."""

MAX_TEXT_LENGTH = 4096
"""Characters of any one scalar: action parameter values and templates, descriptions."""

MAX_NAME_LENGTH = 256
"""Characters of a name: touchpoint types, channels, attribute and parameter names, the journey
name, time zones. Ids are shorter still (the schema's id pattern allows 63)."""

MAX_WINDOWS = 64
"""Windows of one journey. Windows armed by another window's timeout chain their durations, so
this bounds the latest deadline a journey can set (see MAX_DURATION_MS)."""

MAX_ACTION_PARAMETERS = 64
"""Parameters of one action: with MAX_TEXT_LENGTH, an action's parameters stay under 300 KB, well
inside the 1 MB a Kafka record may carry by default, whatever template they use."""

MAX_DURATION_MS = 366 * 86_400_000
"""Any duration (window, inactivity, re-entry, expiry, caps, lateness): 366 days, so yearly
follow-ups fit. The bound comes from the tightest key format: the deadline index stores a due
time as 13 decimal digits of epoch milliseconds (room until 2286-11-20). Touchpoints are dated
before 2100 (``percorso.records``), and the longest chain of windows adds at most
MAX_WINDOWS + 1 durations (the chain plus inactivity): 2100 + 65 x 366 days is about 2165."""

MIN_INTEGER = -(2**31)
"""Smallest integer field (priorities, caps, budgets): an Avro ``int``, as ``action.priority``."""

MAX_INTEGER = 2**31 - 1
"""Largest integer field (priorities, caps, budgets): an Avro ``int``, as ``action.priority``."""

MAX_NUMBER_LITERAL = 2**63 - 1
"""Magnitude of any number written in a file (attribute comparisons included); numbers must also
be finite (no .inf, no .nan)."""
