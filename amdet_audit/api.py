"""The one public entry point: resolve a target, load its encoders, audit them.

The CLI, plugins and Python users all call these functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amdet_audit.scan.config import DEFAULT_SEED, ScanConfig
from amdet_audit.sources import ResolvedTarget, resolve

if TYPE_CHECKING:
    from amdet_audit.audit.policy import Policy
    from amdet_audit.progress import ProgressCallback
    from amdet_audit.report.model import AuditReport


@dataclass
class SourceOptions:
    """How to turn a TARGET into files (see :func:`amdet_audit.sources.resolve`)."""

    revision: str | None = None
    component: str | None = None
    config: Path | None = None
    offline: bool | None = None
    allow_pickle: bool = False
    cache_dir: Path | None = None
    tokenizer: str | None = None  # a tokenizer folder, or clip / clip-sd2 (the shipped CLIP vocabulary)

    def resolve(self, target: str) -> ResolvedTarget:
        """Resolve ``target`` with these options."""
        resolved = resolve(target, revision=self.revision, component=self.component, config=self.config,
                           offline=self.offline, allow_pickle=self.allow_pickle, cache_dir=self.cache_dir)
        if self.tokenizer is None:
            return resolved
        from amdet_audit.sources.tokenizer_choice import with_tokenizer

        return with_tokenizer(resolved, self.tokenizer)


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
    from amdet_audit.encoders import load_component
    from amdet_audit.encoders.consumers import consumer_for

    resolved = (sources or SourceOptions()).resolve(target)
    reader = consumer_for(consumer, resolved.pipeline_class)
    description = TargetDescription(target=resolved)
    for comp in resolved.components:
        read = reader.read(comp.name, read_layer)
        adapter = load_component(comp, device=device, read_layer=read.layer, read_norm=read.final_norm)
        description.components[comp.name] = {**adapter.describe(), "consumer": reader.to_dict(comp.name, read_layer)}
    return description


@dataclass
class ScanOptions:
    """How to scan: reference choice, device, search configuration, where to write evidence."""

    reference: str | None = None  # any TARGET form; None: the built-in table of known bases
    reference_free: bool = False  # scan without a reference (weaker; labelled as such)
    device: str = "cpu"
    out: Path | None = None  # new or empty folder for report.json and evidence
    config: ScanConfig | None = None  # None: defaults sized to the model
    seed: int | None = None  # of the search; None: the config's, else DEFAULT_SEED (see ``search_seed``)
    policy: Policy | None = None  # thresholds, fail_on, waivers...; None: the bundled default policy
    plugins: list[str] | None = None  # third-party plugins to run (entry-point names); None: all installed
    third_party_plugins: bool = True  # False: built-in checks only (--no-plugins)
    plugin_options: dict[str, str] = field(default_factory=dict)  # --plugin-option KEY=VALUE, for plugin hooks
    use_cache: bool = True  # reuse a cached scan of identical files under the same thresholds (see amdet_audit.cache)
    cached_only: bool = False  # never scan: a target without a cached scan is an error (fast offline gates)
    checks: list[str] | None = None  # run only these check ids ("assimilation" is the scan); also the required set
    consumer: str | None = None  # sd1, sd2, sdxl, sd3, clip; None: from the pipeline's class (encoders.consumers)
    read_layer: int | None = None  # clip skip: read hidden_states[read_layer] (negative); None: the consumer's
    threads: int | None = None  # torch CPU threads for the scan; None: torch's default (one per core)
    argv: list[str] = field(default_factory=list)

    @property
    def search_seed(self) -> int:
        """The one seed the scan uses, its cache key holds and its report records."""
        if self.seed is not None:
            return self.seed
        return self.config.seed if self.config is not None else DEFAULT_SEED


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
