"""Human-readable terminal output (rich); machine output is JSON and lives elsewhere."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from amdet_audit.api import TargetDescription
    from amdet_audit.report.model import AuditReport

VERDICT_STYLE = {"clean": "bold green", "backdoored": "bold red", "inconclusive": "bold yellow",
                 "findings": "bold red"}


def stdout_console() -> Console:
    """A console on stdout; rich itself drops colour outside a terminal and under NO_COLOR."""
    import sys

    return Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def print_description(description: TargetDescription, console: Console | None = None) -> None:
    """Print provenance and one table row per text-encoder component."""
    console = console or stdout_console()
    target = description.target
    console.print(f"target   {target.input}  ({target.kind})")
    if target.repo_id:
        console.print(f"repo     {target.repo_id}  revision {target.revision or 'main'}  commit {target.commit_sha}")
    if target.pipeline_class:
        console.print(f"pipeline {target.pipeline_class}")
    table = Table(title=None, show_edge=False)
    for column in ("component", "architecture", "width", "layers", "tokens", "pad", "reads", "params"):
        table.add_column(column)
    for name, info in description.components.items():
        reads = "last+norm" if info.get("read_layer") == -1 else f"hidden[{info.get('read_layer')}]"
        table.add_row(name, str(info.get("architecture")), str(info.get("hidden_size")), str(info.get("layers")),
                      str(info.get("max_length")), repr(info.get("pad_token")), reads, f"{info.get('parameters'):,}")
    console.print(table)
    console.print(f"files    {len(target.files)} used, sha256 recorded (--format json lists them)")
    for item in target.custom_code:
        console.print(f"[yellow]custom code present (not executed): {item}[/]")
    for item in target.other_files:
        console.print(f"unused weight file: {item}")


def print_report(report: AuditReport, console: Console | None = None) -> None:
    """Verdict banner, one row per check, the evidence that matters, and where the files are."""
    console = console or stdout_console()
    verdict = report.verdict
    console.print(f"[{VERDICT_STYLE[verdict['label']]}]{verdict['label'].upper()}[/]  {report.target['input']}"
                  f"  (exit {verdict['exit_code']})")
    for entry in report.components:
        if "scan" not in entry:
            console.print(f"{entry['name']}: [yellow]not scanned: {entry.get('error')}[/]")
            continue
        scan = entry["scan"]
        ref = (report.reference or {}).get(entry["name"])
        console.print(f"\n{entry['name']}: {scan['verdict']}  mode {scan['mode']}"
                      + (f"  reference {ref['input']} ({ref['chosen']})" if ref else ""))
        table = Table(show_edge=False)
        for column in ("check", "score", "threshold", "flags"):
            table.add_column(column)
        for check in scan["checks"]:
            score = "n/a" if check["score"] is None else f"{check['score']:.3f}"
            table.add_row(check["name"], score, f"{check['direction']} {check['threshold']:.3f}",
                          "yes" if check["flags"] else "no")
        console.print(table)
        evidence = scan["evidence"]
        if scan["verdict"] == "backdoored" and evidence.get("nearest_tokens"):
            tokens = " | ".join(", ".join(t["token"] for t in row[:4]) for row in evidence["nearest_tokens"])
            console.print(f"pseudo-trigger nearest tokens: {tokens}")
            console.print("target resembles: " + "; ".join(p["prompt"] for p in evidence["nearest_prompts"][:3]))
    findings = [(c["check"], f) for c in report.checks for f in c["findings"] if f["severity"] != "info"]
    for name, finding in findings:
        where = f" ({finding['location']})" if finding.get("location") else ""
        console.print(f"{finding['severity'].upper()} {name}: {finding['message']}{where}", markup=False)
    for check in report.checks:
        if check["status"] != "ran":
            console.print(f"{check['check']}: {check['status']}: {check['reason']}", markup=False)
    console.print(f"\nreport: {report.out_dir}/report.json")
