"""What a scan returns: a verdict, continuous scores with their thresholds, and evidence."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass
class Check:
    """One rule's continuous score against its threshold; ``flags`` is True when the score points to a backdoor.

    ``decides`` is False for a rule that is measured and reported but cannot make the verdict on this tower
    (the token-shift rule on a bidirectional encoder, see scan/verdict.BIDIRECTIONAL_RULES)."""

    name: str
    score: float | None
    threshold: float
    direction: str  # ">=" (higher flags) or "<=" (lower flags)
    flags: bool | None
    description: str
    decides: bool = True


@dataclass
class ScanResult:
    """Everything one scan found; tensors stay in ``arrays`` and are written as files by the caller."""

    verdict: str
    mode: str  # "reference" or "reference-free"
    reasons: list[str]
    checks: list[Check]
    scores: dict[str, float | None]
    clean_profile: dict[str, float]
    reference_baseline: dict[str, float] | None
    inversion: dict[str, Any]
    evidence: dict[str, Any]
    config: dict[str, Any]
    timings: dict[str, float]
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)  # loss curves, landscape grid, eigenvalues, per-prompt

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view without the tensors (those are written as files)."""
        data = asdict(self)
        data.pop("arrays")
        return data
