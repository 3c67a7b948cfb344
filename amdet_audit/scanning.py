"""The scan job behind :func:`amdet_audit.api.scan`: per component, choose the reference, run the scan
(with the reference's baseline cached by its digests), write the evidence files and the report."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from amdet_audit import __version__, scan_cache
from amdet_audit.cache import cache_root
from amdet_audit.errors import AmdetError, NotCachedError, UsageError
from amdet_audit.gate import apply_policy
from amdet_audit.outputs import OutputError, claim_out, make_new_dir, new_report_folder, remove_if_empty, write_new
from amdet_audit.report.model import AuditReport, environment, redact_argv
from amdet_audit.sources import ResolvedTarget, resolve
from amdet_audit.target_images import render_target_images

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


def output_folder(out: Path | None, target: str) -> tuple[Path, bool]:
    """This report's folder, created now: ``out`` (new, or an existing empty real folder, never a symlink),
    else a new ``amdet-audit-<target>-<UTC time>`` in the cwd (``-2``, ``-3``... when that name is taken).

    Returns (folder, whether it was created here).
    """
    if out is not None:
        return out, claim_out(out)
    return new_report_folder(target), True


def weights_digest(resolved: ResolvedTarget, component: str) -> str:
    """sha256 over a component's weight files' sha256s (its identity for caching)."""
    comp = resolved.component(component)
    names = {str(p) for p in comp.weight_files}
    shas = sorted(f.sha256 for f in resolved.files if str(resolved.root / f.path) in names or f.path in names)
    return hashlib.sha256("".join(shas).encode()).hexdigest()


def pick_reference(adapter, name: str, options, sources) -> tuple[ResolvedTarget | None, str | None, str]:
    """(resolved reference, its component, how it was chosen) for one suspect component."""
    from amdet_audit.references import known_base, split_component

    if options.reference_free:
        return None, None, "none (--reference-free)"
    if options.reference:
        ref = resolve(options.reference, offline=sources.offline, allow_pickle=sources.allow_pickle)
        names = [c.name for c in ref.components]
        return ref, (name if name in names else names[0]), "explicit (--reference)"
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


def cached_baseline(reference, ref_digest: str, config, progress) -> dict[str, float]:
    """The reference's natural collapse baseline, computed once per (reference digest, config, version)."""
    from amdet_audit.scan.run import calibrate_reference

    knobs = json.dumps({k: v for k, v in config.to_dict().items() if k != "thresholds"}, sort_keys=True)
    key = hashlib.sha256(f"{ref_digest}|{knobs}|{__version__}".encode()).hexdigest()[:32]
    path = cache_root() / "baselines" / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    baseline = calibrate_reference(reference, config, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{time.time_ns()}.tmp")
    tmp.write_text(json.dumps(baseline), encoding="utf-8")
    tmp.replace(path)
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


def scan_component(resolved: ResolvedTarget, name: str, sources, options, device: str,
                   folder: Path, progress, new_folder: bool = False) -> ComponentScan:
    """Scan one component; return its report entry, the reference record and the resolved reference."""
    from amdet_audit.encoders import load_component
    from amdet_audit.scan.config import ScanConfig
    from amdet_audit.scan.run import run_scan

    suspect = load_component(resolved.component(name), device=device)
    seed = options.search_seed
    config = replace(options.config, seed=seed) if options.config else ScanConfig.for_model(suspect, device, seed=seed)
    if options.policy is not None:
        config = replace(config, thresholds=options.policy.thresholds)
    entry: dict[str, Any] = {"name": name, "encoder": suspect.describe()}
    ref_target, ref_name, how = pick_reference(suspect, name, options, sources)
    reference = baseline = ref_record = None
    if ref_target is not None and ref_name is not None:
        ref_digest = weights_digest(ref_target, ref_name)
        ref_record = {"input": ref_target.input, "component": ref_name, "chosen": how,
                      "commit_sha": ref_target.commit_sha, "weights_digest": ref_digest}
        if ref_digest == weights_digest(resolved, name):
            ref_record["note"] = "the target is the reference itself: scanned reference-free"
        else:
            reference = load_component(ref_target.component(ref_name), device=device)
            baseline = cached_baseline(reference, ref_digest, config, progress)
    result = run_scan(suspect, reference, config=config, reference_baseline=baseline, progress=progress)
    entry["scan"] = result.to_dict()
    entry["evidence_files"] = write_evidence(folder, result.arrays, new_folder)
    return entry, ref_record, ref_target


def resolve_reference(record: dict[str, Any], sources) -> ResolvedTarget:
    """A reference record of a scan resolved again, at the commit the scan used (hub references)."""
    revision = record.get("commit_sha") if "@" not in record["input"] else None
    return resolve(record["input"], revision=revision, component=record.get("component"), offline=sources.offline,
                   allow_pickle=sources.allow_pickle)


def current_references(refs: dict[str, Any], sources) -> dict[str, ResolvedTarget | None] | None:
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


def scan_components(resolved: ResolvedTarget, sources, options, device: str, out: Path,
                    progress) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, ResolvedTarget | None]]:
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


