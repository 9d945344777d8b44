"""Where the Avro contract lives: the repository's ``schemas/`` folder."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any


def schemas_dir() -> Path:
    """The folder holding the ``.avsc`` files and ``registry.json``.

    ``PERCORSO_SCHEMAS_DIR`` overrides it; otherwise the ``schemas/`` folder beside the package
    (a source checkout or an editable install).
    """
    override = os.environ.get("PERCORSO_SCHEMAS_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "schemas"


@cache
def load_schema_file(name: str, folder: Path | None = None) -> dict[str, Any]:
    path = (folder or schemas_dir()) / name
    with path.open(encoding="utf-8") as f:
        schema: dict[str, Any] = json.load(f)
    return schema
