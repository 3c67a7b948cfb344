"""Gating many targets (``amdet-audit verify``, the GitHub Action): map changed files to the model folders they
belong to, audit each in turn, and combine the exit codes."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from amdet_audit.errors import AmdetError

if TYPE_CHECKING:
    from amdet_audit.api import ScanOptions, SourceOptions
    from amdet_audit.report.model import AuditReport

#: files a consumer may unpickle (torch.load, pickle, joblib, numpy with allow_pickle) or run (custom model code)
RISKY_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".npy", ".npz", ".dat", ".data",
                  ".pkl.gz", ".py")
MODEL_SUFFIXES = (".safetensors", ".json", ".txt", ".model", *RISKY_SUFFIXES)


def model_root(path: Path) -> Path | None:
    """The target a file belongs to: the nearest folder up with a model_index.json (a pipeline), else the
    file's folder when it holds a config.json, else a lone .safetensors file itself. A pickle-like or Python
    file elsewhere belongs to the nearest folder up (the working folder at most) that holds a model. None for
    other files."""
    path = path.resolve()
    if path.is_dir():
        return path
    name = path.name.lower()
    if not path.is_file() or not name.endswith(MODEL_SUFFIXES):
        return None
    cwd = Path.cwd().resolve()
    for parent in path.parents:
        if (parent / "model_index.json").is_file():
            return parent
        if parent == cwd:
            break
    if (path.parent / "config.json").is_file():
        return path.parent
    if name.endswith(".safetensors"):
        return path
    return holder(path, cwd) if name.endswith(RISKY_SUFFIXES) else None


def holder(path: Path, cwd: Path) -> Path | None:
    """The nearest folder above ``path`` that holds a model, looking no higher than ``cwd`` when ``path`` lies in
    it (else no higher than its own folder); None when there is none."""
    parents = list(path.parents)
    if path.is_relative_to(cwd):
        parents = parents[:parents.index(cwd) + 1]
    else:
        parents = parents[:1]
    for parent in parents:
        try:
            if holds_model(parent):
                return parent
        except OSError:
            continue
    return None


def holds_model(folder: Path) -> bool:
    """Whether a folder is a model target: a config.json, a model_index.json or a .safetensors file in it."""
    if any((folder / name).is_file() for name in ("config.json", "model_index.json")):
        return True
    return any(p.suffix == ".safetensors" and p.is_file() for p in folder.iterdir())


def folder_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be gated (it holds no model, or cannot be listed), as one line; None when it can."""
    try:
        if holds_model(folder):
            return None
    except OSError as exc:
        return f"{folder}: cannot be listed ({exc.strerror or exc})"
    return f"{folder}: holds no model (no config.json, model_index.json or .safetensors file)"


def unusable_path(paths: list[Path]) -> str | None:
    """Why the gate cannot judge ``paths`` (no path, a path that does not exist, a folder that holds no model),
    as one line; None when every path can be mapped. Files that belong to no model are fine: pre-commit passes
    every changed file that matches its pattern, models or not."""
    if not paths:
        return "no paths given: name model folders or files in them"
    for path in paths:
        if not path.exists():
            return f"{path}: no such file or folder"
        problem = folder_problem(path) if path.is_dir() else None
        if problem is not None:
            return problem
    return None


def targets_of(paths: list[Path]) -> list[Path]:
    """The distinct targets of ``paths``, in the order first seen (relative to the cwd when inside it)."""
    seen: list[Path] = []
    cwd = Path.cwd().resolve()
    for path in paths:
        root = model_root(path)
        if root is None:
            continue
        root = root.relative_to(cwd) if root.is_relative_to(cwd) else root
        if root not in seen:
            seen.append(root)
    return seen


def gate_exit_code(codes: list[int]) -> int:
    """A failure (1) outranks could-not-complete (2); all passes give 0."""
    return 1 if 1 in codes else max(codes, default=0)


@dataclass
class Outcome:
    """One target's audit in a batch: exit code and verdict label, with the report, or the error that stopped it."""

    target: str
    exit_code: int
    label: str
    report: AuditReport | None = None
    error: AmdetError | None = None


def audit_each(targets: Sequence[str], options_for: Callable[[int, str], ScanOptions],
               sources: SourceOptions | None = None) -> Iterator[Outcome]:
    """Audit every target in turn with ``options_for(index, target)``; a target that cannot be audited is an
    error outcome (its exit code, label inconclusive) and the others still run."""
    from amdet_audit import api

    for i, target in enumerate(targets):
        try:
            report = api.scan(target, sources=sources, options=options_for(i, target))
        except AmdetError as err:
            yield Outcome(target, err.exit_code, "inconclusive", error=err)
            continue
        yield Outcome(target, report.exit_code, report.verdict["label"], report=report)
