"""The process exit codes, the same in every output format."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What the ``amdet-audit`` process returns."""

    PASS = 0  # audit completed, nothing at or above the failure threshold
    FAIL = 1  # audit completed, findings at or above the failure threshold (e.g. a backdoor)
    ERROR = 2  # could not complete: bad input, usage, error, inconclusive, nothing scanned
    INTERRUPTED = 130  # stopped by Ctrl-C
