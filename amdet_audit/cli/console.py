"""Human-readable terminal output (rich); machine output is JSON and lives elsewhere.

Every string that comes from a model or its files (names, tokens, prompts, file names, messages) passes
through :func:`amdet_audit.report.escaping.terminal` before it reaches rich: control and bidi characters are
shown as escapes and rich markup in it is never interpreted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from amdet_audit.checks.assimilation import UNNAMED_CONSUMER
from amdet_audit.report.escaping import terminal as esc
from amdet_audit.report.markdown import rule_groups
from amdet_audit.tokenization import character_names, shown_text

if TYPE_CHECKING:
    from amdet_audit.api import TargetDescription
    from amdet_audit.report.model import AuditReport

VERDICT_STYLE = {"clean": "bold green", "backdoored": "bold red", "inconclusive": "bold yellow",
                 "findings": "bold red"}


def best_probe(search: dict | None) -> dict | None:
    """The top real-input probe of a scan's token search (None when it did not run or found nothing)."""
    top = (search or {}).get("top") or []
    return {**top[0], "text": shown_text(top[0])} if top else None


def print_lookalikes(console: Console, texts: list[str]) -> None:
    """Name the non-ASCII characters of ``texts`` (a Cyrillic "о" reads like a Latin one)."""
    names = character_names("".join(texts))
    if names:
        console.print(f"  non-ASCII: {esc(', '.join(names))}")


def stdout_console() -> Console:
    """A console on stdout; rich itself drops colour outside a terminal and under NO_COLOR."""
    import sys

    return Console(highlight=False, emoji=False, width=None if sys.stdout.isatty() else 120)


def print_description(description: TargetDescription, console: Console | None = None) -> None:
    """Print provenance and one table row per text-encoder component."""
    console = console or stdout_console()
    target = description.target
    console.print(f"target   {esc(target.input)}  ({esc(target.kind)})")
    if target.repo_id:
        console.print(f"repo     {esc(target.repo_id)}  revision {esc(target.revision or 'main')}  "
                      f"commit {esc(target.commit_sha)}")
    if target.pipeline_class:
        console.print(f"pipeline {esc(target.pipeline_class)}")
    consumers = {(c.get("name"), c.get("description")) for c in
                 ((info.get("consumer") or {}) for info in description.components.values()) if c}
    for name, text in sorted(consumers, key=str):
        console.print(f"consumer {esc(name)}: {esc(text)}")
    table = Table(title=None, show_edge=False)
    for column in ("component", "architecture", "width", "layers", "tokens", "pad", "reads", "params"):
        table.add_column(column)
    for name, info in description.components.items():
        reads = (info.get("consumer") or {}).get("reads", "?")
        params = info.get("parameters")
        table.add_row(*(esc(v) for v in (name, info.get("architecture"), info.get("hidden_size"), info.get("layers"),
                                         info.get("max_length"), repr(info.get("pad_token")), reads,
                                         f"{params:,}" if isinstance(params, int) else params)))
    console.print(table)
    console.print(f"files    {len(target.files)} used, sha256 recorded (--format json lists them)")
    for item in target.custom_code:
        console.print(f"[yellow]custom code present (not executed): {esc(item)}[/]")
    for item in target.other_files:
        console.print(f"unused weight file: {esc(item)}")


def score_text(value: object) -> str:
    """A score or threshold with three decimals; n/a when missing."""
    return "n/a" if not isinstance(value, (int, float)) else f"{value:.3f}"


def reference_line(report: AuditReport, entry: dict) -> str:
    """How the component was compared: against which reference, or without one and why."""
    ref = (report.reference or {}).get(entry["name"])
    if entry["scan"]["mode"] == "reference-free":
        why = "the target is the reference itself" if ref and ref.get("note") else "no reference"
        return f"mode reference-free ({esc(why)})"
    return f"mode reference  reference {esc(ref['input'])} ({esc(ref['chosen'])})" if ref else "mode reference"


def rules_table(checks: list[dict]) -> Table:
    """One row per condition, grouped by rule; the rule's cell says whether the rule fired (all of its
    conditions held), the last column whether this condition held."""
    table = Table(show_edge=False)
    for column in ("rule", "condition", "score", "threshold", "holds"):
        table.add_column(column)
    for group in rule_groups(checks):
        for i, check in enumerate(group["checks"]):
            fired = "[bold red]fired[/]" if group["fired"] else group["state"]
            table.add_row(f"{esc(group['rule'])}: {fired}" if i == 0 else "", esc(check["condition"]),
                          score_text(check["score"]), f"{esc(check['direction'])} {score_text(check['threshold'])}",
                          "yes" if check["flags"] else "no")
    return table


def print_report(report: AuditReport, console: Console | None = None) -> None:
    """Verdict banner, one row per check, the evidence that matters, and where the files are."""
    console = console or stdout_console()
    verdict = report.verdict
    console.print(f"[{VERDICT_STYLE[verdict['label']]}]{verdict['label'].upper()}[/]  {esc(report.target['input'])}"
                  f"  (exit {verdict['exit_code']})")
    for note in report.target.get("notes", []):
        console.print(f"note: {esc(note)}")
    for entry in report.components:
        if "scan" not in entry:
            console.print(f"{esc(entry['name'])}: [yellow]not scanned: {esc(entry.get('error'))}[/]")
            continue
        scan = entry["scan"]
        console.print(f"\n{esc(entry['name'])}: {esc(scan['verdict'])}  {reference_line(report, entry)}")
        console.print(rules_table(scan["checks"]))
        evidence = scan["evidence"]
        if scan["verdict"] == "backdoored" and evidence.get("nearest_tokens"):
            rows = [[shown_text(t) for t in row[:4]] for row in evidence["nearest_tokens"]]
            console.print(f"pseudo-trigger nearest tokens: {' | '.join(', '.join(esc(t) for t in r) for r in rows)}")
            print_lookalikes(console, [t for r in rows for t in r])
            prompts = "; ".join(esc(p["prompt"]) for p in evidence.get("nearest_prompts", [])[:3])
            console.print(f"nearest corpus prompts (a guess; the target only if it is one of them): {prompts}")
        probe = best_probe(evidence.get("token_search"))
        if scan["verdict"] == "backdoored" and probe is not None:
            room = probe.get("collapse_gain")
            room_text = "" if room is None else f" ({score_text(room)} of the reference's room)"
            console.print(f"best real-input probe: {esc(probe['text'])} ({esc(probe['placement'])}; collapse beyond "
                          f"the reference {score_text(probe['collapse_excess'])}{room_text}, "
                          f"shift {score_text(probe['shift'])})")
            print_lookalikes(console, [probe["text"]])
    for note in (f for c in report.checks for f in c["findings"] if f["rule"] == UNNAMED_CONSUMER):
        console.print(f"note: {esc(note['message'])}")
    findings = [(c["check"], f) for c in report.checks for f in c["findings"] if f["severity"] != "info"]
    for name, finding in findings:
        where = f" ({esc(finding['location'])})" if finding.get("location") else ""
        console.print(f"{esc(finding['severity'].upper())} {esc(name)}: {esc(finding['message'])}{where}")
    for check in report.checks:
        if check["status"] != "ran":
            console.print(f"{esc(check['check'])}: {esc(check['status'])}: {esc(check['reason'])}")
    console.print(f"\nreport: {esc(report.out_dir)}/report.json (for reviewers: report.html)")
