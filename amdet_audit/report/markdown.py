"""A short Markdown summary of a report (for $GITHUB_STEP_SUMMARY and pull-request comments).

Every value the template prints passes through :func:`amdet_audit.report.escaping.markdown` (the
environment's ``finalize``), so no model string (token, prompt, file or component name, message) can add
HTML, links, images or formatting to the summary.
"""

from __future__ import annotations

from typing import Any

from amdet_audit.report.escaping import markdown


def finalize(value: object) -> str:
    """Every printed value escaped for Markdown; None prints as nothing."""
    return "" if value is None else markdown(value)


#: the prefix of a scan check's name -> the rule it belongs to (a rule fires when all its conditions hold)
RULES = {"target": "target", "divergence": "divergence", "token_collapse": "token-collapse",
         "token_shift": "token-shift"}


def rule_groups(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The scan's conditions grouped by rule: ``{"rule", "fired", "decides", "state", "checks"}``, each check with
    its ``condition`` (its name without the rule's prefix). A rule fired when every one of its conditions held;
    one that does not decide on this tower (``decides`` false in report.json) is stated as reported only, so
    that no reader takes it for a reason of the verdict."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for check in checks:
        prefix = check["name"].split(".")[0]
        groups.setdefault(RULES.get(prefix, prefix), []).append({**check,
                                                                  "condition": check["name"].split(".", 1)[-1]})
    out = []
    for rule, group in groups.items():
        fired, decides = all(c["flags"] for c in group), all(c.get("decides", True) for c in group)
        state = ("fired" if fired else "not fired") if decides else (
            "held, reported only" if fired else "not held, reported only")
        out.append({"rule": rule, "fired": fired and decides, "decides": decides, "state": state, "checks": group})
    return out


def add_token_filters(env: Any) -> None:
    """Template filters for token evidence: ``text`` (the decoded text of a token row, its raw vocabulary string
    for reports written before rows carried one), ``character_names`` (non-ASCII characters named) and
    ``score`` (a number, or n/a where report.json holds null for a non-finite one), ``rule_groups`` (the scan's
    conditions grouped by rule, see :func:`rule_groups`)."""
    from amdet_audit.tokenization import character_names, shown_text

    env.filters["text"] = shown_text
    env.filters["texts"] = lambda rows, n: [shown_text(t) for row in rows for t in row[:n]]
    env.filters["character_names"] = lambda texts: ", ".join(character_names("".join(texts)))
    env.filters["score"] = lambda value, fmt="%.3f": "n/a" if value is None else fmt % value
    env.filters["rule_groups"] = rule_groups


def render_markdown(report: dict[str, Any]) -> str:
    """Render report.json content with templates/summary.md.j2."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    from amdet_audit.resources import bundled

    env = Environment(loader=FileSystemLoader(bundled("templates")), autoescape=False, undefined=StrictUndefined,
                      keep_trailing_newline=True, finalize=finalize)
    add_token_filters(env)
    return env.get_template("summary.md.j2").render(**report)
