"""The plugin manager: built-in checks plus third-party plugins from the entry-point group ``amdet_audit``."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points

import pluggy

from amdet_audit import __version__, hookspecs
from amdet_audit.checks.base import Check, CheckContext, CheckResult
from amdet_audit.errors import UsageError

BUILTIN = "builtin"


@dataclass(frozen=True)
class PluginInfo:
    """A plugin as ``plugins list`` shows it."""

    name: str
    version: str
    distribution: str
    checks: tuple[str, ...]


def installed_entry_points() -> list:
    """Entry points of the ``amdet_audit`` group (one per third-party plugin)."""
    return sorted(entry_points(group=hookspecs.PROJECT), key=lambda ep: ep.name)


def make_manager(select: list[str] | None = None, *, third_party: bool = True) -> pluggy.PluginManager:
    """A manager with the built-in checks and, unless ``third_party`` is False, the installed plugins.

    select: only these third-party plugins (by entry-point name); an unknown name is a UsageError.
    """
    from amdet_audit.checks import builtin

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(builtin, name=BUILTIN)
    if not third_party:
        return pm
    available = {ep.name: ep for ep in installed_entry_points()}
    unknown = sorted(set(select or []) - set(available))
    if unknown:
        raise UsageError(f"--plugins: not installed: {', '.join(unknown)}; installed: "
                         f"{', '.join(sorted(available)) or 'none'}")
    for name, ep in available.items():
        if select is not None and name not in select:
            continue
        try:
            pm.register(ep.load(), name=name)
        except Exception as err:  # a broken plugin must not crash the audit; it is reported instead
            raise UsageError(f"plugin {name} ({ep.value}) failed to load: {err}") from err
    return pm


def registered_checks(pm: pluggy.PluginManager) -> list[tuple[str, Check]]:
    """(plugin name, check) for every registered check; a duplicate check id is a UsageError."""
    out: list[tuple[str, Check]] = []
    seen: dict[str, str] = {}
    for plugin_name, plugin in pm.list_name_plugin():
        impl = getattr(plugin, "amdet_audit_register_checks", None)
        if impl is None:
            continue
        found: list[Check] = []
        impl(register=found.append)
        for check in found:
            if check.id in seen:
                raise UsageError(f"check id {check.id!r} registered by both {seen[check.id]} and {plugin_name}")
            seen[check.id] = plugin_name
            out.append((plugin_name, check))
    return out


def check_ids(pm: pluggy.PluginManager) -> list[str]:
    """The ids of every registered check."""
    return [check.id for _, check in registered_checks(pm)]


def run_checks(pm: pluggy.PluginManager, context: CheckContext, only: list[str] | None = None) -> list[CheckResult]:
    """Run every registered check (those without an id in ``only`` are recorded as skipped); a check that
    raises is recorded as an error, never as a pass."""
    results = []
    for plugin_name, check in registered_checks(pm):
        if only is not None and check.id not in only:
            result = CheckResult(check=check.id, version=getattr(check, "version", "?"), status="skipped",
                                 reason="not selected (--checks)")
            result.plugin = plugin_name
            results.append(result)
            continue
        try:
            result = check.run(context)
        except Exception as err:  # third-party code: contain it, report it
            result = CheckResult(check=check.id, version=getattr(check, "version", "?"), status="error",
                                 reason=f"{type(err).__name__}: {err}")
        result.plugin = plugin_name
        results.append(result)
    return results


def plugin_infos(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """What ``plugins list`` shows: each registered plugin, its distribution and version, and its checks."""
    by_plugin: dict[str, list[str]] = {}
    for plugin_name, check in registered_checks(pm):
        by_plugin.setdefault(plugin_name, []).append(check.id)
    dists = {ep.name: ep.dist for ep in installed_entry_points()}
    infos = []
    for name, _ in pm.list_name_plugin():
        dist = dists.get(name)
        infos.append(PluginInfo(
            name=name, version=__version__ if name == BUILTIN else (dist.version if dist else "?"),
            distribution="amdet-audit" if name == BUILTIN else (dist.name if dist else "?"),
            checks=tuple(by_plugin.get(name, ()))))
    return sorted(infos, key=lambda p: (p.name != BUILTIN, p.name))
