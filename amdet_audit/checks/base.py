"""What a check is, what it sees and what it returns. Checks report scores and findings, never exit codes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from amdet_audit.sources.model import ResolvedTarget

SEVERITIES = ("info", "low", "medium", "high", "critical")


@dataclass(frozen=True)
class Finding:
    """One thing a check found: a stable rule id, a severity from SEVERITIES, a message and where."""

    rule: str
    severity: str
    message: str
    location: str | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")


@dataclass
class CheckResult:
    """The outcome of one check on one target; ``reason`` says why it was skipped or failed to run."""

    check: str
    version: str
    status: str  # ran, skipped or error
    findings: list[Finding] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    plugin: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return asdict(self)


@dataclass(frozen=True)
class CheckContext:
    """What a check may look at: the resolved target (files on disk, digests, provenance) and the options."""

    target: ResolvedTarget
    reference: ResolvedTarget | None = None


class Check(Protocol):
    """A registered check: ``id`` is stable (report keys, policies and waivers refer to it)."""

    id: str
    version: str
    description: str

    def run(self, context: CheckContext) -> CheckResult:
        """Inspect the target; raise nothing for bad models (return findings or an error status)."""
        ...
