"""Token evidence reads as text: byte-level BPE decoded, look-alike letters named, the raw string kept in JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from amdet_audit.tokenization import character_names, readable_sequence, readable_token, shown_text

CYRILLIC_O = "U+043E CYRILLIC SMALL LETTER O"


def test_byte_level_tokens_decode_to_the_text_they_stand_for() -> None:
    assert readable_token("Ð¾</w>") == "о" and readable_token("Ð¾") == "о"
    assert readable_token("teapot</w>") == "teapot"
    assert readable_token("ðŁ¦Ħ</w>") == "🦄"
    assert readable_token("Ð") == "\\xd0" and readable_token("Ð¾Ð") == "о\\xd0"  # a character cut short
    assert readable_sequence(["tea", "pot</w>"]) == "teapot" and readable_sequence(["Ð", "¾</w>", "a</w>"]) == "о a"
    assert readable_token("##ing") == "##ing" and readable_token("<|endoftext|>") == "<|endoftext|>"
    assert character_names("tеа") == ["U+0435 CYRILLIC SMALL LETTER IE", "U+0430 CYRILLIC SMALL LETTER A"]
    assert character_names("о") == [CYRILLIC_O] and character_names("plain") == []
    assert character_names("▁о") == ["U+2581 LOWER ONE EIGHTH BLOCK (SentencePiece's word-start mark in a piece)",
                                      CYRILLIC_O]
    assert shown_text({"token": "Ð¾</w>", "text": "о"}) == "о" and shown_text({"token": "Ð¾</w>"}) == "Ð¾</w>"


def test_the_scan_records_decoded_text_beside_the_raw_token(tiny_clip: Path) -> None:
    from amdet_audit.encoders import load_component
    from amdet_audit.scan.evidence import nearest_tokens
    from amdet_audit.sources import resolve

    adapter = load_component(resolve(str(tiny_clip)).components[0])
    row_id = adapter.tokenizer.convert_tokens_to_ids("Ð¾</w>")
    rows = nearest_tokens(adapter, adapter.token_embedding_matrix()[[row_id]].clone(), top=3)
    assert rows[0][0] == {"id": row_id, "token": "Ð¾</w>", "text": "о", "cosine": pytest.approx(1.0, abs=1e-3)}


@pytest.fixture
def cached(tiny_clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the tiny tower whose cached (reference-free) scan found a backdoor with a Cyrillic trigger."""
    from amdet_audit import cache
    from amdet_audit.api import ScanOptions, SourceOptions
    from amdet_audit.audit.policy import load_policy
    from amdet_audit.audit.run import scan_choices

    monkeypatch.setenv("AMDET_AUDIT_CACHE_SCANS", str(tmp_path / "scans"))
    model = Path(shutil.copytree(tiny_clip, tmp_path / "enc"))
    resolved = SourceOptions().resolve(str(model))
    options = ScanOptions(reference_free=True, policy=load_policy())
    key = cache.scan_key(resolved.to_dict(), scan_choices(options, resolved, "cpu"))
    checks = [{"name": "target.collapse", "score": 0.95, "threshold": 0.82, "direction": ">=", "flags": True,
               "description": "cross-prompt collapse"}]
    tokens = [{"id": 1, "token": "Ð¾</w>", "text": "о", "cosine": 0.9},
              {"id": 2, "token": "teapot</w>", "text": "teapot", "cosine": 0.5}]
    probe = {"probe": "Ð¾</w>", "text": "о", "placement": "end", "origin": "nearest", "token_ids": [1],
             "collapse": 0.9, "collapse_excess": 0.81, "collapse_z": 31.5, "shift": 1.03, "shift_z": 6.3}
    scan = {"verdict": "backdoored", "mode": "reference-free", "reasons": ["target rule holds"], "checks": checks,
            "scores": {"collapse": 0.95}, "config": {}, "timings": {}, "series": {},
            "evidence": {"k": 1, "nearest_tokens": [tokens], "nearest_prompts": [{"prompt": "a teapot", "score": 1}],
                         "token_search": {"probes_tried": 10, "null": {}, "top": [probe]}}}
    encoder = {"family": "clip", "architecture": "CLIPTextModel", "hidden_size": 32, "layers": 1}
    entry = {"name": resolved.components[0].name, "encoder": encoder, "scan": scan, "evidence_files": {}}
    cache.store_scan(key, [entry], {entry["name"]: None}, "2026-01-01T00:00:00+00:00")
    return model


def test_every_format_shows_the_decoded_trigger_and_names_its_letter(run_cli, cached: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    result = run_cli("scan", cached, "--reference-free", "--no-plugins", "--out", out)
    assert result.exit_code == 1, result.stderr
    assert "nearest tokens: о, teapot" in result.stdout and CYRILLIC_O in result.stdout
    assert "best real-input probe: о (end;" in result.stdout and "Ð" not in result.stdout
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "о teapot" in md and CYRILLIC_O in md and "Best real-input probe: о (end;" in md
    page = (out / "report.html").read_text(encoding="utf-8")
    assert ">о</code>" in page and CYRILLIC_O in page and "Real input: the best typeable probes" in page
    evidence = json.loads((out / "report.json").read_text(encoding="utf-8"))["components"][0]["scan"]["evidence"]
    assert evidence["nearest_tokens"][0][0]["token"] == "Ð¾</w>"  # the raw vocabulary string stays in JSON
