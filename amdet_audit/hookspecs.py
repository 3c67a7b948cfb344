"""The plugin contract (pluggy project ``amdet_audit``).

A plugin is a module or object with ``@hookimpl`` functions, registered through the entry-point group
``amdet_audit``. Built-in checks use the same hooks (see :mod:`amdet_audit.checks.builtin`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from amdet_audit.checks.base import Check

PROJECT = "amdet_audit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def amdet_audit_register_checks(register: Callable[[Check], None]) -> None:
    """Call ``register(check)`` for every check the plugin provides (see :class:`amdet_audit.checks.base.Check`)."""


@hookspec
def amdet_audit_report_sections(report: dict[str, Any]) -> dict[str, Any] | None:
    """Return an extra report section ``{"title": str, "body": str, "data": ...}`` for a finished report.json
    document, or None."""
