"""The body of the GitHub Action (action.yml): scan each target, write step outputs and the job summary.

Reads its inputs from environment variables (set by action.yml), so it runs the same anywhere:
AMDET_TARGETS (whitespace or newline separated), AMDET_POLICY, AMDET_FAIL_ON (``policy``, a severity, or
``never``), AMDET_OUT (report folder), AMDET_REFERENCE (a TARGET, or ``none`` for reference-free scans),
AMDET_DEVICE, AMDET_CONSUMER (sd1, sdxl...; empty: from each pipeline), AMDET_SEARCH (auto, full, light; empty:
auto), AMDET_BASE (the model a LoRA target is applied onto), AMDET_EXIT_ZERO=1 (exit 0, leaving the gate to a
later step); GITHUB_OUTPUT and GITHUB_STEP_SUMMARY when GitHub provides them.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from amdet_audit.cli.verify import audit_each, gate_exit_code
from amdet_audit.errors import AmdetError
from amdet_audit.exit_codes import ExitCode
from amdet_audit.outputs import OutputError, make_new_dir, write_new
from amdet_audit.report.escaping import markdown, visible

VERDICT_ORDER = ("backdoored", "findings", "inconclusive", "clean")


def write_outputs(values: dict[str, str]) -> None:
    """Append ``name=value`` lines to $GITHUB_OUTPUT (printed when not on GitHub)."""
    path = os.environ.get("GITHUB_OUTPUT")
    lines = "".join(f"{k}={v}\n" for k, v in values.items())
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(lines)
    else:
        sys.stdout.write(lines)


def run(env: dict[str, str]) -> int:
    """Scan every target; return the job's exit code (0 under fail-on ``never``)."""
    from amdet_audit import api
    from amdet_audit.audit.policy import SEVERITIES, load_policy

    targets = env.get("AMDET_TARGETS", "").split()
    fail_on = env.get("AMDET_FAIL_ON", "policy") or "policy"
    if not targets:
        print("amdet-audit action: error: input 'targets' is empty", file=sys.stderr)
        return ExitCode.ERROR
    if fail_on not in ("policy", "never", *SEVERITIES):
        print(f"amdet-audit action: error: fail-on must be policy, never or a severity, not {fail_on!r}",
              file=sys.stderr)
        return ExitCode.ERROR
    policy_path = Path(env["AMDET_POLICY"]) if env.get("AMDET_POLICY") else None
    try:
        policy = load_policy(policy_path)
    except AmdetError as err:
        print(f"amdet-audit action: error: {err}", file=sys.stderr)
        return ExitCode.ERROR
    if fail_on in SEVERITIES:
        policy = replace(policy, fail_on=fail_on)
    root = Path(env.get("AMDET_OUT") or "amdet-audit-reports")
    root.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="run-", dir=root))  # a new folder per invocation: nothing is overwritten
    reference = env.get("AMDET_REFERENCE") or None

    def folder_of(i: int, target: str) -> Path:
        return out / f"{i:02d}-{''.join(c if c.isalnum() or c in '-_.' else '-' for c in target)[:60]}"

    def options_for(i: int, target: str) -> api.ScanOptions:
        return api.ScanOptions(reference=None if reference == "none" else reference,
                               reference_free=reference == "none", device=env.get("AMDET_DEVICE") or "cpu",
                               out=folder_of(i, target), policy=policy, argv=["scan", target],
                               consumer=env.get("AMDET_CONSUMER") or None, search=env.get("AMDET_SEARCH") or "auto")

    codes, labels, summaries = [], [], []
    sources = api.SourceOptions(base=env.get("AMDET_BASE") or None)
    for i, outcome in enumerate(audit_each(targets, options_for, sources)):
        folder = folder_of(i, outcome.target)
        if outcome.error is not None:
            record_error(outcome.target, outcome.error, folder)
        else:
            print(visible(f"{outcome.target}: {outcome.label} (exit {outcome.exit_code})"))
        codes.append(outcome.exit_code)
        labels.append(outcome.label)
        md = folder / "report.md"
        summaries.append(md.read_text(encoding="utf-8") if md.is_file()
                         else f"## amdet-audit: {markdown(outcome.target)}: {outcome.label}\n")
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as handle:
            handle.write("\n".join(summaries))
    code = int(gate_exit_code(codes))  # a plain int: str() of an IntEnum member is its name before Python 3.11
    verdict = min(labels, key=lambda v: VERDICT_ORDER.index(v) if v in VERDICT_ORDER else 0)
    write_outputs({"verdict": verdict, "exit-code": str(code), "report-dir": str(out)})
    return ExitCode.PASS if fail_on == "never" or env.get("AMDET_EXIT_ZERO") == "1" else code


def record_error(target: str, err: AmdetError, folder: Path) -> None:
    """Say why ``target`` could not be audited, on stderr and as error.json in its report folder."""
    import json

    print(visible(f"{target}: error: {err}"), file=sys.stderr)
    try:
        if not folder.exists():
            make_new_dir(folder)
        write_new(folder / "error.json", json.dumps({"target": target, "error": str(err)}))
    except OutputError as exc:
        print(visible(f"{target}: error.json not written: {exc}"), file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(run(dict(os.environ)))
