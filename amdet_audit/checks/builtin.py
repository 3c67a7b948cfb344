"""The built-in checks, registered through the same pluggy hook that third-party plugins implement."""

from __future__ import annotations

from collections.abc import Callable

from amdet_audit.checks.assimilation import AssimilationCheck
from amdet_audit.checks.base import Check
from amdet_audit.checks.hygiene import RemoteCodeCheck, TokenizerCheck
from amdet_audit.checks.serialization import SerializationCheck
from amdet_audit.checks.weights_diff import WeightsDiffCheck
from amdet_audit.hookspecs import hookimpl

BUILTIN_CHECKS: tuple[Check, ...] = (AssimilationCheck(), SerializationCheck(), RemoteCodeCheck(), TokenizerCheck(),
                                     WeightsDiffCheck())


@hookimpl
def amdet_audit_register_checks(register: Callable[[Check], None]) -> None:
    """Register the built-in checks."""
    for check in BUILTIN_CHECKS:
        register(check)
