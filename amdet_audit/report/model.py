"""The audit report: a versioned, JSON-ready document (report.json is the source of truth)."""

from __future__ import annotations

import os
import platform
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from amdet_audit import __version__
from amdet_audit.report.escaping import strict_json

SCHEMA_VERSION = "1.3"  # 1.1: checks, plugins, sections; 1.2: policy, findings, coverage; 1.3: the scan is a check
SECRET_OPTION = re.compile(r"(token|password|passwd|secret|key|auth|credential)", re.IGNORECASE)
VALUE_OPTIONS = ("--plugin-option",)  # options whose value is KEY=VALUE: a secret-looking KEY hides VALUE
HIDDEN = "***"


def redact_value(option: str, value: str) -> str:
    """The value of ``option`` as recorded: ``KEY=***`` for a KEY=VALUE option with a secret-looking KEY."""
    if option in VALUE_OPTIONS:
        key, eq, _ = value.partition("=")
        if eq and SECRET_OPTION.search(key):
            return f"{key}={HIDDEN}"
    return value


def redact_argv(argv: list[str], environ: dict[str, str] | None = None) -> list[str]:
    """argv with secrets replaced by ``***``: the values of secret-looking options (``--token X``,
    ``--hf-token=X``), secret-looking keys of ``--plugin-option KEY=VALUE``, and the HF_TOKEN value anywhere."""
    out: list[str] = []
    pending: str | None = None  # the option whose value comes next
    for arg in argv:
        if pending is not None:
            out.append(HIDDEN if SECRET_OPTION.search(pending) else redact_value(pending, arg))
            pending = None
        elif arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if eq:
                out.append(f"{name}={HIDDEN}" if SECRET_OPTION.search(name) else f"{name}={redact_value(name, value)}")
            else:
                out.append(arg)
                pending = name if SECRET_OPTION.search(name) or name in VALUE_OPTIONS else None
        else:
            out.append(arg)
    token = (os.environ if environ is None else environ).get("HF_TOKEN") or ""
    if len(token) >= 4:
        out = [a.replace(token, HIDDEN) for a in out]
    return out


def environment() -> dict[str, str]:
    """Versions that influence scores (read from package metadata: a file-checks-only audit imports no torch)."""
    from importlib.metadata import PackageNotFoundError, version

    env = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("torch", "transformers"):
        try:
            env[package] = version(package)
        except PackageNotFoundError:
            env[package] = "not installed"
    torch = sys.modules.get("torch")
    if torch is not None:
        env["threads"] = str(torch.get_num_threads())
    return env


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
    findings: list[dict[str, Any]] = field(default_factory=list)  # gated findings (see amdet_audit.audit.gate)
    coverage: list[dict[str, Any]] = field(default_factory=list)  # what ran, skipped or errored

    @property
    def exit_code(self) -> int:
        """The process exit code for this report."""
        return int(self.verdict["exit_code"])

    def to_dict(self) -> dict[str, Any]:
        """The report.json document, strict JSON: a NaN or infinite number is null, and ``nonfinite`` lists
        the JSON Pointers of those values (present only when there are any)."""
        document = {"schema_version": SCHEMA_VERSION, "tool": self.tool, "run": self.run, "target": self.target,
                    "reference": self.reference, "components": self.components, "checks": self.checks,
                    "plugins": self.plugins, "sections": self.sections, "policy": self.policy,
                    "findings": self.findings, "coverage": self.coverage, "verdict": self.verdict}
        strict, nonfinite = strict_json(document)
        if nonfinite:
            strict["nonfinite"] = nonfinite
        return strict
