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


@hookspec
def amdet_audit_target_images(component: dict[str, Any], target_feature: str, out_dir: str,
                              options: dict[str, str]) -> list[dict[str, str]] | None:
    """Render a scanned component's target feature (a safetensors file holding ``target_feature`` [T, D], the
    sequence a diffusion model's cross-attention would receive) into images written under ``out_dir``.

    Return ``[{"path": str, "caption": str}, ...]``, or None when the plugin is not configured for this run.
    ``options`` holds the ``--plugin-option KEY=VALUE`` pairs of the run.
    """
