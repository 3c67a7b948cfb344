"""The backdoor scan as a check: each scanned component's verdict becomes findings with rule ids.

The scan's model work (loading, inversion, probes, evidence files) runs in the scan job before the checks,
since the reference model it resolves also feeds the file checks; its per-component results reach this check
through :class:`~amdet_audit.checks.base.CheckContext` ``components``. Here they are judged like any other
check's output: a backdoored component is a ``backdoor`` finding, one whose scan could not decide an
``inconclusive`` one, one that could not be scanned at all an error of the check, and a reference-free scan an
info finding (``reference: {required: true}`` in a policy keeps such an audit from passing).
"""

from __future__ import annotations

import math
from typing import Any

from amdet_audit import __version__
from amdet_audit.checks.base import CheckContext, CheckResult, Finding

CHECK_ID = "assimilation"
BACKDOOR = "assimilation.backdoor"
INCONCLUSIVE = "assimilation.inconclusive"
REFERENCE_FREE = "assimilation.reference-free"
UNNAMED_CONSUMER = "assimilation.unnamed-consumer"
#: the consumers (encoders.consumers) whose pipelines ship a T5
T5_CONSUMERS = ("sd3", "flux", "pixart")


def nonfinite_scores(scan: dict[str, Any]) -> list[str]:
    """Names of the scan's scores that are NaN or infinite (null, a score that does not apply, is not one)."""
    bad = [name for name, value in (scan.get("scores") or {}).items()
           if isinstance(value, float) and not math.isfinite(value)]
    bad += [c["name"] for c in scan.get("checks") or [] if isinstance(c.get("score"), float)
            and not math.isfinite(c["score"]) and c["name"] not in bad]
    return bad


def outcome(scan: dict[str, Any]) -> tuple[str, list[str]]:
    """(verdict, reasons) of one component's scan: a clean scan with a non-finite score cannot decide."""
    bad = nonfinite_scores(scan)
    if scan["verdict"] == "clean" and bad:
        return "inconclusive", [*scan["reasons"], f"non-finite scores (NaN or infinity): {', '.join(bad)}"]
    return scan["verdict"], list(scan["reasons"])


def component_findings(comp: dict[str, Any]) -> list[Finding]:
    """The findings of one component's scan (none for a clean scan against a reference)."""
    name = comp["name"]
    if "scan" not in comp:  # listed for the reviewer and in SARIF; the check's error status keeps it from passing
        return [Finding(INCONCLUSIVE, "medium", f"{name}: not scanned: {comp.get('error', 'no result')}",
                        component=name, kind="inconclusive")]
    verdict, reasons = outcome(comp["scan"])
    out = []
    if verdict == "backdoored":
        out.append(Finding(BACKDOOR, "critical", f"{name}: backdoored: " + "; ".join(reasons), component=name,
                           kind="backdoor", details=tuple(reasons)))
    elif verdict != "clean":
        out.append(Finding(INCONCLUSIVE, "medium", f"{name}: {verdict}: " + "; ".join(reasons), component=name,
                           kind="inconclusive"))
    if comp["scan"].get("mode") == "reference-free":
        message = f"{name}: scanned reference-free (no clean reference model to compare with: weaker evidence)"
        out.append(Finding(REFERENCE_FREE, "info", message, component=name))
    out += consumer_findings(comp)
    return out


def consumer_findings(comp: dict[str, Any]) -> list[Finding]:
    """An info finding for a T5 scanned with no pipeline named: it was read at the lone-encoder length, not at
    the length its pipeline reads (a backdoor is trained on that read)."""
    encoder, consumer = comp.get("encoder") or {}, comp.get("consumer") or {}
    if encoder.get("family") != "t5" or consumer.get("name") != "clip":
        return []
    from amdet_audit.encoders.consumers import CONSUMERS

    length = consumer.get("length") or encoder.get("max_length")
    theirs = ", ".join(f"{name} {CONSUMERS[name].read('model', family='t5').length}" for name in T5_CONSUMERS)
    message = (f"{comp['name']}: a T5 scanned without its pipeline, read at {length} tokens; pipelines read theirs "
               f"at other lengths ({theirs} tokens): scan with --consumer {', '.join(T5_CONSUMERS)} for the read "
               "of the pipeline it ships to")
    return [Finding(UNNAMED_CONSUMER, "info", message, component=comp["name"])]


def judge_components(components: list[dict[str, Any]]) -> CheckResult:
    """The check's result over every component: findings, key scores and, for a pass, the scan's reasons. A
    component that could not be scanned makes the check an error (no waiver turns it into a pass)."""
    if not components:
        return CheckResult(CHECK_ID, __version__, "error", reason="nothing was scanned")
    findings = [f for comp in components for f in component_findings(comp)]
    scores = {f"{comp['name']}.{check['name']}": check["score"] for comp in components
              for check in comp.get("scan", {}).get("checks", [])
              if isinstance(check.get("score"), (int, float)) and math.isfinite(check["score"])}
    summary = [f"{comp['name']}: {r}" for comp in components for r in comp.get("scan", {}).get("reasons", [])]
    errors = [f"{comp['name']}: not scanned: {comp.get('error', 'no result')}" for comp in components
              if "scan" not in comp]
    status = "error" if errors else "ran"
    return CheckResult(CHECK_ID, __version__, status, findings, scores, reason="; ".join(errors) or None,
                       summary=summary)


class AssimilationCheck:
    """The AMDet assimilation scan's verdicts (see docs/method.md) as findings."""

    id = CHECK_ID
    version = __version__
    description = ("Backdoor scan: a pseudo-trigger and real-input probes that make prompts collapse onto one "
                   "target, or shift consistently, in the encoder but not in its clean reference")

    def run(self, context: CheckContext) -> CheckResult:
        """Judge the scan's per-component results; skipped when the scan did not run."""
        if context.components is None:
            return CheckResult(CHECK_ID, __version__, "skipped", reason="not selected (--checks)")
        return judge_components(context.components)
