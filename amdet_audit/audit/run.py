"""The audit job behind :func:`amdet_audit.api.scan`: claim the report folder, scan the components (or reuse a
cached scan), run every check (the scan's verdicts are judged by the ``assimilation`` check), apply the policy
and write every report format."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amdet_audit import cache
from amdet_audit.audit.components import current_references, resolve_device, scan_components
from amdet_audit.audit.gate import apply_policy
from amdet_audit.audit.options import SEARCHES
from amdet_audit.audit.target_images import render_target_images
from amdet_audit.errors import NotCachedError, UsageError
from amdet_audit.outputs import OutputError, claim_out, new_report_folder, remove_if_empty, write_new
from amdet_audit.report.model import AuditReport, environment, redact_argv

if TYPE_CHECKING:
    import pluggy

    from amdet_audit.audit.options import ScanOptions, SourceOptions
    from amdet_audit.encoders.consumers import Consumer
    from amdet_audit.progress import ProgressCallback
    from amdet_audit.sources import ResolvedTarget


def output_folder(out: Path | None, target: str) -> tuple[Path, bool]:
    """This report's folder, created now: ``out`` (new, or an existing empty real folder, never a symlink),
    else a new ``amdet-audit-<target>-<UTC time>`` in the cwd (``-2``, ``-3``... when that name is taken).

    Returns (folder, whether it was created here).
    """
    if out is not None:
        return out, claim_out(out)
    return new_report_folder(target), True


def check_selection(options: ScanOptions, manager: pluggy.PluginManager) -> tuple[ScanOptions, bool]:
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


def scan_choices(options: ScanOptions, resolved: ResolvedTarget, device: str, reads: bool = True) -> dict[str, Any]:
    """Every option that changes a scan's result, for its cache key: the consumer as the scan resolves it
    (``--consumer sdxl`` on an SDXL pipeline is the default scan) and, with ``reads``, what it reads of each
    component (layer, norm, length, mask: a changed read of the same files is scanned again; a file-checks-only
    audit, which caches no scan, leaves it out and loads no model library), and the settings of the search it
    runs (a changed preset, or a changed meaning of ``auto``, invalidates what was scanned under the old one)."""
    from amdet_audit.encoders.consumers import consumer_for
    from amdet_audit.scan.config import AUTO

    consumer = consumer_for(options.consumer, resolved.pipeline_class)
    return {"thresholds": asdict(options.policy.thresholds) if options.policy else None,
            "seed": options.search_seed, "device": device.split(":")[0], "reference": options.reference,
            "reference_free": options.reference_free, "read_layer": options.read_layer,
            "config": options.search_config(device).to_dict(), "auto": AUTO if options.search == "auto" else None,
            "consumer": consumer.name,
            "reads": component_reads(consumer, resolved, options.read_layer) if reads else None}


def component_reads(consumer: Consumer, resolved: ResolvedTarget, layer: int | None) -> dict[str, dict[str, Any]]:
    """What ``consumer`` reads of each of ``resolved``'s components (:func:`~amdet_audit.encoders.load.read_of`)."""
    from amdet_audit.encoders.load import read_of  # imports torch: only where a scan runs

    return {c.name: asdict(read_of(consumer, c, layer)) for c in resolved.components}


def scan_target(target: str, sources: SourceOptions, options: ScanOptions,
                progress: ProgressCallback | None) -> AuditReport:
    """Resolve, scan every component, write report.json; see :func:`amdet_audit.api.scan`."""
    from amdet_audit.plugins import make_manager

    started, when = time.perf_counter(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    if options.policy is None:
        from amdet_audit.audit.policy import load_policy

        options = replace(options, policy=load_policy())
    manager = make_manager(options.plugins, third_party=options.third_party_plugins)
    options, scan_selected = check_selection(options, manager)
    if scan_selected:
        from amdet_audit.encoders.consumers import consumer_for

        # a bad --consumer or layer: exit 2 now (a component read only pooled refuses a layer in scan_choices, before
        # any model is loaded)
        consumer_for(options.consumer, None).check_layer(options.read_layer)
        if options.search not in SEARCHES:
            raise UsageError(f"--search must be one of {', '.join(SEARCHES)}, not {options.search!r}")
        if options.threads is not None:
            if options.threads < 1:
                raise UsageError(f"--threads must be at least 1, not {options.threads}")
            import torch

            torch.set_num_threads(options.threads)  # recorded in report.json run.environment.threads
    device = resolve_device(options.device) if scan_selected else "none (file checks only)"
    out, created = output_folder(options.out, target)
    try:
        return audit(target, sources, options, progress, manager, out, scan_selected, device, (started, when))
    except BaseException:
        if created:
            remove_if_empty(out)  # a run that failed before writing anything leaves no empty folder behind
        raise


def audit(target: str, sources: SourceOptions, options: ScanOptions, progress: ProgressCallback | None,
          manager: pluggy.PluginManager, out: Path, scan_selected: bool, device: str,
          clock: tuple[float, str]) -> AuditReport:
    """The audit proper, into the folder ``out`` this run owns: scan (or reuse a cached scan), run the
    checks, apply the policy, write every report format."""
    from amdet_audit.checks.base import CheckContext
    from amdet_audit.plugins import plugin_infos, run_checks

    started, when = clock
    resolved = sources.resolve(target)
    target_record = resolved.to_dict()
    key = cache.scan_key(target_record, scan_choices(options, resolved, device, reads=scan_selected))
    use_cache = scan_selected and (options.use_cache or options.cached_only)
    cached = cache.load_scan(key) if use_cache else None
    ref_targets = current_references(cached["reference"], sources) if cached is not None else None
    if ref_targets is None:
        cached = None  # no cached scan, or the reference model's files changed since: its verdict no longer holds
    nested = len(resolved.components) > 1
    if not scan_selected:
        entries, refs, ref_targets = [], {}, {}
    elif cached is not None:
        entries, refs = cache.restore_scan(cached, out, nested), cached["reference"]
    elif options.cached_only:
        raise NotCachedError(f"{target}: no cached scan of these files under this policy's thresholds; "
                             f"run: amdet-audit scan {target}")
    else:
        entries, refs, ref_targets = scan_components(resolved, sources, options, device, out, progress)
        if options.use_cache and all("scan" in e for e in entries):
            cache.store_scan(key, entries, refs, when)
    render_target_images(manager, entries, out, options.plugin_options)
    context = CheckContext(target=resolved, reference=reference_view(ref_targets, refs),
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


def reference_view(ref_targets: dict[str, ResolvedTarget | None], refs: dict[str, Any]) -> ResolvedTarget | None:
    """One reference for the checks: each scanned component's reference component, under the scanned
    component's name (a pipeline's two encoders against their two references, a cached scan's as well)."""
    chosen = [(name, ref, refs[name]["component"]) for name, ref in ref_targets.items() if ref and refs.get(name)]
    if not chosen:
        return None
    components = [replace(ref.component(component), name=name) for name, ref, component in chosen]
    files = list({(f.path, f.sha256): f for _, ref, _ in chosen for f in ref.files}.values())
    return replace(chosen[0][1], components=components, files=files)


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
