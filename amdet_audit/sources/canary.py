"""``canary:NAME``: small encoders the tool makes itself on first use, cached per tool version.

The product does not know how a canary is made: builders are registered in the entry-point group
``amdet_audit.canaries`` (name -> an object with ``description`` and ``build(folder, progress)``); the lab
registers the built-in ones (:mod:`amdet_audit.lab.canaries`). A build runs in a private temporary folder that
is renamed into place when complete, so two processes building the same canary at once cannot corrupt it: the
first rename wins and the other build is discarded.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Protocol

from amdet_audit import __version__
from amdet_audit.cache import build_lock, store
from amdet_audit.errors import SourceNotFoundError, UsageError
from amdet_audit.progress import StderrProgress
from amdet_audit.sources.model import ResolvedTarget

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
GROUP = "amdet_audit.canaries"


class CanaryBuilder(Protocol):
    """What a registered canary provides."""

    description: str

    def build(self, folder: Path, progress: Progress) -> None:
        """Make the encoder in the empty ``folder``."""


def registered_canaries() -> dict[str, list[EntryPoint]]:
    """The registered canaries by name, not loaded; a name two packages register has two entries."""
    found: dict[str, list[EntryPoint]] = {}
    for ep in sorted(entry_points(group=GROUP), key=lambda ep: ep.value):
        found.setdefault(ep.name, []).append(ep)
    return found


def load_builder(name: str, eps: list[EntryPoint]) -> CanaryBuilder:
    """The builder registered for ``name`` (refused, as a one-line error, when it cannot be imported or has no
    ``build``)."""
    try:
        builder = eps[0].load()
    except Exception as err:  # a broken registration must not crash with a traceback
        raise UsageError(f"canary:{name}: its builder {eps[0].value} could not be loaded: {err}") from err
    if not callable(getattr(builder, "build", None)):
        raise UsageError(f"canary:{name}: {eps[0].value} has no build(folder, progress)")
    return builder


def canary_dir(name: str) -> Path:
    """Cache folder of canary ``name`` for this tool version."""
    return store("canaries") / __version__ / name


def ensure_canary(name: str, progress: Progress | None = None) -> Path:
    """Return the folder of canary ``name``, building it first if it is not cached."""
    registered = registered_canaries()
    if name not in registered:
        raise SourceNotFoundError(f"canary:{name}: unknown canary; known: {', '.join(sorted(registered)) or 'none'}")
    if len(registered[name]) > 1:  # even when built before: which builder made the cached one is unclear
        raise UsageError(f"canary:{name} is registered twice ({GROUP}: "
                         f"{', '.join(ep.value for ep in registered[name])}); uninstall one of them")
    final = canary_dir(name)
    if final.is_dir():
        return final
    with build_lock(final.parent / f".{name}.lock", on_wait=lambda: waiting(name)):
        if not final.is_dir():  # another process may have built it while we waited
            build_into(load_builder(name, registered[name]), name, final, progress)
    return final


def waiting(name: str) -> None:
    """Say on stderr that another process is building the same canary (its build takes minutes)."""
    print(f"amdet-audit: waiting for another process that is building canary:{name}", file=sys.stderr, flush=True)


def build_into(builder: CanaryBuilder, name: str, final: Path, progress: Progress | None) -> None:
    """Build canary ``name`` in a private temporary folder and rename it to ``final``."""
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=final.parent))
    try:
        log.info("building canary:%s in %s", name, tmp)
        shown = progress or default_progress(name)
        try:
            builder.build(tmp, shown)
        finally:
            if isinstance(shown, StderrProgress):
                shown.close()
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not the lost race: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def default_progress(name: str) -> StderrProgress:
    """A rich progress bar on stderr (silent when stderr is not a terminal)."""
    from amdet_audit.progress import stderr_progress

    return stderr_progress(f"building canary:{name}")


def resolve_canary(name: str, *, input: str) -> ResolvedTarget:
    """Resolve ``canary:NAME`` to its cached model folder, building it on first use."""
    from amdet_audit.sources.local import inspect_folder

    folder = ensure_canary(name)
    resolved = inspect_folder(folder, input=input, kind="canary")
    resolved.notes.append(f"built-in canary encoder, cached at {folder}")
    return resolved