def check_selection(options, manager) -> tuple[Any, bool]:
    """Apply ``options.checks`` (the explicit --checks selection): unknown ids are a UsageError; the selection
    becomes the policy's required set. Returns (options, whether the assimilation scan runs)."""
    from amdet_audit.checks.assimilation import CHECK_ID
    from amdet_audit.plugins import check_ids

    if options.checks is None:
        return options, True
    selection = list(dict.fromkeys(options.checks))
    known = check_ids(manager)
    unknown = [c for c in selection if c not in known]
    if not selection or unknown:
        raise UsageError(f"--checks: {'unknown check ' + ', '.join(unknown) if unknown else 'nothing selected'}; "
                         f"known: {', '.join(known)}")
    policy = replace(options.policy, required=tuple(selection))
    return replace(options, checks=selection, policy=policy), CHECK_ID in selection


def scan_target(target: str, sources, options, progress) -> AuditReport:
    """Resolve, scan every component, write report.json; see :func:`amdet_audit.api.scan`."""
    from amdet_audit.plugins import make_manager

    started, when = time.perf_counter(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    if options.policy is None:
        from amdet_audit.policy import load_policy

        options = replace(options, policy=load_policy())
    manager = make_manager(options.plugins, third_party=options.third_party_plugins)
    options, scan_selected = check_selection(options, manager)
    device = resolve_device(options.device) if scan_selected else "none (file checks only)"
    out, created = output_folder(options.out, target)
    try:
        return audit(target, sources, options, progress, manager, out, scan_selected, device, (started, when))
    except BaseException:
        if created:
            remove_if_empty(out)  # a run that failed before writing anything leaves no empty folder behind
        raise


def audit(target: str, sources, options, progress, manager, out: Path, scan_selected: bool, device: str,
          clock: tuple[float, str]) -> AuditReport:
    """The audit proper, into the folder ``out`` this run owns: scan (or reuse a cached scan), run the
    checks, apply the policy, write every report format."""
    from amdet_audit.checks.base import CheckContext
    from amdet_audit.plugins import plugin_infos, run_checks

    started, when = clock
    resolved = sources.resolve(target)
    target_record = resolved.to_dict()
    key = scan_cache.scan_key(target_record, options, device)
    use_cache = scan_selected and (options.use_cache or options.cached_only)
    cached = scan_cache.load(key) if use_cache else None
    ref_targets = current_references(cached["reference"], sources) if cached is not None else None
    if ref_targets is None:
        cached = None  # no cached scan, or the reference model's files changed since: its verdict no longer holds
    nested = len(resolved.components) > 1
    if not scan_selected:
        entries, refs, ref_targets = [], {}, {}
    elif cached is not None:
        entries, refs = scan_cache.restore(cached, out, nested), cached["reference"]
    elif options.cached_only:
        raise NotCachedError(f"{target}: no cached scan of these files under this policy's thresholds; "
                             f"run: amdet-audit scan {target}")
    else:
        entries, refs, ref_targets = scan_components(resolved, sources, options, device, out, progress)
        if options.use_cache and all("scan" in e for e in entries):
            scan_cache.store(key, entries, refs, when)
    render_target_images(manager, entries, out, options.plugin_options)
    context = CheckContext(target=resolved, reference=next((r for r in ref_targets.values() if r), None),
                           components=entries if scan_selected else None)
    checks = [r.to_dict() for r in run_checks(manager, context, options.checks)]
    run = {"argv": redact_argv(options.argv), "started": when, "duration_s": round(time.perf_counter() - started, 2),
           "device": device, "seed": options.search_seed, "environment": environment(),
           "cache": {"key": key, "hit": cached is not None, "scanned": cached["started"] if cached else when}}
    gated = apply_policy(target_record, checks, options.policy)
    report = AuditReport(target=target_record, components=entries, verdict=gated["verdict"], run=run,
                         reference=refs or None, out_dir=str(out), checks=checks,
                         plugins=[asdict(p) for p in plugin_infos(manager)],
                         policy={**options.policy.to_dict(), "waivers": gated["waivers"]},
                         findings=gated["findings"], coverage=gated["coverage"])
    try:
        report.sections = [s for s in manager.hook.amdet_audit_report_sections(report=report.to_dict()) if s]
    except Exception as err:  # third-party code: a failing section is reported, the audit stands
        report.sections = [{"title": "plugin error", "body": f"a report section hook failed: {err}", "data": None}]
    write_reports(report.to_dict(), out)
    return report


def write_reports(document: dict[str, Any], out: Path) -> None:
    """report.json (the source of truth) and its renderings report.sarif, report.md, report.html into ``out``,
    each a new file. A rendering or write that fails does not keep the others from being written; the first
    failure is raised after them as one OutputError line naming its format."""
    from amdet_audit.report.render import render

    failure: str | None = None
    for fmt in ("json", "sarif", "md", "html"):
        try:
            write_new(out / f"report.{fmt}", render(document, fmt, folder=out))
        except Exception as err:  # write the other formats first, then report this one
            reason = " ".join(str(err).split()) or type(err).__name__
            failure = failure or f"report.{fmt} could not be written: {reason[:300]}"
    if failure is not None:
        raise OutputError(failure)
