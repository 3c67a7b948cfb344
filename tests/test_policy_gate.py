"""The policy gate: severities, fail_on, waivers (fingerprint, check + target, expiry), required checks."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

from amdet_audit.audit.gate import apply_policy
from amdet_audit.audit.policy import Policy, Waiver
from amdet_audit.checks.assimilation import judge_components
from amdet_audit.checks.base import CheckResult, Finding

TODAY = date(2026, 6, 1)
TARGET = {"input": "./models/enc", "files": [{"path": "model.safetensors", "sha256": "a" * 64},
                                             {"path": "tokenizer.json", "sha256": "b" * 64}]}
POLICY = Policy(source="test.yaml", digest="0" * 64)


def component(verdict: str, mode: str = "reference", name: str = "model") -> dict:
    return {"name": name, "scan": {"verdict": verdict, "mode": mode, "reasons": [f"{verdict} because"]}}


def finding_check(severity: str, rule: str = "tokenizer.added-token", status: str = "ran") -> dict:
    findings = [Finding(rule, severity, "token <x> added", "tokenizer.json")] if status == "ran" else []
    return CheckResult(rule.split(".")[0], "1", status, findings, reason=None if status == "ran" else "why").to_dict()


def gated(target: dict, components: list[dict], checks: list[dict], policy: Policy, today: date) -> dict:
    """The gate over the scan check's judgement of ``components`` and the other checks' results."""
    return apply_policy(target, [judge_components(components).to_dict(), *checks], policy, today)


def waiver(**kw) -> Waiver:
    return Waiver(reason="reviewed", owner="alice", expires=date(2026, 12, 31), **kw)


def test_clean_scan_and_no_findings_pass() -> None:
    out = gated(TARGET, [component("clean")], [finding_check("low")], POLICY, TODAY)
    assert out["verdict"]["exit_code"] == 0 and out["verdict"]["label"] == "clean"
    assert out["verdict"]["reasons"] == ["model: clean because"]
    assert [f["blocking"] for f in out["findings"]] == [False]


def test_worst_component_decides() -> None:
    out = gated(TARGET, [component("clean", name="a"), component("backdoored", name="b")], [], POLICY, TODAY)
    assert out["verdict"]["label"] == "backdoored" and out["verdict"]["exit_code"] == 1
    assert out["verdict"]["reasons"] == ["b: backdoored because"]
    assert gated(TARGET, [], [], POLICY, TODAY)["verdict"]["reasons"] == [
        "assimilation: check did not complete: nothing was scanned"]


def test_fail_on_and_severity_overrides() -> None:
    high = [finding_check("high")]
    assert gated(TARGET, [component("clean")], high, POLICY, TODAY)["verdict"]["label"] == "findings"
    assert gated(TARGET, [component("clean")], high, replace(POLICY, fail_on="critical"), TODAY)[
        "verdict"]["exit_code"] == 0
    by_rule = replace(POLICY, severity={"tokenizer.added-token": "info"})
    out = gated(TARGET, [component("clean")], high, by_rule, TODAY)
    assert out["verdict"]["exit_code"] == 0 and out["findings"][0]["severity"] == "info"
    by_check = replace(POLICY, fail_on="medium", severity={"tokenizer": "medium"})
    assert gated(TARGET, [component("clean")], [finding_check("low")], by_check, TODAY)["verdict"]["exit_code"] == 1


def test_waiver_by_fingerprint_accepts_exactly_that_finding() -> None:
    first = gated(TARGET, [component("backdoored")], [], POLICY, TODAY)
    fp = first["findings"][0]["fingerprint"]
    waived = gated(TARGET, [component("backdoored")], [], replace(POLICY, waivers=(waiver(fingerprint=fp),)), TODAY)
    assert waived["verdict"]["exit_code"] == 0 and waived["findings"][0]["waiver"]["status"] == "applied"
    assert any("waived by alice until 2026-12-31: reviewed" in r for r in waived["verdict"]["reasons"])
    assert waived["waivers"][0]["status"] == "applied" and waived["waivers"][0]["findings"] == [fp]
    other = {**TARGET, "files": [{"path": "model.safetensors", "sha256": "c" * 64}]}  # different weights
    moved = gated(other, [component("backdoored")], [], replace(POLICY, waivers=(waiver(fingerprint=fp),)), TODAY)
    assert moved["verdict"]["exit_code"] == 1 and moved["waivers"][0]["status"] == "unused"


def test_waiver_by_check_and_target_input_or_file_digest() -> None:
    for target in ("./models/enc", "b" * 64):
        policy = replace(POLICY, waivers=(waiver(check="tokenizer", target=target),))
        assert gated(TARGET, [component("clean")], [finding_check("high")], policy, TODAY)["verdict"]["exit_code"] == 0
    elsewhere = replace(POLICY, waivers=(waiver(check="tokenizer", target="./models/other"),))
    assert gated(TARGET, [component("clean")], [finding_check("high")], elsewhere, TODAY)["verdict"]["exit_code"] == 1


def fingerprint_of_backdoor() -> str:
    return gated(TARGET, [component("backdoored")], [], POLICY, TODAY)["findings"][0]["fingerprint"]


def test_a_backdoor_is_waived_only_by_its_fingerprint() -> None:
    for target in ("./models/enc", "a" * 64):
        policy = replace(POLICY, waivers=(waiver(check="assimilation", target=target),))
        out = gated(TARGET, [component("backdoored")], [], policy, TODAY)
        assert out["verdict"]["exit_code"] == 1 and out["waivers"][0]["status"] == "unused"


def test_an_expired_waiver_fails_again_and_stays_listed() -> None:
    policy = replace(POLICY, waivers=(waiver(fingerprint=fingerprint_of_backdoor()),))
    out = gated(TARGET, [component("backdoored")], [], policy, date(2027, 1, 1))
    assert out["verdict"]["exit_code"] == 1 and "waiver for assimilation.backdoor expired on 2026-12-31" in \
        out["verdict"]["reasons"]
    assert out["findings"][0]["waiver"]["status"] == "expired" and out["findings"][0]["blocking"]
    assert out["waivers"][0]["status"] == "expired"


def test_required_checks_errors_and_reference() -> None:
    required = replace(POLICY, required=("assimilation", "tokenizer", "weights-diff"))
    out = gated(TARGET, [component("clean")], [finding_check("low", status="skipped")], required, TODAY)
    assert out["verdict"]["exit_code"] == 2 and out["verdict"]["label"] == "inconclusive"
    assert "required check tokenizer did not run (skipped: why)" in out["verdict"]["reasons"]
    assert any(r.startswith("required check weights-diff did not run") for r in out["verdict"]["reasons"])
    rows = {r["check"]: r for r in out["coverage"]}
    assert rows["assimilation"]["status"] == "ran" and rows["weights-diff"]["status"] == "skipped"
    errored = gated(TARGET, [component("clean")], [finding_check("low", status="error")], POLICY, TODAY)
    assert errored["verdict"]["exit_code"] == 2 and "check did not complete" in errored["verdict"]["reasons"][0]
    free = [component("clean", mode="reference-free")]
    assert gated(TARGET, free, [], POLICY, TODAY)["verdict"]["exit_code"] == 0
    strict = gated(TARGET, free, [], replace(POLICY, reference_required=True), TODAY)
    assert strict["verdict"]["exit_code"] == 2
    assert "model: the policy requires a reference model" in strict["verdict"]["reasons"][0]
    waived = replace(POLICY, reference_required=True, waivers=(waiver(check="assimilation", target="./models/enc"),))
    assert gated(TARGET, free, [], waived, TODAY)["verdict"]["exit_code"] == 2  # no waiver lifts the requirement


def test_a_failure_outranks_an_incomplete_check_and_inconclusive_can_be_waived() -> None:
    out = gated(TARGET, [component("inconclusive")], [finding_check("critical")], POLICY, TODAY)
    assert out["verdict"]["exit_code"] == 1 and out["verdict"]["label"] == "findings"
    assert gated(TARGET, [component("inconclusive")], [], POLICY, TODAY)["verdict"]["exit_code"] == 2
    policy = replace(POLICY, waivers=(waiver(check="assimilation.inconclusive", target="./models/enc"),))
    assert gated(TARGET, [component("inconclusive")], [], policy, TODAY)["verdict"]["exit_code"] == 0


def test_a_renewed_waiver_after_an_expired_one_applies() -> None:
    fp = fingerprint_of_backdoor()
    old = Waiver(reason="first review", owner="alice", expires=date(2026, 1, 1), fingerprint=fp, line=3)
    new = Waiver(reason="second review", owner="bob", expires=date(2026, 12, 31), fingerprint=fp, line=8)
    out = gated(TARGET, [component("backdoored")], [], replace(POLICY, waivers=(old, new)), TODAY)
    assert out["verdict"]["exit_code"] == 0 and out["findings"][0]["waiver"]["owner"] == "bob"
    assert [w["status"] for w in out["waivers"]] == ["expired", "applied"]


def test_a_component_that_could_not_be_scanned_never_passes() -> None:
    broken = {"name": "text_encoder_2", "error": "unsupported architecture"}
    policy = replace(POLICY, waivers=(waiver(check="assimilation.inconclusive", target="./models/enc"),))
    out = gated(TARGET, [component("clean", name="text_encoder"), broken], [], policy, TODAY)
    assert out["verdict"]["exit_code"] == 2
    assert "assimilation: check did not complete: text_encoder_2: not scanned: unsupported architecture" in \
        out["verdict"]["reasons"]  # waived as a finding, the error still stands
    assert {r["check"]: r["status"] for r in out["coverage"]}["assimilation"] == "error"


def test_a_policy_cannot_lower_a_backdoor() -> None:
    policy = replace(POLICY, severity={"assimilation.backdoor": "info", "assimilation": "low"}, fail_on="critical")
    out = gated(TARGET, [component("backdoored")], [], policy, TODAY)
    assert out["verdict"]["exit_code"] == 1 and out["findings"][0]["severity"] == "critical"
