"""The audit report: a versioned, JSON-ready document (report.json is the source of truth)."""

from __future__ import annotations

import platform
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from amdet_audit import __version__

SCHEMA_VERSION = "1.2"  # 1.1: checks, plugins and sections; 1.2: policy, findings, coverage
SECRET_OPTION = re.compile(r"(token|password|secret|key)", re.IGNORECASE)


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
    policy: dict[str, Any] | None = None  # the policy applied, with its waivers and their status
    findings: list[dict[str, Any]] = field(default_factory=list)  # gated findings (see amdet_audit.gate)
    coverage: list[dict[str, Any]] = field(default_factory=list)  # what ran, skipped or errored

    @property
    def exit_code(self) -> int:
        """The process exit code for this report."""
        return int(self.verdict["exit_code"])

    def to_dict(self) -> dict[str, Any]:
        """The report.json document."""
        return {"schema_version": SCHEMA_VERSION, "tool": self.tool, "run": self.run, "target": self.target,
                "reference": self.reference, "components": self.components, "checks": self.checks,
                "plugins": self.plugins, "sections": self.sections, "policy": self.policy,
                "findings": self.findings, "coverage": self.coverage, "verdict": self.verdict}
