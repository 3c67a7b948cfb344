"""report.json -> one self-contained HTML file for a reviewer (inline CSS and SVG, no scripts, no fetches).

A Content-Security-Policy meta tag forbids every network load, so the page cannot reach out even if a model's
strings (prompts, token texts, file names) held markup; Jinja2 autoescape keeps them text.
"""

from __future__ import annotations

import shlex
from typing import Any

from amdet_audit.report import plots

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def component_plots(scan: dict[str, Any]) -> dict[str, str]:
    """Inline SVGs of one component's scan: loss curves, loss landscape, Hessian spectrum."""
    series = scan.get("series") or {}
    landscape = series.get("landscape") or {}
    return {
        "loss": plots.line_plot(series.get("loss_curves") or {}, "inversion loss", "step", "loss"),
        "landscape": plots.heatmap(landscape.get("loss") or [], "loss landscape around the pseudo-trigger"),
        "spectrum": plots.spectrum(landscape.get("eigenvalues") or [], "Hessian eigenvalue spectrum (landscape)"),
    }


def reproduce_command(report: dict[str, Any]) -> str:
    """The command that reproduces this audit (argv as recorded, secrets already redacted)."""
    return shlex.join(["amdet-audit", *report["run"]["argv"]])


def render_html(report: dict[str, Any]) -> str:
    """Render report.json content with templates/report.html.j2."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    from amdet_audit.resources import bundled

    env = Environment(loader=FileSystemLoader(bundled("templates")), autoescape=select_autoescape(["j2", "html"]),
                      undefined=StrictUndefined)
    figures = {c["name"]: component_plots(c["scan"]) for c in report["components"] if "scan" in c}
    return env.get_template("report.html.j2").render(report=report, figures=figures, csp=CSP,
                                                     command=reproduce_command(report))
