"""Policy files: bundled defaults equal the code's, every key is read, bad files are refused with key and line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from amdet_audit.audit.policy import load_policy, load_thresholds
from amdet_audit.errors import ConfigFileError
from amdet_audit.resources import bundled
from amdet_audit.scan.config import Thresholds


def test_each_threshold_is_written_once_in_the_bundled_default_policy() -> None:
    import inspect
    from dataclasses import fields

    from amdet_audit.scan import config

    assert set(config.shipped_thresholds()) == {f.name for f in fields(Thresholds)}
    assert not re.search(r"^\s+\w+: float = [0-9]", inspect.getsource(Thresholds), re.MULTILINE)
    assert load_thresholds() == Thresholds()


def test_the_strict_policy_is_stricter_on_every_threshold() -> None:
    """Every threshold of strict.yaml flags at least what the default flags: lower where a score at or above it
    flags, higher for the anchor bars (a score at or below them flags); none is left at the default."""
    import inspect
    from dataclasses import asdict

    from amdet_audit.scan import verdict

    at_most = {"anchor_cosine", "divergence_anchor_cosine"}
    assert set(re.findall(r"t\.(\w+), \"<=\"", inspect.getsource(verdict))) == at_most  # the checks' directions
    strict = asdict(load_thresholds(bundled("policies") / "strict.yaml"))
    for name, default in asdict(Thresholds()).items():
        assert (strict[name] > default) if name in at_most else (strict[name] < default), name


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version: 1\nthresholds:\n  bogus: 1\n", ":3: thresholds.bogus: unknown threshold"),
        ("version: 1\nthreshold: {}\n", ":2: threshold: unknown key"),
        ("thresholds:\n  same_target_rate: high\n", ":2: thresholds.same_target_rate: must be a number"),
        ("version: 2\n", ":1: version: unsupported policy version 2"),
        ("fail_on: severe\n", ":1: fail_on: must be one of info, low, medium, high, critical"),
        ("severity:\n  tokenizer: urgent\n", ":2: severity.tokenizer: must be one of"),
        ("required: assimilation\n", ":1: required: must be a list of check ids"),
        ("reference:\n  required: maybe\n", ":2: reference.required: must be true or false"),
        ("reference:\n  allow: [x]\n", ":2: reference.allow: unknown key"),
        ("waivers:\n  - fingerprint: abc\n    owner: me\n    expires: 2027-01-01\n",
         ":2: waivers[0]: 'reason' is required"),
        ("waivers:\n  - check: tokenizer\n    target: x\n    reason: ok\n    owner: me\n    expires: soon\n",
         ":6: waivers[0].expires: 'expires' is required, as a date"),
        ("waivers:\n  - check: tokenizer\n    reason: ok\n    owner: me\n    expires: 2027-01-01\n",
         ":2: waivers[0]: say what is waived"),
        ("waivers:\n  - {fingerprint: a, check: b, target: c, reason: r, owner: o, expires: 2027-01-01}\n",
         ":2: waivers[0].fingerprint: use either"),
        ("waivers:\n  - fingerprint: a\n    reason: r\n    owner: o\n    expires: 2027-01-01\n    ticket: 1\n",
         ":6: waivers[0].ticket: unknown key"),
        ("thresholds: [\n", "not valid YAML (line 2"),
        ("- a\n- b\n", "must be a YAML mapping"),
    ],
)
def test_bad_policies(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(ConfigFileError, match=re.escape(message)):
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
    assert shown.exit_code == 0 and "collapse_gain" in shown.stdout and "fail_on: high" in shown.stdout
    assert shown.stdout.startswith("# effective policy of ") and "default.yaml" in shown.stdout.splitlines()[0]
    new.write_text("version: 1\nwaivers:\n  - fingerprint: " + "ab" * 32 + "\n    reason: reviewed\n    owner: me\n"
                   "    expires: 2001-01-01\n")
    old = run_cli("policy", "validate", new)
    assert old.exit_code == 0 and "1 expired" in old.stdout
    assert "mine.yaml:3: waiver expired on 2001-01-01" in old.stderr
    new.write_text("version: 1\nthresholds:\n  collapse_gain: high\n")
    bad = run_cli("policy", "validate", new)
    assert bad.exit_code == 2 and "mine.yaml:3" in bad.stderr and "collapse_gain" in bad.stderr
    new.write_text("version: 1\nthresholds:\n  collapse_excess: 0.28\n")  # a policy of an earlier release
    renamed = run_cli("policy", "validate", new)
    assert renamed.exit_code == 2 and "replaced by collapse_gain" in renamed.stderr


def test_every_key_is_read(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nfail_on: medium\nseverity: {tokenizer.added-token: info, remote-code: critical}\n"
                    "required: [assimilation, tokenizer]\nreference: {required: true}\n"
                    "thresholds: {collapse_gain: 0.3}\n"
                    "waivers:\n  - check: assimilation\n    target: ./m\n    reason: known false positive\n"
                    "    owner: alice\n    expires: 2027-01-31\n")
    policy = load_policy(path)
    assert policy.fail_on == "medium"
    assert policy.severity == {"tokenizer.added-token": "info", "remote-code": "critical"}
    assert policy.required == ("assimilation", "tokenizer") and policy.reference_required
    assert policy.thresholds.collapse_gain == 0.3
    assert policy.thresholds.same_target_rate == Thresholds().same_target_rate
    (waiver,) = policy.waivers
    assert (waiver.check, waiver.target, waiver.owner, waiver.expires.isoformat(), waiver.line) == (
        "assimilation", "./m", "alice", "2027-01-31", 8)
    assert len(policy.digest) == 64 and policy.source == str(path)


def test_a_waiver_date_with_a_time_counts_as_its_day(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("waivers:\n  - {fingerprint: abc, reason: r, owner: o, expires: 2027-01-31 12:00:00}\n")
    (waiver,) = load_policy(path).waivers
    assert waiver.expires.isoformat() == "2027-01-31" and waiver.to_dict()["expires"] == "2027-01-31"


def test_bundled_policies_are_valid_and_differ() -> None:
    default, strict = load_policy(), load_policy(bundled("policies") / "strict.yaml")
    assert default.fail_on == "high" and default.required == ("assimilation",) and not default.reference_required
    assert strict.fail_on == "medium" and strict.reference_required and "serialization" in strict.required
