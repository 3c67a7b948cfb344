"""Apply a policy to an audit's results: effective severities, waivers and required checks decide the verdict.

Every scan result that is not clean and every check finding becomes one gated finding with a stable
fingerprint (the one report.sarif carries), so a waiver written against a SARIF alert or a report applies to
exactly that finding. Waived findings stay listed; an expired waiver no longer applies.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone
from typing import Any

from amdet_audit.exit_codes import ExitCode
from amdet_audit.policy import SCAN_CHECK, SEVERITIES, Policy, Waiver

SCAN_RULES = {"backdoored": ("assimilation.backdoor", "critical"),
              "inconclusive": ("assimilation.inconclusive", "medium")}
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
    blocking: bool = False  # fails the audit (at or above fail_on, or a backdoor, and not waived)

    @property
    def waived(self) -> bool:
        """Accepted by a waiver that has not expired."""
        return self.waiver is not None and self.waiver["status"] == "applied"


def fingerprint(rule: str, identity: str) -> str:
    """Stable id of a finding: the same rule on the same thing gives the same fingerprint."""
    return hashlib.sha256(f"{rule}\0{identity}".encode()).hexdigest()


def nonfinite_scores(scan: dict[str, Any]) -> list[str]:
    """Names of the scan's scores that are NaN or infinite (null, a score that does not apply, is not one)."""
    bad = [name for name, value in (scan.get("scores") or {}).items()
           if isinstance(value, float) and not math.isfinite(value)]
    bad += [c["name"] for c in scan.get("checks") or [] if isinstance(c.get("score"), float)
            and not math.isfinite(c["score"]) and c["name"] not in bad]
    return bad


def scan_outcome(comp: dict[str, Any]) -> tuple[str, list[str]]:
    """(verdict, reasons) of one component: a clean scan with a non-finite score cannot decide."""
    if "scan" not in comp:
        return "inconclusive", [comp.get("error", "not scanned")]
    scan = comp["scan"]
    bad = nonfinite_scores(scan)
    if scan["verdict"] == "clean" and bad:
        return "inconclusive", [*scan["reasons"], f"non-finite scores (NaN or infinity): {', '.join(bad)}"]
    return scan["verdict"], list(scan["reasons"])


def scan_findings(target: dict[str, Any], components: list[dict[str, Any]]) -> list[GatedFinding]:
    """One finding per component whose scan said backdoored or could not decide."""
    files = "".join(sorted(f["sha256"] for f in target.get("files", [])))
    out = []
    for comp in components:
        verdict, reasons = scan_outcome(comp)
        if verdict not in SCAN_RULES:
            continue
        rule, severity = SCAN_RULES[verdict]
        out.append(GatedFinding(fingerprint=fingerprint(rule, f"{comp['name']}\0{files}"), rule=rule,
                                check=SCAN_CHECK, severity=severity, component=comp["name"],
                                message=f"{comp['name']}: {verdict}: " + "; ".join(reasons), location=None))
    return out


def check_findings(target: dict[str, Any], checks: list[dict[str, Any]], policy: Policy) -> list[GatedFinding]:
    """The file checks' findings, with the policy's severity for their rule or check id."""
    digests = {f["path"]: f["sha256"] for f in target.get("files", [])}
    out = []
    for check in checks:
        for f in check["findings"]:
            where = f.get("location") or ""
            identity = f"{where}\0{digests.get(where, '')}\0{f['message']}"
            severity = policy.severity.get(f["rule"], policy.severity.get(check["check"], f["severity"]))
            out.append(GatedFinding(fingerprint=fingerprint(f["rule"], identity), rule=f["rule"],
                                    check=check["check"], severity=severity, message=f["message"],
                                    location=f.get("location")))
    return out


def matches(waiver: Waiver, finding: GatedFinding, target: dict[str, Any]) -> bool:
    """Whether ``waiver`` names ``finding`` (by fingerprint, or by check/rule id and target).

    A backdoor found by the scan is waived only by its fingerprint, which covers every file of the target: a
    waiver by check and target would still hold after the weights changed.
    """
    if waiver.fingerprint is not None:
        return waiver.fingerprint == finding.fingerprint
    if finding.rule == SCAN_RULES["backdoored"][0]:
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


