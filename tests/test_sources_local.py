"""Local targets: model folder, diffusers pipeline folder, single safetensors file."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from amdet_audit.errors import PickleRefusedError, SourceNotFoundError, UsageError
from amdet_audit.sources import resolve, target_kind


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_model_folder_records_every_used_file(tiny_clip: Path) -> None:
    resolved = resolve(str(tiny_clip))
    assert resolved.kind == "local"
    [comp] = resolved.components
    assert comp.architecture == "CLIPTextModel" and comp.tokenizer_path == tiny_clip
    names = {f.path for f in resolved.files}
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt"} <= names
    weights = next(f for f in resolved.files if f.path == "model.safetensors")
    assert weights.sha256 == sha256(tiny_clip / "model.safetensors")
    assert weights.size == (tiny_clip / "model.safetensors").stat().st_size


def test_pipeline_folder_finds_both_text_encoders_and_their_tokenizers(tiny_pipeline: Path) -> None:
    resolved = resolve(str(tiny_pipeline))
    assert resolved.pipeline_class == "StableDiffusionXLPipeline"
    assert [c.name for c in resolved.components] == ["text_encoder", "text_encoder_2"]
    assert resolved.component("text_encoder_2").tokenizer_path == tiny_pipeline / "tokenizer_2"
    assert resolved.component("text_encoder_2").architecture == "CLIPTextModelWithProjection"
    assert not any(f.path.startswith("unet/") for f in resolved.files)


def test_component_option_picks_one(tiny_pipeline: Path) -> None:
    resolved = resolve(str(tiny_pipeline), component="text_encoder_2")
    assert [c.name for c in resolved.components] == ["text_encoder_2"]
    with pytest.raises(UsageError, match="text_encoder, text_encoder_2"):
        resolve(str(tiny_pipeline), component="text_encoder_3")


def test_single_file_with_config_beside_it_or_given(tiny_clip: Path, tmp_path: Path) -> None:
    resolved = resolve(str(tiny_clip / "model.safetensors"))
    assert resolved.kind == "file" and resolved.components[0].tokenizer_path == tiny_clip
    lone = tmp_path / "suspect.safetensors"
    shutil.copy(tiny_clip / "model.safetensors", lone)
    with pytest.raises(SourceNotFoundError, match="--config"):
        resolve(str(lone))
    resolved = resolve(str(lone), config=tiny_clip / "config.json")
    assert resolved.components[0].weight_files == (lone,)


def test_pickle_weights_refused_unless_allowed(tiny_clip: Path, copy_of) -> None:
    folder = copy_of(tiny_clip)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(PickleRefusedError, match="--allow-pickle"):
        resolve(str(folder))
    resolved = resolve(str(folder), allow_pickle=True)
    assert resolved.components[0].weight_format == "pickle"


def test_custom_code_and_unused_pickle_are_reported_not_used(tiny_clip: Path, copy_of) -> None:
    folder = copy_of(tiny_clip)
    (folder / "modeling_evil.py").write_text("raise SystemExit('never run')\n")
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    resolved = resolve(str(folder))
    assert resolved.custom_code == ["modeling_evil.py"]
    assert resolved.other_files == ["pytorch_model.bin"]
    assert resolved.components[0].weight_format == "safetensors"


@pytest.mark.parametrize(
    ("target", "kind"),
    [("canary:clean", "canary"), ("hf://org/name", "hub"), ("org/name@v1", "hub"), ("./nope", "local"),
     ("missing.safetensors", "file")],
)
def test_target_kind(target: str, kind: str) -> None:
    assert target_kind(target) == kind
