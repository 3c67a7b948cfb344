"""A fleet's files: fleet.json (the source of truth, rewritten whole after every finished target so that an
interrupted fleet leaves a consistent one), and its renderings fleet.md, fleet.sarif (every target's SARIF run
in one log) and fleet.html (one self-contained page: counts, a sortable table, links to each report.html).

Every string from a target (names, errors) is escaped for the medium it lands in: Jinja2 autoescape in HTML,
:func:`amdet_audit.report.escaping.markdown` in Markdown.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from amdet_audit.report.escaping import json_text, markdown, strict_json

SCHEMA = Path(__file__).with_name("fleet.schema.json")
FLEET_SCHEMA_VERSION = "1.0"
#: sorts the table by a clicked column header; the page allows this script alone (by its hash), nothing else
SORT_SCRIPT = """
document.querySelectorAll("th[data-sort]").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0], rows = Array.prototype.slice.call(body.rows);
    var up = th.getAttribute("aria-sort") !== "ascending";
    rows.sort(function (a, b) {
      var x = a.cells[col].getAttribute("data-key") || a.cells[col].textContent;
      var y = b.cells[col].getAttribute("data-key") || b.cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return up ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    th.parentNode.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", up ? "ascending" : "descending");
  });
});
"""


def counts(records: list[dict[str, Any]]) -> dict[str, int]:
    """How many targets passed (0), failed the policy (1), could not complete (2), or have not finished."""
    finished = [r for r in records if r.get("status") in ("done", "error")]
    return {"total": len(records), "finished": len(finished),
            "passed": sum(r.get("exit_code") == 0 for r in finished),
            "failed": sum(r.get("exit_code") == 1 for r in finished),
            "errors": sum(r.get("exit_code") not in (0, 1) for r in finished),
            "pending": len(records) - len(finished)}


def fleet_exit_code(records: list[dict[str, Any]]) -> int:
    """0 every target passed, 1 any failed the policy, else 2 when any could not complete (or did not run)."""
    tally = counts(records)
    if tally["failed"]:
        return 1
    return 2 if tally["errors"] or tally["pending"] else 0


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` (a file of this fleet) in one step: a reader never sees half a file."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_state(out: Path, document: dict[str, Any]) -> None:
    """fleet.json, with the counts and exit code of its records."""
    document["counts"] = counts(document["targets"])
    document["exit_code"] = fleet_exit_code(document["targets"])
    write_atomic(out / "fleet.json", json_text(strict_json(document)[0]) + "\n")


def render_md(document: dict[str, Any]) -> str:
    """fleet.md: the counts and one row per target."""
    c = document["counts"]
    lines = [f"# amdet-audit fleet: {c['failed']} failed, {c['passed']} passed, {c['errors']} could not complete"
             + (f", {c['pending']} not finished" if c["pending"] else ""), "",
             f"Exit code {document['exit_code']}; {c['total']} targets; executor: {markdown(document['executor'])}.",
             "", "| target | verdict | exit | seconds | report |", "|---|---|---|---|---|"]
    for r in document["targets"]:
        done = r.get("status") == "done"
        report = f"[report.md]({r['folder']}/report.md)" if done else markdown(r.get("error") or "")
        lines.append(f"| {markdown(r['target'])} | {markdown(r.get('label') or r.get('status'))} | "
                     f"{r.get('exit_code', '')} | {r.get('seconds', '')} | {report} |")
    return "\n".join(lines) + "\n"


def merge_sarif(out: Path, document: dict[str, Any]) -> str:
    """fleet.sarif: one SARIF 2.1.0 log holding each finished target's run."""
    runs = []
    for r in document["targets"]:
        path = out / r["folder"] / "report.sarif" if r.get("folder") else None
        if r.get("status") == "done" and path is not None and path.is_file():
            runs.extend(json.loads(path.read_text(encoding="utf-8")).get("runs", []))
    return json_text({"$schema": "https://json.schemastore.org/sarif-2.1.0.json", "version": "2.1.0",
                      "runs": runs}) + "\n"


def render_html(document: dict[str, Any]) -> str:
    """fleet.html from templates/fleet.html.j2: no request leaves the page; only the sorting script runs."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    from amdet_audit.resources import bundled

    digest = base64.b64encode(hashlib.sha256(SORT_SCRIPT.encode()).digest()).decode()
    csp = (f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; "
           "base-uri 'none'; form-action 'none'")
    env = Environment(loader=FileSystemLoader(bundled("templates")), autoescape=select_autoescape(["j2", "html"]),
                      undefined=StrictUndefined)
    return env.get_template("fleet.html.j2").render(fleet=document, csp=csp, script=SORT_SCRIPT)


def write_renderings(out: Path, document: dict[str, Any]) -> None:
    """fleet.md, fleet.sarif and fleet.html beside fleet.json (each replaced whole)."""
    write_atomic(out / "fleet.md", render_md(document))
    write_atomic(out / "fleet.sarif", merge_sarif(out, document))
    write_atomic(out / "fleet.html", render_html(document))
