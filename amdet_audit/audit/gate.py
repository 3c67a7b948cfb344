"""Apply a policy to an audit's results: effective severities, waivers and required checks decide the verdict.

Every check's findings (the backdoor scan is a check too) become gated findings, each with a stable
fingerprint (the one report.sarif carries), so a waiver written against a SARIF alert or a report applies to
exactly that finding. Waived findings stay listed; an expired waiver no longer applies.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from typing import Any

from amdet_audit.audit.policy import SEVERITIES, Policy, Waiver
from amdet_audit.exit_codes import ExitCode

STATUS = {0: "pass", 1: "fail", 2: "error"}


@dataclass
class GatedFinding:
    """A finding as the policy sees it: effective severity, waiver, and whether it fails the audit."""

    fingerprint: str
    rule: str
    check: str
    severity: str
    message: str
    location: str | None
    component: str | None = None
    waiver: dict[str, Any] | None = None  # the matching waiver, with status "applied" or "expired"
    blocking: bool = False  # fails the audit (a backdoor, or at or above fail_on, and not waived)
    kind: str = "finding"  # finding, backdoor or inconclusive (see amdet_audit.checks.base.KINDS)
    details: list[str] = field(default_factory=list)

    @property
    def waived(self) -> bool:
        """Accepted by a waiver that has not expired."""
        return self.waiver is not None and self.waiver["status"] == "applied"

    def cited(self) -> list[str]:
        """The lines a failing verdict cites for this finding."""
        if self.details:
            return [f"{self.component}: {d}" if self.component else d for d in self.details]
        return [f"{self.check}: {self.message}" + (f" ({self.location})" if self.location else "")]


def fingerprint(rule: str, identity: str) -> str:
    """Stable id of a finding: the same rule on the same thing gives the same fingerprint."""
    return hashlib.sha256(f"{rule}\0{identity}".encode()).hexdigest()


def identity(finding: dict[str, Any], target: dict[str, Any]) -> str:
    """What makes a finding the same across runs: a component and every file of the target, or a file's path,
    its digest and the message."""
    if finding.get("component"):
        return f"{finding['component']}\0" + "".join(sorted(f["sha256"] for f in target.get("files", [])))
    digests = {f["path"]: f["sha256"] for f in target.get("files", [])}
    where = finding.get("location") or ""
    return f"{where}\0{digests.get(where, '')}\0{finding['message']}"


def gated_findings(target: dict[str, Any], checks: list[dict[str, Any]], policy: Policy) -> list[GatedFinding]:
    """Every check's findings, with the policy's severity for their rule or check id."""
    out = []
    for check in checks:
        for f in check["findings"]:
            severity = policy.severity.get(f["rule"], policy.severity.get(check["check"], f["severity"]))
            if f.get("kind") == "backdoor":  # evidence of a backdoor stays what its check says it is
                severity = f["severity"]
            out.append(GatedFinding(fingerprint=fingerprint(f["rule"], identity(f, target)), rule=f["rule"],
                                    check=check["check"], severity=severity, message=f["message"],
                                    location=f.get("location"), component=f.get("component"),
                                    kind=f.get("kind", "finding"), details=list(f.get("details") or ())))
    return out


def matches(waiver: Waiver, finding: GatedFinding, target: dict[str, Any]) -> bool:
    """Whether ``waiver`` names ``finding`` (by fingerprint, or by check/rule id and target).

    A backdoor is waived only by its fingerprint, which covers every file of the target: a waiver by check and
    target would still hold after the weights changed.
    """
    if waiver.fingerprint is not None:
        return waiver.fingerprint == finding.fingerprint
    if finding.kind == "backdoor":
        return False
    shas = {f["sha256"] for f in target.get("files", [])}
    return waiver.check in (finding.check, finding.rule) and (waiver.target == target.get("input")
                                                              or waiver.target in shas)


def apply_waivers(findings: list[GatedFinding], policy: Policy, target: dict[str, Any],
                  today: date) -> list[dict[str, Any]]:
    """Attach each finding's waiver; return the policy's waivers with their status (applied/expired/unused)."""
    records = []
    for waiver in sorted(policy.waivers, key=lambda w: w.expired(today)):  # live waivers claim findings first
        hits = [f for f in findings if matches(waiver, f, target)
                and (f.waiver is None or (f.waiver["status"] == "expired" and not waiver.expired(today)))]
        status = "expired" if waiver.expired(today) else "applied" if hits else "unused"
        for f in hits:
            f.waiver = {**waiver.to_dict(), "status": status}
        records.append({**waiver.to_dict(), "status": status, "line": waiver.line,
                        "findings": [f.fingerprint for f in hits]})
    return sorted(records, key=lambda r: r["line"])


def coverage(checks: list[dict[str, Any]], policy: Policy) -> list[dict[str, Any]]:
    """What ran: every check, with status, reason and whether the policy requires it."""
    rows = [{"check": c["check"], "status": c["status"], "reason": c["reason"],
             "required": c["check"] in policy.required} for c in checks]
    listed = {r["check"] for r in rows}
    rows += [{"check": name, "status": "skipped", "reason": "not installed or not selected", "required": True}
             for name in policy.required if name not in listed]
    return rows


def apply_policy(target: dict[str, Any], checks: list[dict[str, Any]], policy: Policy,
                 today: date | None = None) -> dict[str, Any]:
    """The verdict and the policy's record: ``{"verdict", "findings", "waivers", "coverage"}``.

    Exit 1 when a backdoor or a finding at or above ``fail_on`` stands unwaived; otherwise exit 2 when anything
    could not complete (an inconclusive finding, a required check that did not run, a check that errored, a
    finding whose rule the policy requires absent, such as a reference-free scan under
    ``reference: {required: true}``); otherwise exit 0.
    """
    today = today or datetime.now(timezone.utc).date()
    findings = gated_findings(target, checks, policy)
    waivers = apply_waivers(findings, policy, target, today)
    bar = SEVERITIES.index(policy.fail_on)
    for f in findings:
        decisive = f.kind == "backdoor" or SEVERITIES.index(f.severity) >= bar
        f.blocking = decisive and not f.waived and f.kind != "inconclusive"
    blocking = sorted((f for f in findings if f.blocking), key=lambda f: f.kind != "backdoor")
    rows = coverage(checks, policy)
    incomplete = [f.message for f in findings if f.kind == "inconclusive" and not f.waived]
    incomplete += [f"{f.component or f.check}: {policy.incomplete_rules[f.rule]}" for f in findings
                   if f.rule in policy.incomplete_rules]  # the policy's own requirement: no waiver lifts it
    incomplete += [f"required check {r['check']} did not run ({r['status']}: {r['reason']})"
                   for r in rows if r["required"] and r["status"] != "ran" and r["status"] != "error"]
    incomplete += [f"{r['check']}: check did not complete: {r['reason']}" for r in rows if r["status"] == "error"]
    waived = [f"{f.rule} waived by {f.waiver['owner']} until {f.waiver['expires']}: {f.waiver['reason']}"
              for f in findings if f.waived]
    expired = [f"waiver for {f.rule} expired on {f.waiver['expires']}"
               for f in findings if f.waiver and f.waiver["status"] == "expired"]
    if blocking:
        label = "backdoored" if blocking[0].kind == "backdoor" else "findings"
        code, reasons = ExitCode.FAIL, [line for f in blocking for line in f.cited()]
    elif incomplete:
        label, code, reasons = "inconclusive", ExitCode.ERROR, incomplete
    else:
        label, code = "clean", ExitCode.PASS
        reasons = [line for c in checks for line in c.get("summary") or []]
        reasons += [f"{r['check']}: skipped ({r['reason']})" for r in rows if r["status"] == "skipped"]
    verdict = {"label": label, "status": STATUS[int(code)], "exit_code": int(code),
               "reasons": reasons + expired + waived}
    return {"verdict": verdict, "findings": [asdict(f) for f in findings], "waivers": waivers, "coverage": rows}
