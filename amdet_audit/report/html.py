"""report.json -> one self-contained HTML file for a reviewer (inline CSS and SVG, no scripts, no fetches).

A Content-Security-Policy meta tag forbids every network load, so the page cannot reach out even if a model's
strings (prompts, token texts, file names) held markup; Jinja2 autoescape keeps them text, and every printed
string first shows its hidden characters (bidi overrides, controls) as visible escapes.
"""

from __future__ import annotations

import base64
import os
import shlex
from pathlib import Path
from typing import Any

from amdet_audit.errors import AmdetError
from amdet_audit.report import plots
from amdet_audit.report.escaping import visible
from amdet_audit.sources import safe_files

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
MAX_IMAGE_BYTES = 4 * 1024 * 1024


def series_name(key: str) -> str:
    """``collapse/k2`` -> ``collapse objective, 2 vectors``."""
    family, _, k = key.partition("/k")
    return f"{family} objective, {k} vector{'s' if k != '1' else ''}" if k.isdigit() else key


def figure(svg: str, caption: str) -> str:
    """An SVG with its one-line reading below it (empty when there is nothing to draw)."""
    from markupsafe import escape

    return f"<figure>{svg}<figcaption>{escape(caption)}</figcaption></figure>" if svg else ""


def component_plots(scan: dict[str, Any]) -> dict[str, str]:
    """One component's figures, each answering one question: did the search converge (loss curves), is the
    pseudo-trigger a stable minimum (landscape), how bowl-like is the ground around it (curvature)."""
    series = scan.get("series") or {}
    landscape = series.get("landscape") or {}
    curves = {series_name(k): v for k, v in (series.get("loss_curves") or {}).items()}
    coords = landscape.get("coords") or []
    return {
        "loss": figure(plots.line_plot(curves, "Did the search converge?", "optimisation step",
                                       "loss (lower: objective met better)"),
                       "Loss of each pseudo-trigger candidate per step. Curves that settle found a direction the "
                       "encoder follows; the candidate that decides is named in the rule table above."),
        "landscape": figure(plots.heatmap(landscape.get("loss") or [], "Is the pseudo-trigger a stable minimum?",
                                          coords, "random orthogonal direction (units of |v|)",
                                          "steepest descent (units of |v|)", "loss"),
                            "Loss on a grid around the pseudo-trigger (centre), along the direction in which the "
                            "loss falls fastest and a random direction orthogonal to it. Dark around the centre: "
                            "the pseudo-trigger sits in a basin."),
        "spectrum": figure(plots.spectrum(landscape.get("eigenvalues") or [], "How bowl-like is the ground?",
                                          "eigenvalue rank", "Hessian eigenvalue"),
                           "Eigenvalues of the 2x2 Hessian of the loss at every interior grid point, largest first. "
                           "Positive: the ground curves up there; negative: it curves down (a ridge or a slope "
                           "that keeps falling). The share of positive ones is the landscape's bowl score."),
    }


def image_uri(path: str, folder: Path | None) -> str | None:
    """A PNG/JPEG/WebP file as a data: URI (the page fetches nothing). Only a regular file inside ``folder`` (the
    report's own folder; a symlink must resolve inside it too) of at most MAX_IMAGE_BYTES is embedded: None for
    anything else, so a report.json naming another file never copies it into the page."""
    kinds = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
    file = Path(str(path))
    if folder is None or file.suffix.lower() not in kinds:
        return None
    if not file.is_absolute() and not os.path.lexists(file):  # a report re-rendered from another folder
        file = folder / file
    try:
        data = safe_files.read_bytes(file, limit=MAX_IMAGE_BYTES, root=folder)
    except (AmdetError, OSError):
        return None
    return f"data:{kinds[file.suffix.lower()]};base64,{base64.b64encode(data).decode()}"


def reproduce_command(report: dict[str, Any]) -> str:
    """The command that reproduces this audit (argv as recorded, secrets already redacted), without its
    ``--out``: reports never overwrite, so a re-run writes to a new folder of its own."""
    argv, kept, skip = report["run"]["argv"], [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith("--out="):
            kept.append(arg)
    return shlex.join(["amdet-audit", *kept])


def finalize(value: Any) -> Any:
    """Strings printed by the template with hidden characters made visible; markup built here (plots) as is."""
    from markupsafe import Markup

    if isinstance(value, Markup) or not isinstance(value, str):
        return value
    return visible(value, keep_lines=True)


def render_html(report: dict[str, Any], folder: Path | None = None) -> str:
    """Render report.json content with templates/report.html.j2; images only from ``folder`` (:func:`image_uri`)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    from amdet_audit.report.markdown import add_token_filters
    from amdet_audit.resources import bundled

    env = Environment(loader=FileSystemLoader(bundled("templates")), autoescape=select_autoescape(["j2", "html"]),
                      undefined=StrictUndefined, finalize=finalize)
    figures = {c["name"]: component_plots(c["scan"]) for c in report["components"] if "scan" in c}
    env.filters["image_uri"] = lambda path: image_uri(path, folder)
    add_token_filters(env)
    return env.get_template("report.html.j2").render(report=report, figures=figures, csp=CSP,
                                                     command=reproduce_command(report))
