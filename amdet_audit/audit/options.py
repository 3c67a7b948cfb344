"""How an audit runs: where its target's files come from (:class:`SourceOptions`) and how it is scanned
(:class:`ScanOptions`). :mod:`amdet_audit.api` exports both."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from amdet_audit.scan.config import DEFAULT_SEED, ScanConfig
from amdet_audit.sources import ResolvedTarget, resolve

if TYPE_CHECKING:
    from amdet_audit.audit.policy import Policy

SEARCHES = ("auto", "full", "light")  # --search presets (see ScanOptions.search_config)


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
    base: str | None = None  # for a LoRA target: the model it is applied onto (any TARGET form)

    def resolve(self, target: str) -> ResolvedTarget:
        """Resolve ``target`` with these options."""
        resolved = resolve(target, revision=self.revision, component=self.component, config=self.config,
                           offline=self.offline, allow_pickle=self.allow_pickle, cache_dir=self.cache_dir,
                           base=self.base)
        if self.tokenizer is None:
            return resolved
        from amdet_audit.sources.tokenizer_choice import with_tokenizer

        return with_tokenizer(resolved, self.tokenizer)


@dataclass
class ScanOptions:
    """How to scan: reference choice, device, search configuration, where to write evidence."""

    reference: str | None = None  # any TARGET form; None: the built-in table of known bases
    reference_free: bool = False  # scan without a reference (weaker; labelled as such)
    device: str = "cpu"
    out: Path | None = None  # new or empty folder for report.json and evidence
    config: ScanConfig | None = None  # None: the ``search`` preset
    search: str = "auto"  # auto (light on CPU for causal towers and for BERT-family ones, else full;
    # scan/config.AUTO), full or light
    seed: int | None = None  # of the search; None: the config's, else DEFAULT_SEED (see ``search_seed``)
    policy: Policy | None = None  # thresholds, fail_on, waivers...; None: the bundled default policy
    plugins: list[str] | None = None  # third-party plugins to run (entry-point names); None: all installed
    third_party_plugins: bool = True  # False: built-in checks only (--no-plugins)
    plugin_options: dict[str, str] = field(default_factory=dict)  # --plugin-option KEY=VALUE, for plugin hooks
    use_cache: bool = True  # reuse a cached scan of identical files under the same thresholds (see amdet_audit.cache)
    cached_only: bool = False  # never scan: a target without a cached scan is an error (fast offline gates)
    checks: list[str] | None = None  # run only these check ids ("assimilation" is the scan); also the required set
    consumer: str | None = None  # a name of encoders.consumers.CONSUMERS; None: from the pipeline's class
    read_layer: int | None = None  # clip skip: read hidden_states[read_layer] (negative); None: the consumer's
    threads: int | None = None  # torch CPU threads for the scan; None: torch's default (one per core)
    argv: list[str] = field(default_factory=list)

    def search_config(self, device: str, causal: bool = True, family: str = "") -> ScanConfig:
        """The scan's configuration on ``device`` for a causal or bidirectional tower of ``family``: the given
        one, else the ``search`` preset, seeded."""
        seed = self.search_seed
        if self.config is not None:
            return replace(self.config, seed=seed)
        return ScanConfig.preset(self.search, device, seed, causal, family)

    @property
    def search_seed(self) -> int:
        """The one seed the scan uses, its cache key holds and its report records."""
        if self.seed is not None:
            return self.seed
        return self.config.seed if self.config is not None else DEFAULT_SEED
