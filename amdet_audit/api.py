"""The one public entry point: resolve a target, load its encoders, audit them.

The CLI, plugins and Python users all call these functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from amdet_audit.audit.options import ScanOptions, SourceOptions
from amdet_audit.sources import ResolvedTarget

if TYPE_CHECKING:
    from amdet_audit.progress import ProgressCallback
    from amdet_audit.report.model import AuditReport

__all__ = ["ScanOptions", "SourceOptions", "TargetDescription", "describe", "scan"]


@dataclass
class TargetDescription:
    """A resolved target plus what loading each component found (architecture, tokenizer, read layer)."""

    target: ResolvedTarget
    components: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {"target": self.target.to_dict(), "encoders": self.components}


def describe(target: str, *, sources: SourceOptions | None = None, device: str = "cpu", consumer: str | None = None,
             read_layer: int | None = None) -> TargetDescription:
    """Resolve ``target``, load every text-encoder component, and describe what was found, each component read
    as ``consumer`` reads it (None: as the pipeline's class says; see :mod:`amdet_audit.encoders.consumers`).

    Raises:
        AmdetError: for any target that cannot be resolved or loaded (see amdet_audit.errors).
    """
    from amdet_audit.encoders.consumers import consumer_for
    from amdet_audit.encoders.load import load_as_read, read_of

    resolved = (sources or SourceOptions()).resolve(target)
    reader = consumer_for(consumer, resolved.pipeline_class)
    description = TargetDescription(target=resolved)
    for comp in resolved.components:
        read = read_of(reader, comp, read_layer)
        adapter = load_as_read(comp, read, device)
        description.components[comp.name] = {**adapter.describe(), "consumer": reader.record(read)}
    return description


def scan(target: str, *, sources: SourceOptions | None = None, options: ScanOptions | None = None,
         progress: ProgressCallback | None = None) -> AuditReport:
    """Audit every text encoder of ``target`` with the assimilation scan; write report.json and evidence.

    ``options.checks`` selects what runs: without ``assimilation`` no model is loaded (file checks only).
    The report folder is created exclusively and every file in it is new (see :mod:`amdet_audit.outputs`).

    ``progress(done, total, label)`` is called as the search advances.

    Raises:
        AmdetError: bad input (target, reference, output folder) -- no report is written then.
    """
    from amdet_audit.audit.run import scan_target

    return scan_target(target, sources or SourceOptions(), options or ScanOptions(), progress)
