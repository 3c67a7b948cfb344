"""Re-render a saved report.json (``amdet-audit report``): load it, check its version, pick a renderer."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from amdet_audit.errors import ConfigFileError
from amdet_audit.report.escaping import json_text
from amdet_audit.report.model import SCHEMA_VERSION
from amdet_audit.sources import safe_files

MAX_REPORT_BYTES = 256 << 20  # a report with full scan series is megabytes
REQUIRED = ("schema_version", "tool", "run", "target", "components", "checks", "verdict")


def refuse_constant(name: str) -> None:
    """report.json is strict JSON: NaN, Infinity and -Infinity are refused."""
    raise ValueError(f"{name} is not valid JSON (report.json writes null for non-finite numbers)")


def load_report(path: Path) -> dict[str, Any]:
    """A report.json document; ConfigFileError when unreadable, not a report, or of another schema version."""
    if not os.path.lexists(path):
        raise ConfigFileError(f"{path}: no such report file")
    raw = safe_files.read_bytes(Path(path), limit=MAX_REPORT_BYTES)  # a regular file only (a FIFO never blocks)
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=refuse_constant)
    except (ValueError, RecursionError) as exc:  # ValueError: bad UTF-8, bad JSON, NaN/Infinity
        raise ConfigFileError(f"{path}: not a readable JSON report ({' '.join(str(exc).split())[:200]})") from exc
    if not isinstance(data, dict) or any(key not in data for key in REQUIRED):
        raise ConfigFileError(f"{path}: not an amdet-audit report.json (missing keys)")
    if data["schema_version"] != SCHEMA_VERSION:
        raise ConfigFileError(f"{path}: report schema {data['schema_version']!r}; this version renders "
                              f"{SCHEMA_VERSION!r} (rescan, or use the amdet-audit version that wrote it)")
    return data


def render(report: dict[str, Any], fmt: str, folder: Path | None = None) -> str:
    """The report in ``fmt``: sarif, md, html or json (strict JSON; hidden characters escaped). HTML embeds the
    images the report names only from ``folder``, the report's own folder (none when it is not given)."""
    if fmt == "html":
        from amdet_audit.report.html import render_html

        return render_html(report, folder)
    if fmt == "sarif":
        from amdet_audit.report.sarif import render_sarif

        return json_text(render_sarif(report))
    if fmt == "md":
        from amdet_audit.report.markdown import render_markdown

        return render_markdown(report)
    return json_text(report)
