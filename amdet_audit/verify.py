"""``amdet-audit verify``: map changed files to the model folders they belong to, and combine exit codes."""

from __future__ import annotations

from pathlib import Path

MODEL_SUFFIXES = (".safetensors", ".bin", ".pt", ".ckpt", ".json", ".txt", ".model")


def model_root(path: Path) -> Path | None:
    """The target a file belongs to: the nearest folder up with a model_index.json (a pipeline), else the
    file's folder when it holds a config.json, else a lone .safetensors file itself; None for other files."""
    path = path.resolve()
    if path.is_dir():
        return path
    if not path.is_file() or path.suffix not in MODEL_SUFFIXES:
        return None
    for parent in path.parents:
        if (parent / "model_index.json").is_file():
            return parent
        if parent == Path.cwd().resolve():
            break
    if (path.parent / "config.json").is_file():
        return path.parent
    return path if path.suffix == ".safetensors" else None


def holds_model(folder: Path) -> bool:
    """Whether a folder is a model target: a config.json, a model_index.json or a .safetensors file in it."""
    if any((folder / name).is_file() for name in ("config.json", "model_index.json")):
        return True
    return any(p.suffix == ".safetensors" and p.is_file() for p in folder.iterdir())


def unusable_path(paths: list[Path]) -> str | None:
    """Why the gate cannot judge ``paths`` (no path, a path that does not exist, a folder that holds no model),
    as one line; None when every path can be mapped. Files that belong to no model are fine: pre-commit passes
    every changed file that matches its pattern, models or not."""
    if not paths:
        return "no paths given: name model folders or files in them"
    for path in paths:
        if not path.exists():
            return f"{path}: no such file or folder"
        if path.is_dir() and not holds_model(path):
            return f"{path}: holds no model (no config.json, model_index.json or .safetensors file)"
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