def coverage(components: list[dict[str, Any]], checks: list[dict[str, Any]], policy: Policy,
             scan_selected: bool = True) -> list[dict[str, Any]]:
    """What ran: the scan and every check, with status, reason and whether the policy requires it."""
    scanned = bool(components) and all("scan" in c for c in components)
    errors = [f"{c['name']}: {c['error']}" for c in components if "error" in c]
    if scan_selected:
        rows = [{"check": SCAN_CHECK, "status": "ran" if scanned else "error",
                 "reason": "; ".join(errors) or (None if components else "nothing was scanned"),
                 "required": SCAN_CHECK in policy.required}]
    else:
        rows = [{"check": SCAN_CHECK, "status": "skipped", "reason": "not selected (--checks)", "required": False}]
    rows += [{"check": c["check"], "status": c["status"], "reason": c["reason"],
              "required": c["check"] in policy.required} for c in checks]
    listed = {r["check"] for r in rows}
    rows += [{"check": name, "status": "skipped", "reason": "not installed or not selected", "required": True}
             for name in policy.required if name not in listed]
    return rows


def apply_policy(target: dict[str, Any], components: list[dict[str, Any]], checks: list[dict[str, Any]],
           policy: Policy, today: date | None = None, scan_selected: bool = True) -> dict[str, Any]:
    """The verdict and the policy's record: ``{"verdict", "findings", "waivers", "coverage"}``.

    Exit 1 when a backdoor or a finding at or above ``fail_on`` stands unwaived; otherwise exit 2 when anything
    could not complete (an inconclusive scan, a scan with a non-finite score, a required check that did not
    run, a check that errored, a reference-free scan under ``reference: {required: true}``); otherwise exit 0.
    ``scan_selected`` False: a file-checks-only audit (``--checks`` without the scan), where nothing scanned is
    expected; the caller passes the selection as the policy's ``required``.
    """
    today = today or datetime.now(timezone.utc).date()
    findings = scan_findings(target, components) + check_findings(target, checks, policy)
    waivers = apply_waivers(findings, policy, target, today)
    bar = SEVERITIES.index(policy.fail_on)
    for f in findings:
        decisive = f.rule == SCAN_RULES["backdoored"][0] or SEVERITIES.index(f.severity) >= bar
        f.blocking = decisive and not f.waived and f.rule != SCAN_RULES["inconclusive"][0]
    backdoors = [f for f in findings if f.blocking and f.check == SCAN_CHECK]
    failing = [f for f in findings if f.blocking and f.check != SCAN_CHECK]
    rows = coverage(components, checks, policy, scan_selected)
    errored = {c["name"] for c in components if "error" in c}  # listed once below, as "not scanned"
    incomplete = [f.message for f in findings
                  if f.rule == SCAN_RULES["inconclusive"][0] and not f.waived and f.component not in errored]
    incomplete += [f"{c['name']}: not scanned: {c['error']}" for c in components if "error" in c]
    incomplete += [f"required check {r['check']} did not run ({r['status']}: {r['reason']})"
                   for r in rows if r["required"] and r["status"] != "ran" and r["check"] != SCAN_CHECK]
    incomplete += [f"{r['check']}: check did not complete: {r['reason']}"
                   for r in rows if r["status"] == "error" and r["check"] != SCAN_CHECK]
    if policy.reference_required:
        incomplete += [f"{c['name']}: the policy requires a reference model; this scan ran reference-free"
                       for c in components if c.get("scan", {}).get("mode") == "reference-free"]
    if not components and scan_selected:
        incomplete.insert(0, "nothing was scanned")
    waived = [f"{f.rule} waived by {f.waiver['owner']} until {f.waiver['expires']}: {f.waiver['reason']}"
              for f in findings if f.waived]
    expired = [f"waiver for {f.rule} expired on {f.waiver['expires']}"
               for f in findings if f.waiver and f.waiver["status"] == "expired"]
    located = [f"{f.check}: {f.message}" + (f" ({f.location})" if f.location else "") for f in failing]
    if backdoors or failing:
        label, code = ("backdoored" if backdoors else "findings"), ExitCode.FAIL
        reasons = [f"{c['name']}: {r}" for c in components if c["name"] in {f.component for f in backdoors}
                   for r in c["scan"]["reasons"]] + located
    elif incomplete:
        label, code, reasons = "inconclusive", ExitCode.ERROR, incomplete
    else:
        label, code = "clean", ExitCode.PASS
        reasons = [f"{c['name']}: {r}" for c in components for r in c.get("scan", {}).get("reasons", [])]
        if not scan_selected:
            reasons.append("file checks only: the backdoor scan (assimilation) was not selected")
    verdict = {"label": label, "status": STATUS[int(code)], "exit_code": int(code),
               "reasons": reasons + expired + waived}
    return {"verdict": verdict, "findings": [asdict(f) for f in findings], "waivers": waivers, "coverage": rows}
