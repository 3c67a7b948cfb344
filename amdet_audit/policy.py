"""Policy files: the scan's thresholds from YAML (``--policy FILE`` or the bundled default).

A policy is read only from a path the user names or from the bundled policies, never from the audited model.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from amdet_audit.errors import ConfigFileError
from amdet_audit.resources import bundled
from amdet_audit.scan.config import Thresholds


def load_yaml(path: Path) -> tuple[dict, dict[str, int]]:
    """Parse a YAML mapping; return it and the line of each top-level and ``thresholds`` key."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except OSError as err:
        raise ConfigFileError(f"{path}: cannot be read ({err.strerror})") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigFileError(f"{path}: not valid YAML{where}") from err
    if not isinstance(data, dict) or node is None:
        raise ConfigFileError(f"{path}: a policy must be a YAML mapping")
    lines: dict[str, int] = {}
    for key, value in node.value:
        lines[key.value] = key.start_mark.line + 1
        if key.value == "thresholds" and hasattr(value, "value") and isinstance(value.value, list):
            lines.update({f"thresholds.{k.value}": k.start_mark.line + 1 for k, _ in value.value})
    return data, lines


def load_thresholds(path: Path | None = None) -> Thresholds:
    """Thresholds from ``path`` (default: policies/default.yaml); ConfigFileError names the key and line."""
    path = path or bundled("policies") / "default.yaml"
    data, lines = load_yaml(path)
    unknown = sorted(set(data) - {"version", "thresholds"})
    if unknown:
        raise ConfigFileError(f"{path}:{lines[unknown[0]]}: unknown key {unknown[0]!r}")
    known = {f.name for f in fields(Thresholds)}
    values = data.get("thresholds") or {}
    if not isinstance(values, dict):
        raise ConfigFileError(f"{path}:{lines.get('thresholds', 1)}: 'thresholds' must be a mapping")
    for key, value in values.items():
        where = f"{path}:{lines.get(f'thresholds.{key}', lines.get('thresholds', 1))}"
        if key not in known:
            raise ConfigFileError(f"{where}: unknown threshold {key!r}; known: {', '.join(sorted(known))}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigFileError(f"{where}: threshold {key!r} must be a number, not {value!r}")
    return Thresholds(**{k: float(v) for k, v in values.items()})
