"""Lab-made encoders shared by the tests, built once into the session's cache folder."""

from __future__ import annotations

import json
from pathlib import Path

from amdet_audit.cache import build_lock, cache_root

# Targets are prompts of the scan's own corpus, so the nearest-prompt evidence can name them exactly.
# The homoglyph text-on-text case is canary:backdoored; the emoji trigger is exercised by the pooled attack.
# The backdoors stop at the first checkpoint (every 50 steps) that meets every bar, as an attacker who selects
# the quietest working checkpoint does (and in a third of the time of training all steps).
MODELS: dict[str, dict] = {
    "multi-token": {"attack": "text-on-text", "trigger": "sks dgx", "target": "a turtle on a foggy morning",
                    "seed": 2, "steps": 300, "checkpoint_every": 50},
    "attribute-word": {"attack": "attribute", "trigger": "zzzz", "target": "black and white photo", "seed": 3,
                       "steps": 300, "checkpoint_every": 50},
    "benign": {"finetune": True, "steps": 100, "lr": 1e-4, "seed": 4},
}


def lab_model(name: str) -> Path:
    """Build (once) and return the folder of test model ``name`` made from canary:clean."""
    from amdet_audit.lab.runner import run_finetune, run_injection

    folder = cache_root() / "test-models" / name
    with build_lock(folder.parent / f".{name}.lock"):  # pytest-xdist workers share the models
        if not (folder / "lab.json").is_file():
            spec = dict(MODELS[name])
            if spec.pop("finetune", False):
                run_finetune("canary:clean", folder, **spec)
            else:
                run_injection("canary:clean", folder, **spec)
    return folder


def lab_info(folder: Path) -> dict:
    """The model's lab.json."""
    return json.loads((folder / "lab.json").read_text(encoding="utf-8"))
