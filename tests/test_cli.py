"""The CLI shell: version, help, describe, and every bad input -> one line on stderr, exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import save_file

from amdet_audit import __version__


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``folder`` with its size and mtime, to prove nothing was written."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_version_and_help(run_cli) -> None:
    assert run_cli("--version").stdout.strip() == f"amdet-audit {__version__}"
    helped = run_cli("--help")
    assert helped.exit_code == 0 and "scan" in helped.stdout and "lab" in helped.stdout
    assert "--install-completion" in helped.stdout


def test_help_does_not_import_torch() -> None:
    code = "import sys; from amdet_audit.cli import make_app; make_app(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_inspect_describes_a_local_folder(run_cli, tiny_clip: Path) -> None:
    result = run_cli("inspect", tiny_clip, "--format", "json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["encoders"]["model"]["architecture"] == "CLIPTextModel"
    assert data["encoders"]["model"]["hidden_size"] == 32
    assert any(f["path"] == "model.safetensors" and len(f["sha256"]) == 64 for f in data["target"]["files"])


def test_inspect_describes_both_pipeline_encoders_as_a_table(run_cli, tiny_pipeline: Path) -> None:
    result = run_cli("inspect", tiny_pipeline)
    assert result.exit_code == 0, result.stderr
    assert "text_encoder_2" in result.stdout and "CLIPTextModelWithProjection" in result.stdout
    assert result.stdout.count("hidden[-2]") == 2  # an SDXL pipeline feeds its UNet hidden_states[-2] of both
    assert "consumer sdxl: Stable Diffusion XL" in result.stdout


def test_nonexistent_path(run_cli, tmp_path: Path) -> None:
    assert_one_line_error(run_cli("scan", tmp_path / "missing"), "no such file or folder")


def test_empty_folder(run_cli, tmp_path: Path) -> None:
    assert_one_line_error(run_cli("scan", tmp_path), "no config.json")


def test_vision_model_is_not_a_text_encoder(run_cli, tmp_path: Path) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=16)
    CLIPVisionModel(config).save_pretrained(tmp_path / "vision")
    before = snapshot(tmp_path)
    assert_one_line_error(run_cli("scan", tmp_path / "vision"), "not a text encoder")
    assert snapshot(tmp_path) == before


def test_truncated_safetensors(run_cli, tiny_clip: Path, copy_of) -> None:
    folder = copy_of(tiny_clip)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    before = snapshot(folder)
    assert_one_line_error(run_cli("scan", folder), "model.safetensors")
    assert snapshot(folder) == before


def test_garbage_safetensors(run_cli, tiny_clip: Path, copy_of) -> None:
    folder = copy_of(tiny_clip)
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    assert_one_line_error(run_cli("scan", folder), "model.safetensors")


def test_config_weights_shape_mismatch(run_cli, tiny_clip: Path, copy_of) -> None:
    folder = copy_of(tiny_clip)
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 2 * config["intermediate_size"]
    (folder / "config.json").write_text(json.dumps(config))
    assert_one_line_error(run_cli("scan", folder), "fc1")


def test_missing_tensor(run_cli, tiny_clip: Path, copy_of) -> None:
    from safetensors.torch import load_file

    folder = copy_of(tiny_clip)
    tensors = load_file(folder / "model.safetensors")
    tensors.pop(next(k for k in tensors if k.endswith("final_layer_norm.weight")))
    save_file(tensors, folder / "model.safetensors")
    assert_one_line_error(run_cli("scan", folder), "final_layer_norm.weight")


def test_missing_tokenizer(run_cli, tiny_clip: Path, copy_of) -> None:
    folder = copy_of(tiny_clip)
    (folder / "vocab.json").unlink()
    assert_one_line_error(run_cli("scan", folder), "tokenizer")


def test_invalid_json_config(run_cli, tiny_clip: Path, copy_of) -> None:
    folder = copy_of(tiny_clip)
    (folder / "config.json").write_text('{"model_type": "clip_text_model",')
    assert_one_line_error(run_cli("scan", folder), "config.json", "not valid JSON")


def test_pickle_weights_without_allow_pickle(run_cli, tiny_clip: Path, copy_of) -> None:
    folder = copy_of(tiny_clip)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    assert_one_line_error(run_cli("scan", folder), "--allow-pickle")


def test_single_file_without_config(run_cli, tiny_clip: Path, tmp_path: Path) -> None:
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes((tiny_clip / "model.safetensors").read_bytes())
    assert_one_line_error(run_cli("scan", lone), "--config")


def test_unknown_option_and_format(run_cli, tiny_clip: Path) -> None:
    assert run_cli("scan", tiny_clip, "--bogus").exit_code == 2
    assert_one_line_error(run_cli("scan", tiny_clip, "--format", "xml"), "--format")


def test_unknown_canary(run_cli) -> None:
    assert_one_line_error(run_cli("scan", "canary:nope"), "unknown canary")


def test_unknown_repo_offline_says_not_in_cache(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "amdet_audit", "scan", "someorg/no-such-encoder"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "not in the local cache" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("debug", ["", "1"])
def test_internal_errors_are_one_line_unless_debugging(debug: str, tmp_path: Path) -> None:
    code = ("import sys; import amdet_audit.api as api; "
            "api.describe = lambda *a, **k: (_ for _ in ()).throw(RuntimeError('boom')); "
            "sys.argv = ['amdet-audit', 'inspect', '.']; from amdet_audit.cli import main; main()")
    env = {**os.environ, "AMDET_AUDIT_DEBUG": debug}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode in (1, 2)
    if debug:
        assert "Traceback" in out.stderr
    else:
        assert out.returncode == 2 and "internal error: RuntimeError: boom" in out.stderr
        assert "Traceback" not in out.stderr
