"""A short Markdown summary of a report (for $GITHUB_STEP_SUMMARY and pull-request comments)."""

from __future__ import annotations

from typing import Any


def cell(value: object) -> str:
    """Text safe inside a Markdown table cell or inline code: no pipes, backticks or line breaks."""
    return str(value).replace("|", "\\|").replace("`", "'").replace("\n", " ")


def render_markdown(report: dict[str, Any]) -> str:
    """Render report.json content with templates/summary.md.j2."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    from amdet_audit.resources import bundled

    env = Environment(loader=FileSystemLoader(bundled("templates")), autoescape=False, undefined=StrictUndefined,
                      keep_trailing_newline=True)
    env.filters["cell"] = cell
    return env.get_template("summary.md.j2").render(**report)
