"""What a fleet scans: targets from the command line or a list file, each with its own reference, component and
consumer where the file names them.

A list file is either one TARGET per line (blank lines and ``#`` comments skipped) or, when its first line
that is neither starts with ``-``, a YAML list whose items are a TARGET string or a mapping ``{target,
reference, component, consumer}``. The YAML is read as a policy is (no anchors or aliases, nesting and number
sizes capped), the file is at most 16 MiB, and every field is checked, so a malformed entry is one clear error.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from amdet_audit.errors import AmdetError, UsageError

MAX_TARGETS = 100_000  # entries in one fleet
MAX_LIST_BYTES = 16 << 20
FIELDS = ("target", "reference", "component", "consumer")


@dataclass(frozen=True)
class Entry:
    """One fleet target and the options it overrides (None: the fleet's own)."""

    target: str
    reference: str | None = None
    component: str | None = None
    consumer: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        """JSON-ready view."""
        return asdict(self)

    @property
    def name(self) -> str:
        """A folder-safe short name for the target's report folder."""
        return re.sub(r"[^A-Za-z0-9._-]+", "-", self.target).strip("-.")[:60] or "target"


def entry(item: Any, where: str) -> Entry:
    """An Entry from a list item (a string, or a mapping of FIELDS to strings); UsageError otherwise."""
    if isinstance(item, str):
        item = {"target": item}
    if not isinstance(item, dict):
        raise UsageError(f"{where}: expected a TARGET or a mapping with {', '.join(FIELDS)}")
    unknown = sorted(str(k) for k in item if k not in FIELDS)
    if unknown:
        raise UsageError(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(FIELDS)})")
    for key, value in item.items():
        if value is not None and (not isinstance(value, str) or not value.strip() or len(value) > 4096):
            raise UsageError(f"{where}: {key} must be a non-empty string")
    if not item.get("target"):
        raise UsageError(f"{where}: no target")
    return Entry(**{k: (v.strip() if isinstance(v, str) else v) for k, v in item.items()})


def read_list(path: Path) -> list[Entry]:
    """The entries of a list file (one TARGET per line, or a YAML list)."""
    from amdet_audit.audit.policy import check_yaml_events, compose_and_construct
    from amdet_audit.sources.safe_files import read_bytes

    try:
        text = read_bytes(path, limit=MAX_LIST_BYTES, error=UsageError).decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: not UTF-8 text") from err
    lines = [ln.strip() for ln in text.splitlines()]
    first = next((ln for ln in lines if ln and not ln.startswith("#")), "")
    if not first.startswith("-"):
        return [entry(ln, f"{path}: line {i + 1}") for i, ln in enumerate(lines) if ln and not ln.startswith("#")]
    import yaml

    try:
        check_yaml_events(text, path)
        data = compose_and_construct(text)[1]
    except AmdetError:
        raise
    except (yaml.YAMLError, ValueError, TypeError, RecursionError) as err:
        raise UsageError(f"{path}: not a valid YAML list ({type(err).__name__})") from err
    if not isinstance(data, list):
        raise UsageError(f"{path}: expected a YAML list of targets")
    return [entry(item, f"{path}: item {i + 1}") for i, item in enumerate(data)]


def plan(targets: list[str], list_file: Path | None) -> list[Entry]:
    """The fleet's entries: the targets given, then those of the list file; at least one, at most MAX_TARGETS,
    none twice."""
    entries = [entry(t, f"target {t!r}") for t in targets]
    if list_file is not None:
        entries += read_list(list_file)
    if not entries:
        raise UsageError("no targets: give TARGET... or --from FILE")
    if len(entries) > MAX_TARGETS:
        raise UsageError(f"{len(entries)} targets: at most {MAX_TARGETS:,} in one fleet")
    seen: set[Entry] = set()
    for item in entries:
        if item in seen:
            raise UsageError(f"{item.target}: listed twice")
        seen.add(item)
    return entries
