"""The amdet-audit-diffusers plugin, installed as its own distribution, end to end through its entry point.

A tiny StableDiffusionPipeline is built from configs with random weights around the clean canary (whose
width the UNet reads), so the images are noise: what is tested is the plumbing, from the scan's target
feature through the installed plugin to PNG files and the report.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from schema_check import assert_valid_report

from amdet_audit.sources.canary import ensure_canary

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_pipeline_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A StableDiffusionPipeline folder: canary text encoder and tokenizer, tiny random UNet and VAE."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    canary = ensure_canary("clean")
    torch.manual_seed(0)
    text_encoder = CLIPTextModel.from_pretrained(canary)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=128,
                                attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), latent_channels=4,
                        norm_num_groups=8, sample_size=16)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(canary),
                                   unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    folder = tmp_path_factory.mktemp("pipeline") / "tiny-sd"
    pipe.save_pretrained(folder)
    return folder


def test_plugin_is_installed_from_its_own_distribution(run_cli) -> None:
    listed = json.loads(run_cli("plugins", "list", "--format", "json").stdout)
    (plugin,) = [p for p in listed if p["name"] == "diffusers"]
    assert plugin["distribution"] == "amdet-audit-diffusers" and plugin["version"] == "0.1.0"


def test_target_feature_rendered_into_four_images_in_the_report(run_cli, tiny_pipeline_folder: Path,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = run_cli("scan", "canary:backdoored", "--out", out, "--plugin-option",
                     f"diffusers.pipeline={tiny_pipeline_folder}")
    assert result.exit_code == 1, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert_valid_report(report)
    images = report["components"][0]["target_images"]
    assert len(images) == 4 and all(im["plugin"] == "diffusers" for im in images), images
    from PIL import Image

    for im in images:
        path = Path(im["path"])
        assert path.parent.is_relative_to(out) and Image.open(path).size == (16, 16)
        assert "lms, 25 steps, guidance 7.5" in im["caption"]
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 4 and "Target feature rendered into images" in html
    assert "diffusers" in {p["name"] for p in report["plugins"]}


def test_a_pipeline_of_the_wrong_width_is_reported_not_fatal(run_cli, tiny_pipeline_folder: Path,
                                                             tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    shutil.copytree(tiny_pipeline_folder, wrong)
    config = json.loads((wrong / "unet" / "config.json").read_text())
    config["cross_attention_dim"] = 96
    (wrong / "unet" / "config.json").write_text(json.dumps(config))
    out = tmp_path / "report"
    result = run_cli("scan", "canary:backdoored", "--out", out, "--plugin-option", f"diffusers.pipeline={wrong}")
    assert result.exit_code == 1  # the audit's verdict stands
    (entry,) = json.loads((out / "report.json").read_text())["components"][0]["target_images"]
    assert entry["plugin"] == "diffusers" and "error" in entry
    assert "could not render" in (out / "report.html").read_text()


def test_without_a_pipeline_the_plugin_does_nothing(run_cli, tmp_path: Path) -> None:
    assert run_cli("scan", "canary:backdoored", "--out", tmp_path / "r").exit_code == 1
    assert "target_images" not in json.loads((tmp_path / "r" / "report.json").read_text())["components"][0]
