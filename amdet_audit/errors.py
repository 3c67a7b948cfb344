"""Every error amdet-audit raises on purpose derives from :class:`AmdetError`.

The CLI maps an ``AmdetError`` to a one-line message and exit code 2; anything else is a bug.
Each class also inherits the builtin a Python caller would expect (``FileNotFoundError``, ``ValueError``...).
"""

from __future__ import annotations

from typing import Any


class AmdetError(Exception):
    """Root of the errors amdet-audit raises for bad input or an audit it could not complete."""

    exit_code: int = 2


class UsageError(AmdetError, ValueError):
    """Raised when arguments contradict each other or name something unknown."""


class SourceNotFoundError(AmdetError, FileNotFoundError):
    """Raised when a target (path, repo id, revision, canary name) does not exist or is not cached offline."""


class NotATextEncoderError(AmdetError, ValueError):
    """Raised when a target exists but holds no supported text encoder (a vision model, an empty folder...)."""


class WeightsError(AmdetError, ValueError):
    """Raised when weight files are corrupt, truncated, or do not match the model's config."""


class PickleRefusedError(AmdetError, PermissionError):
    """Raised when only pickle weights (.bin, .pt, .ckpt) are present and --allow-pickle was not given."""


class TokenizerError(AmdetError, ValueError):
    """Raised when a text encoder's tokenizer files are missing or unreadable."""


class ConfigFileError(AmdetError, ValueError):
    """Raised when a config or policy file is not valid JSON/YAML or lacks required keys."""


class HubError(AmdetError, ConnectionError):
    """Raised when the model hub cannot be reached or answers with an error other than 'not found'."""


class NotCachedError(AmdetError, LookupError):
    """Raised by a cached-only gate when the target has no cached scan under the current policy's thresholds."""


class UnsafeFileError(AmdetError, PermissionError):
    """Raised when a file of the target is refused unread: it lies or links outside the target folder, is not a
    regular file (a FIFO, device or socket), or a name in the target would point outside it."""


class OutputError(AmdetError, FileExistsError):
    """Raised when an output (report folder, report file, evidence file, policy file) already exists in any
    form, a symlink included, or cannot be created: amdet-audit never overwrites or follows one."""


def one_line(error: BaseException, limit: int = 200) -> str:
    """An exception's message on one line (whitespace and line breaks collapsed), cut to ``limit`` characters;
    the exception's type name when it has no message."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown(value: Any, limit: int = 40) -> str:
    """A short repr of a value from an input file, for a message (long values cut)."""
    try:
        text = repr(value)
    except ValueError:  # an integer with more digits than Python prints
        return "a number too large"
    return text if len(text) <= limit else text[: limit - 3] + "..."
