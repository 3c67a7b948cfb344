"""The published JSON Schema of report.json (``report.schema.json`` in this package)."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

SCHEMA_FILE = "report.schema.json"


def report_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) every report.json validates against."""
    return json.loads(files("amdet_audit.report").joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))
