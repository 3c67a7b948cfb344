"""The GitHub Action: action.yml is consistent, and its scan step writes outputs, summary and reports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from amdet_audit.cli.github_action import run

ROOT = Path(__file__).resolve().parents[1]


def test_action_yml_refers_only_to_what_it_declares() -> None:
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    text = (ROOT / "action.yml").read_text()
    assert action["runs"]["using"] == "composite"
    assert set(re.findall(r"inputs\.([a-z-]+)", text)) <= set(action["inputs"])
    step_ids = {s.get("id") for s in action["runs"]["steps"]}
    assert {m for m in re.findall(r"steps\.([a-z-]+)\.outputs", text)} <= step_ids
    assert {"verdict", "exit-code", "report-dir", "reports"} <= set(action["outputs"])
    assert all(s.get("shell") == "bash" for s in action["runs"]["steps"] if "run" in s)
    example = yaml.safe_load((ROOT / "docs" / "examples" / "amdet-audit.yml").read_text())
    (step,) = [s for s in example["jobs"]["audit"]["steps"] if s.get("id") == "audit"]
    assert set(step["with"]) <= set(action["inputs"])


@pytest.mark.slow
def test_scan_step_outputs_summary_and_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outputs, summary = tmp_path / "out.txt", tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_OUTPUT", str(outputs))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    env = {"AMDET_TARGETS": "canary:backdoored\n./no-such-model", "AMDET_FAIL_ON": "policy",
           "AMDET_OUT": str(tmp_path / "reports")}
    assert run(env) == 1
    assert run({**env, "AMDET_EXIT_ZERO": "1"}) == 0
    lines = outputs.read_text().splitlines()
    first, second = dict(x.split("=", 1) for x in lines[:3]), dict(x.split("=", 1) for x in lines[3:6])
    assert first["verdict"] == "backdoored" and first["exit-code"] == "1"
    run_dir = Path(first["report-dir"])
    assert run_dir.parent == tmp_path / "reports" and Path(second["report-dir"]) != run_dir  # never reused
    assert (run_dir / "00-canary-backdoored" / "report.sarif").is_file()
    error = json.loads((run_dir / "01-.-no-such-model" / "error.json").read_text())
    assert error["target"] == "./no-such-model" and "no-such-model" in error["error"]
    assert "BACKDOORED" in summary.read_text()


def test_bad_inputs_exit_2(tmp_path: Path) -> None:
    assert run({"AMDET_TARGETS": ""}) == 2
    assert run({"AMDET_TARGETS": "x", "AMDET_FAIL_ON": "sometimes"}) == 2
    bad = tmp_path / "p.yaml"
    bad.write_text("fail_on: never\n")
    assert run({"AMDET_TARGETS": "x", "AMDET_POLICY": str(bad)}) == 2
    assert run({"AMDET_TARGETS": "canary:clean", "AMDET_SEARCH": "fast", "AMDET_OUT": str(tmp_path / "r")}) == 2
    assert run({"AMDET_TARGETS": "canary:clean", "AMDET_BASE": "canary:clean", "AMDET_OUT": str(tmp_path / "r")}) == 2
