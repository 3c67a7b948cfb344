"""What a check is, what it sees and what it returns. Checks report scores and findings, never exit codes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from amdet_audit.sources.model import ResolvedTarget

SEVERITIES = ("info", "low", "medium", "high", "critical")
#: what a finding says: an ordinary ``finding`` (the policy's severity and ``fail_on`` decide), evidence of a
#: ``backdoor`` (always fails unless waived by its fingerprint; the audit reads "backdoored"), or ``inconclusive``
#: (the check could not decide about this thing: never fails, but the audit cannot pass unless it is waived)
KINDS = ("finding", "backdoor", "inconclusive")


@dataclass(frozen=True)
class Finding:
    """One thing a check found: a stable rule id, a severity from SEVERITIES, a message and where.

    ``location`` is a file of the target; ``component`` a whole component (a finding about a component is the
    same finding as long as every file of the target is unchanged). ``details`` are the lines a failing
    verdict cites for it (each prefixed with the component); without them it cites the message.
    """

    rule: str
    severity: str
    message: str
    location: str | None = None
    component: str | None = None
    kind: str = "finding"
    details: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")


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
    summary: list[str] = field(default_factory=list)  # what it concluded, cited when the audit passes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return asdict(self)


@dataclass(frozen=True)
class CheckContext:
    """What a check may look at: the resolved target (files on disk, digests, provenance), the reference the
    scan compared against, and the scan's per-component results (report.json ``components``; None when the
    scan was not selected)."""

    target: ResolvedTarget
    reference: ResolvedTarget | None = None
    components: list[dict[str, Any]] | None = None


class Check(Protocol):
    """A registered check: ``id`` is stable (report keys, policies and waivers refer to it)."""

    id: str
    version: str
    description: str

    def run(self, context: CheckContext) -> CheckResult:
        """Inspect the target; raise nothing for bad models (return findings or an error status)."""
        ...
