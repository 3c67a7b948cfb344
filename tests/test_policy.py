"""Policy files: bundled defaults equal the code's, bad files are refused with the key and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from amdet_audit.errors import ConfigFileError
from amdet_audit.policy import load_thresholds
from amdet_audit.resources import bundled
from amdet_audit.scan.config import Thresholds


def test_bundled_default_policy_equals_the_scan_defaults() -> None:
    assert load_thresholds() == Thresholds()
    strict = load_thresholds(bundled("policies") / "strict.yaml")
    assert strict.same_target_rate < Thresholds().same_target_rate


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version: 1\nthresholds:\n  bogus: 1\n", ":3: unknown threshold 'bogus'"),
        ("version: 1\nthreshold: {}\n", ":2: unknown key 'threshold'"),
        ("thresholds:\n  same_target_rate: high\n", ":2: threshold 'same_target_rate' must be a number"),
        ("thresholds: [\n", "not valid YAML (line 2)"),
        ("- a\n- b\n", "must be a YAML mapping"),
    ],
)
def test_bad_policies(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(ConfigFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_thresholds(path)


def test_bad_policy_on_the_command_line(run_cli, tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("thresholds: [\n")
    result = run_cli("scan", "canary:clean", "--policy", path, "--out", tmp_path / "r")
    assert result.exit_code == 2 and "not valid YAML" in result.stderr and not (tmp_path / "r").exists()


def test_policy_commands(run_cli, tmp_path: Path) -> None:
    new = tmp_path / "mine.yaml"
    assert run_cli("policy", "init", new).exit_code == 0 and new.is_file()
    assert run_cli("policy", "validate", new).exit_code == 0
    again = run_cli("policy", "init", new)
    assert again.exit_code == 2 and "never overwrites" in again.stderr
    shown = run_cli("policy", "show")
    assert shown.exit_code == 0 and "collapse_excess" in shown.stdout
    new.write_text("version: 1\nthresholds:\n  collapse_excess: high\n")
    bad = run_cli("policy", "validate", new)
    assert bad.exit_code == 2 and "mine.yaml:3" in bad.stderr and "collapse_excess" in bad.stderr
