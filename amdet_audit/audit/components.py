"""The scan's model work for one target: per component, load the encoder, choose and load its reference
(the reference's baseline kept in the cache by its digests), run the scan and write its evidence files."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amdet_audit import cache
from amdet_audit.errors import AmdetError, UsageError
from amdet_audit.outputs import OutputError, make_new_dir, write_new
from amdet_audit.progress import phase
from amdet_audit.sources import ResolvedTarget, resolve

if TYPE_CHECKING:
    from amdet_audit.audit.options import ScanOptions, SourceOptions
    from amdet_audit.encoders.base import Adapter
    from amdet_audit.progress import ProgressCallback
    from amdet_audit.scan.config import ScanConfig

log = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when available else cpu; validate cuda[:N]."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" or device.startswith("cuda"):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA device is available")
        return device
    raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, not {device!r}")


def weights_digest(resolved: ResolvedTarget, component: str) -> str:
    """sha256 over a component's weight files' sha256s (its identity for caching); a LoRA target's component
    counts its base's weight files and the LoRA's file."""
    comp = resolved.component(component)
    shas: dict[str, str] = {}
    for target in (resolved, resolved.base):
        for record in target.files if target is not None else ():
            shas[str(target.root / record.path)] = shas[record.path] = record.sha256
    paths = [*comp.weight_files, *([comp.patch.path] if comp.patch is not None else [])]
    # a file without a record counts by its path, so that two unrecorded files never look identical
    return hashlib.sha256("".join(sorted(shas.get(str(p), f"unrecorded:{p}") for p in paths)).encode()).hexdigest()


def pick_reference(adapter: Adapter, name: str, options: ScanOptions, sources: SourceOptions,
                   base: ResolvedTarget | None = None) -> tuple[ResolvedTarget | None, str | None, str]:
    """(resolved reference, its component, how it was chosen) for one suspect component; ``base``: a LoRA
    target's base, its reference unless another is given."""
    from amdet_audit.audit.references import known_base, split_component

    if options.reference_free:
        return None, None, "none (--reference-free)"
    if options.reference or base is not None:
        ref = base if not options.reference else resolve(options.reference, offline=sources.offline,
                                                         allow_pickle=sources.allow_pickle)
        names = [c.name for c in ref.components]
        how = "explicit (--reference)" if options.reference else "the LoRA's base (--base)"
        return ref, (name if name in names else names[0]), how
    base = known_base(adapter.describe())
    if base is None:
        raise UsageError("no known clean base for this architecture; pass --reference REF (its base model) "
                         "or --reference-free")
    failures: list[AmdetError] = []
    for choice in (base.reference, *base.alternatives):
        where, component = split_component(choice)
        try:
            ref = resolve(where, component=component, offline=sources.offline)
        except AmdetError as exc:
            failures.append(exc)
            continue
        return ref, ref.components[0].name, f"built-in table: {base.name} ({choice})"
    raise failures[-1]  # the last fallback (usually the hub) says best what to do


def cached_baseline(reference: Adapter, ref_digest: str, config: ScanConfig,
                    progress: ProgressCallback | None) -> dict[str, float]:
    """The reference's natural collapse baseline, computed once per (reference digest, config, version), and
    once among concurrent scans (fleet workers) sharing the cache."""
    from amdet_audit.scan.run import calibrate_reference

    knobs = {k: v for k, v in config.to_dict().items() if k != "thresholds"}
    knobs["read"] = [reference.read_layer, getattr(reference, "read_norm", reference.read_layer == -1)]
    key = cache.baseline_key(ref_digest, knobs)
    baseline = cache.load_baseline(key)
    if baseline is not None:
        return baseline
    with cache.build_lock(cache.store("baselines") / f".{key}.lock"):  # concurrent scans compute it once
        baseline = cache.load_baseline(key)
        if baseline is None:
            baseline = calibrate_reference(reference, config, progress=phase(progress, "reference baseline"))
            cache.store_baseline(key, baseline)
    return baseline


def write_evidence(folder: Path, arrays: dict[str, Any], new_folder: bool = False) -> dict[str, str]:
    """Write the pseudo-trigger, its Textual-Inversion export and the target feature as new safetensors files
    (``new_folder``: in a folder created for them); an existing file or symlink there fails the run."""
    from safetensors.torch import save

    if not arrays:
        return {}
    if new_folder:
        make_new_dir(folder, "evidence folder")
    tensors = {"pseudo_trigger": ("pseudo_trigger", arrays["pseudo_trigger"]),
               "pseudo_trigger_ti": ("emb_params", arrays["ti_emb_params"]),
               "target_feature": ("target_feature", arrays["target_feature"])}
    files = {}
    for kind, (tensor_name, tensor) in tensors.items():
        files[kind] = str(write_new(folder / f"{kind}.safetensors", save({tensor_name: tensor.contiguous()})))
    return files


