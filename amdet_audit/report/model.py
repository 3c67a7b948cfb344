"""The audit report: a versioned, JSON-ready document (report.json is the source of truth)."""

from __future__ import annotations

import platform
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from amdet_audit import __version__
from amdet_audit.exit_codes import ExitCode

SCHEMA_VERSION = "1.1"  # 1.1: checks, plugins and sections
SECRET_OPTION = re.compile(r"(token|password|secret|key)", re.IGNORECASE)
STATUS = {"clean": "pass", "backdoored": "fail", "inconclusive": "error"}


def redact_argv(argv: list[str]) -> list[str]:
    """argv with the values of secret-looking options (``--token X``, ``--hf-token=X``) replaced."""
    out, hide_next = [], False
    for arg in argv:
        if hide_next:
            out.append("***")
            hide_next = False
        elif arg.startswith("--") and SECRET_OPTION.search(arg):
            name, eq, _ = arg.partition("=")
            out.append(f"{name}=***" if eq else arg)
            hide_next = not eq
        else:
            out.append(arg)
    return out


def environment() -> dict[str, str]:
    """Versions that influence scores."""
    import torch
    import transformers

    return {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": str(torch.get_num_threads())}


@dataclass
class AuditReport:
    """One audit of one target: provenance, per-component scan results, and the overall verdict."""

    target: dict[str, Any]
    components: list[dict[str, Any]]
    verdict: dict[str, Any]
    run: dict[str, Any]
    reference: dict[str, Any] | None = None
    out_dir: str | None = None
    tool: dict[str, str] = field(default_factory=lambda: {"name": "amdet-audit", "version": __version__})
    checks: list[dict[str, Any]] = field(default_factory=list)  # the file checks (built-in and plugins)
    plugins: list[dict[str, Any]] = field(default_factory=list)  # plugins that ran, with versions
    sections: list[dict[str, Any]] = field(default_factory=list)  # extra sections added by plugins

    @property
    def exit_code(self) -> int:
        """The process exit code for this report."""
        return int(self.verdict["exit_code"])

    def to_dict(self) -> dict[str, Any]:
        """The report.json document."""
        return {"schema_version": SCHEMA_VERSION, "tool": self.tool, "run": self.run, "target": self.target,
                "reference": self.reference, "components": self.components, "checks": self.checks,
                "plugins": self.plugins, "sections": self.sections, "verdict": self.verdict}


def overall_verdict(labels: dict[str, str], reasons: dict[str, list[str]]) -> dict[str, Any]:
    """Worst component wins: backdoored > inconclusive > clean."""
    if not labels:
        return {"label": "inconclusive", "status": "error", "exit_code": int(ExitCode.ERROR),
                "reasons": ["nothing was scanned"]}
    order = ("backdoored", "inconclusive", "clean")
    label = min(labels.values(), key=order.index)
    code = {"clean": ExitCode.PASS, "backdoored": ExitCode.FAIL, "inconclusive": ExitCode.ERROR}[label]
    flat = [f"{name}: {r}" for name, rs in reasons.items() for r in rs if labels[name] == label]
    return {"label": label, "status": STATUS[label], "exit_code": int(code), "reasons": flat}


FAIL_ON = "high"  # findings at or above this severity fail the audit


def with_findings(verdict: dict[str, Any], checks: list[dict[str, Any]], fail_on: str = FAIL_ON) -> dict[str, Any]:
    """Fold the file checks into the scan's verdict.

    A finding at or above ``fail_on`` fails the audit (exit 1) whatever the scan said; a check that errored
    turns a pass into "could not complete" (exit 2): an unfinished check is never shown as a pass.
    """
    from amdet_audit.checks.base import SEVERITIES

    bar = SEVERITIES.index(fail_on)
    failing = [f"{c['check']}: {f['message']}" + (f" ({f['location']})" if f.get("location") else "")
               for c in checks for f in c["findings"] if SEVERITIES.index(f["severity"]) >= bar]
    errored = [f"{c['check']}: check did not complete: {c['reason']}" for c in checks if c["status"] == "error"]
    verdict = dict(verdict)
    if failing:
        label = "backdoored" if verdict["label"] == "backdoored" else "findings"  # the scan alone passed
        verdict.update(label=label, status="fail", exit_code=int(ExitCode.FAIL),
                       reasons=[*verdict["reasons"], *failing])
    elif errored and verdict["exit_code"] == int(ExitCode.PASS):
        verdict.update(status="error", exit_code=int(ExitCode.ERROR), reasons=[*verdict["reasons"], *errored])
    return verdict
