"""Test helper: report.json must validate against the JSON Schema the package publishes."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from amdet_audit.report.schema import report_schema


def assert_valid_report(data: dict) -> None:
    """Raise jsonschema.ValidationError when ``data`` breaks the published schema."""
    jsonschema.Draft202012Validator(report_schema()).validate(data)


SARIF_SCHEMA = Path(__file__).parent / "data" / "sarif-schema-2.1.0.json"  # OASIS SARIF 2.1.0 schema


def assert_valid_sarif(log: dict) -> None:
    """Valid against the official SARIF 2.1.0 schema, plus what GitHub code scanning requires: no nulls, a
    location, a stable fingerprint and a security-severity on every rule."""
    jsonschema.Draft7Validator(json.loads(SARIF_SCHEMA.read_text())).validate(log)
    assert not has_null(log)
    run = log["runs"][0]
    for rule in run["tool"]["driver"]["rules"]:
        assert 0.0 <= float(rule["properties"]["security-severity"]) <= 10.0
    for result in run["results"]:
        assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        assert result["partialFingerprints"]
        assert run["tool"]["driver"]["rules"][result["ruleIndex"]]["id"] == result["ruleId"]


def has_null(value: object) -> bool:
    """Whether a JSON value holds a null anywhere."""
    if value is None:
        return True
    if isinstance(value, dict):
        return any(has_null(v) for v in value.values())
    if isinstance(value, list):
        return any(has_null(v) for v in value)
    return False