ComponentScan = tuple[dict[str, Any], dict[str, Any] | None, ResolvedTarget | None]


def scan_component(resolved: ResolvedTarget, name: str, sources: SourceOptions, options: ScanOptions, device: str,
                   folder: Path, progress: ProgressCallback | None, new_folder: bool = False) -> ComponentScan:
    """Scan one component; return its report entry, the reference record and the resolved reference."""
    from amdet_audit.encoders.consumers import consumer_for
    from amdet_audit.encoders.load import load_as_read, read_of
    from amdet_audit.scan.run import run_scan

    consumer = consumer_for(options.consumer, resolved.pipeline_class)
    read = read_of(consumer, resolved.component(name), options.read_layer)
    suspect = load_as_read(resolved.component(name), read, device)
    config = options.search_config(device, suspect.causal, suspect.family)
    if not read.sequence:  # the consumer reads the pooled output alone (FLUX's CLIP): so does the scan
        config = replace(config, pooled_only=True, assimilation_weight=0.0)
    if options.policy is not None:
        config = replace(config, thresholds=options.policy.thresholds)
    entry: dict[str, Any] = {"name": name, "encoder": suspect.describe(),
                             "consumer": consumer.record(read)}
    ref_target, ref_name, how = pick_reference(suspect, name, options, sources, resolved.base)
    reference = baseline = ref_record = None
    if ref_target is not None and ref_name is not None:
        ref_digest = weights_digest(ref_target, ref_name)
        ref_record = {"input": ref_target.input, "component": ref_name, "chosen": how,
                      "commit_sha": ref_target.commit_sha, "weights_digest": ref_digest}
        if ref_digest == weights_digest(resolved, name) and suspect.causal:
            ref_record["note"] = "the target is the reference itself: scanned reference-free"
        elif ref_digest == weights_digest(resolved, name):
            reference = suspect  # bidirectional: judged against a reference only, here its own known clean base
            ref_record["note"] = ("the target is the reference itself: a bidirectional tower is judged only against "
                                  "its reference, so it is compared with itself (the known clean base)")
        else:
            reference = load_as_read(ref_target.component(ref_name), read, device)  # read as the suspect is read
            if reference.causal:  # a bidirectional tower's rules are relative to the reference itself
                baseline = cached_baseline(reference, ref_digest, config, progress)
    result = run_scan(suspect, reference, config=config, reference_baseline=baseline,
                      progress=phase(progress, name))
    entry["scan"] = result.to_dict()
    entry["evidence_files"] = write_evidence(folder, result.arrays, new_folder)
    return entry, ref_record, ref_target


def resolve_reference(record: dict[str, Any], sources: SourceOptions) -> ResolvedTarget:
    """A reference record of a scan resolved again, at the commit the scan used (hub references)."""
    revision = record.get("commit_sha") if "@" not in record["input"] else None
    return resolve(record["input"], revision=revision, component=record.get("component"), offline=sources.offline,
                   allow_pickle=sources.allow_pickle)


def current_references(refs: dict[str, Any], sources: SourceOptions) -> dict[str, ResolvedTarget | None] | None:
    """The references a cached scan used, resolved again; None when one is gone or its weights changed."""
    current: dict[str, ResolvedTarget | None] = {}
    for name, record in refs.items():
        if not record:
            current[name] = None
            continue
        try:
            ref = resolve_reference(record, sources)
        except AmdetError:
            return None
        if weights_digest(ref, ref.components[0].name) != record["weights_digest"]:
            return None
        current[name] = ref
    return current


def scan_components(resolved: ResolvedTarget, sources: SourceOptions, options: ScanOptions, device: str, out: Path,
                    progress: ProgressCallback | None
                    ) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, ResolvedTarget | None]]:
    """Scan every component (entries, reference records, resolved references); one that fails is recorded as
    an error (the others are still scanned and reported) unless it is the only one. An output that would
    overwrite something always fails the run."""
    entries, refs, ref_targets = [], {}, {}
    for comp in resolved.components:
        folder = out if len(resolved.components) == 1 else out / comp.name
        try:
            entry, ref, ref_target = scan_component(resolved, comp.name, sources, options, device, folder, progress,
                                                    new_folder=folder != out)
        except OutputError:
            raise
        except Exception as err:  # one broken component must not hide the others' results
            if len(resolved.components) == 1:
                raise
            log.info("component %s could not be scanned: %s", comp.name, err)
            message = str(err) if isinstance(err, AmdetError) else f"{type(err).__name__}: {err}"
            entry, ref, ref_target = {"name": comp.name, "error": message}, None, None
        entries.append(entry)
        refs[comp.name] = ref
        ref_targets[comp.name] = ref_target
    return entries, refs, ref_targets


