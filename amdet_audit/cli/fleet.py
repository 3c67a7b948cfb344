"""``amdet-audit fleet``: many targets, one command, locally or on Ray (see amdet_audit.fleet)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from amdet_audit.scan.config import DEFAULT_SEED


def fleet_command(
    targets: Annotated[list[str] | None, typer.Argument(help="Targets (any TARGET form).")] = None,
    from_file: Annotated[Path | None, typer.Option(
        "--from", help="A list of targets: one per line, or a YAML list of TARGETs or {target, reference, "
        "component, consumer}.")] = None,
    out: Annotated[Path, typer.Option(help="The fleet folder: new, or one a previous run of this fleet left "
                                           "(finished targets are skipped).")] = Path("amdet-audit-fleet"),
    jobs: Annotated[int, typer.Option(help="Local scans at a time (torch threads divided between them).")] = 1,
    ray: Annotated[str | None, typer.Option(
        "--ray", help="Run each scan as a Ray task: 'local' starts a local Ray runtime; an address (e.g. "
        "ray://head:10001 or head:6379) joins an existing cluster. Needs pip install 'amdet-audit[ray]'.")] = None,
    scan_cpus: Annotated[float, typer.Option(help="CPUs each Ray scan reserves.")] = 1.0,
    scan_gpus: Annotated[float, typer.Option(help="GPUs each Ray scan reserves (use with --device cuda).")] = 0.0,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Rescan targets that ended in an error "
                                                                      "in a previous run.")] = False,
    reference: Annotated[str | None, typer.Option(help="The clean base model for every target.")] = None,
    reference_free: Annotated[bool, typer.Option("--reference-free", help="Scan without a reference.")] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    policy: Annotated[Path | None, typer.Option(help="Policy YAML (default: bundled).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed of the search.")] = DEFAULT_SEED,
    search: Annotated[str, typer.Option(help="auto, full or light (as for scan).")] = "auto",
    checks: Annotated[str | None, typer.Option(help="Only these check ids (comma list).")] = None,
    consumer: Annotated[str | None, typer.Option(help="sd1, sd2, sdxl, sd3, flux, pixart or clip.")] = None,
    base: Annotated[str | None, typer.Option(help="For LoRA targets: the model they apply onto.")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Scan even what is cached.")] = False,
    no_plugins: Annotated[bool, typer.Option("--no-plugins", help="Built-in checks only.")] = False,
    offline: Annotated[bool, typer.Option("--offline", help="Hub targets from the local cache only.")] = False,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Accept pickle weights.")] = False,
) -> None:
    """Audit many targets into one fleet folder (fleet.json, fleet.html, fleet.sarif, fleet.md and each
    target's report); exit 0 all pass, 1 any fails the policy, 2 any could not complete."""
    from amdet_audit.audit.options import SEARCHES
    from amdet_audit.audit.policy import load_policy
    from amdet_audit.errors import UsageError
    from amdet_audit.fleet.executors import make_executor
    from amdet_audit.fleet.plan import plan
    from amdet_audit.fleet.run import FleetSettings, run_fleet, stderr_progress, threads_per_scan

    if reference and reference_free:
        raise UsageError("--reference and --reference-free contradict each other")
    if search not in SEARCHES:
        raise UsageError(f"--search must be one of {', '.join(SEARCHES)}, not {search!r}")
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, not {jobs}")
    if ray is not None and jobs != 1:
        raise UsageError("--jobs is for local scans; with --ray, --scan-cpus and --scan-gpus size each scan")
    load_policy(policy)  # a bad policy is one error now, not one per target
    entries = plan(list(targets or []), from_file)
    settings = FleetSettings(reference=reference, reference_free=reference_free, device=device,
                             policy=str(policy.resolve()) if policy else None, seed=seed, search=search,
                             checks=[c.strip() for c in checks.split(",") if c.strip()] if checks else None,
                             consumer=consumer,
                             use_cache=not no_cache, plugins=not no_plugins, offline=offline or None,
                             allow_pickle=allow_pickle, base=base,
                             threads=threads_per_scan(jobs, scan_cpus if ray is not None else None),
                             retry_failed=retry_failed, argv=["amdet-audit", *sys.argv[1:]])
    executor = make_executor(jobs, ray, scan_cpus, scan_gpus)
    document = run_fleet(entries, out.absolute(), settings, executor, stderr_progress)  # workers get whole paths
    c = document["counts"]
    typer.echo(f"fleet: {c['failed']} failed, {c['passed']} passed, {c['errors']} could not complete "
               f"({c['total']} targets) -> {out / 'fleet.html'}")
    raise typer.Exit(document["exit_code"])
