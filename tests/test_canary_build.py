"""A built-in canary's build: one thread whatever the caller's count, and the weights' digest in lab.json."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from amdet_audit.lab.canaries import Canary


def test_a_canary_builds_on_one_thread_and_records_its_weights(tmp_path: Path) -> None:
    threads_seen: list[int] = []

    def recipe(folder: Path, progress) -> None:
        threads_seen.append(torch.get_num_threads())
        save_file({"w": torch.arange(4.0)}, folder / "model.safetensors")
        (folder / "lab.json").write_text(json.dumps({"canary": "demo", "kind": "base"}), encoding="utf-8")

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        Canary("demo", "a demo", recipe).build(tmp_path, lambda *_: None)
        assert threads_seen == [1] and torch.get_num_threads() == 2  # the caller's count is restored
    finally:
        torch.set_num_threads(before)
    info = json.loads((tmp_path / "lab.json").read_text(encoding="utf-8"))
    digest = hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest()
    assert info == {"canary": "demo", "kind": "base", "build": {"threads": 1, "weights_sha256": digest}}
