"""Property tests: the config loader, the tokenizer-file readers and the policy parser, fed random and hostile
documents, either succeed or raise an AmdetError (exit 2 with one line on the command line), never anything else,
never slowly (a per-example deadline) and never with much memory (a per-example cap on the Python memory
allocated while parsing, measured with tracemalloc).

Documents: random JSON/YAML trees over the keys these files really use, wrong types, unicode, numbers too large
for a float or an int, NaN, deep nesting, YAML anchors and aliases, and raw random text.
"""

from __future__ import annotations

import json
import math
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amdet_audit.errors import AmdetError

SETTINGS = settings(max_examples=120, deadline=3000, suppress_health_check=[HealthCheck.too_slow])
#: Python memory one parse may allocate at its peak: documents here are at most a few hundred kilobytes, so a
#: reader that expands them (YAML aliases, huge integers, deep trees) shows far above this
MEMORY_CAP_BYTES = 64 << 20

CONFIG_KEYS = ["model_type", "architectures", "_class_name", "text_config", "hidden_size", "num_hidden_layers",
               "num_attention_heads", "intermediate_size", "vocab_size", "max_position_embeddings", "projection_dim",
               "type_vocab_size", "layer_norm_eps", "hidden_act", "auto_map", "torch_dtype"]
CONFIG_VALUES = ["clip_text_model", "clip", "bert", "CLIPTextModel", "BertModel", "CLIPModel", "gelu", "quick_gelu"]
TOKENIZER_KEYS = ["added_tokens", "content", "special", "model_max_length", "bos_token", "eos_token", "pad_token",
                  "tokenizer_class", "auto_map", "added_tokens_decoder", "model", "vocab"]
POLICY_KEYS = ["version", "fail_on", "severity", "thresholds", "required", "reference", "waivers", "collapse_gain",
               "anchor_cosine", "fingerprint", "check", "target", "reason", "owner", "expires", "tokenizer"]

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10**300, max_value=10**320)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from(CONFIG_VALUES + ["high", "low", "2099-13-45", "2027-01-31", "assimilation"]))


def trees(keys: list[str]) -> st.SearchStrategy[Any]:
    """Random JSON-like trees whose mapping keys are mostly the given real keys."""
    names = st.sampled_from(keys) | st.text(max_size=8)
    return st.recursive(scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(names, kids, max_size=6),
                        max_leaves=25)


def nested(depth: int, leaf: str = "1") -> str:
    """A JSON/YAML flow document nested ``depth`` lists deep."""
    return "[" * depth + leaf + "]" * depth


hostile_text = st.one_of(
    st.integers(min_value=50, max_value=20_000).map(nested),
    st.integers(min_value=50, max_value=20_000).map(lambda n: '{"a": ' + nested(n) + "}"),
    st.integers(min_value=4000, max_value=20_000).map(lambda n: '{"hidden_size": 1' + "0" * n + "}"),
    st.sampled_from(['{"hidden_size": NaN}', '{"vocab_size": Infinity}', '{"a": 1e999}', "\ufeff{}", "", "null",
                     '{"model_type": "clip", "text_config": []}', '{"architectures": [1, 2]}']),
    st.text(max_size=200),
)


def json_document(keys: list[str]) -> st.SearchStrategy[bytes]:
    """A JSON file body: a dumped random tree (as an object most of the time), or hostile or random text."""
    tree = st.dictionaries(st.sampled_from(keys) | st.text(max_size=8), trees(keys), max_size=8) | trees(keys)
    dumped = tree.map(lambda value: json.dumps(value, ensure_ascii=False))
    return st.one_of(dumped, dumped, hostile_text).map(lambda text: text.encode("utf-8", "surrogatepass")) | st.binary(
        max_size=100)


def outcome(call: Callable[[], Any]) -> str:
    """'ok' or 'refused' (an AmdetError); any other exception fails the test, and so does a call whose peak
    Python memory exceeds MEMORY_CAP_BYTES."""
    tracemalloc.start()
    try:
        call()
    except AmdetError as err:
        message = str(err)
        assert message and "\n" not in message, message
        return "refused"
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak <= MEMORY_CAP_BYTES, f"{peak} bytes allocated at the peak, over the {MEMORY_CAP_BYTES} cap"
    return "ok"


def test_the_memory_cap_sees_an_expanding_reader() -> None:
    with pytest.raises(AssertionError, match="over the"):
        outcome(lambda: [0] * (MEMORY_CAP_BYTES // 4))


@SETTINGS
@given(body=json_document(CONFIG_KEYS))
def test_config_loader_succeeds_or_refuses(body: bytes) -> None:
    from amdet_audit.encoders.clip import clip_text_config
    from amdet_audit.encoders.load import FAMILY_BUILDERS, detect_family, read_config
    from amdet_audit.sources.local import describe_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_bytes(body)

        def load() -> None:
            config = read_config(path)
            describe_config(config)
            family = detect_family(config, str(path))
            assert family in FAMILY_BUILDERS
            if family == "clip":
                clip_text_config(config, path)

        outcome(load)


@SETTINGS
@given(config=json_document(TOKENIZER_KEYS), tokenizer=json_document(TOKENIZER_KEYS),
       added=json_document(TOKENIZER_KEYS))
def test_tokenizer_file_readers_succeed_or_refuse(config: bytes, tokenizer: bytes, added: bytes) -> None:
    from amdet_audit.checks.hygiene import added_tokens
    from amdet_audit.sources.local import check_tokenizer
    from amdet_audit.sources.safe_files import Jail

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "tokenizer_config.json").write_bytes(config)
        (folder / "tokenizer.json").write_bytes(tokenizer)
        (folder / "added_tokens.json").write_bytes(added)
        outcome(lambda: check_tokenizer(folder, Jail(folder)))
        outcome(lambda: added_tokens(folder))


vocab_lines = st.lists(st.text(max_size=20) | st.sampled_from(["[PAD]", "[UNK]", "##s", "\u202e", "a b c", ""]),
                      max_size=60).map("\n".join)
merges_text = st.one_of(
    st.lists(st.tuples(st.text(max_size=6), st.text(max_size=6)).map(" ".join), max_size=60).map(
        lambda lines: "\n".join(["#version: 0.2", *lines])),
    st.text(max_size=300),
    st.integers(min_value=1000, max_value=50_000).map(lambda n: "a" * n),
)


@SETTINGS
@given(vocab=json_document(["hello</w>", "a", "</w>", "<|endoftext|>"]), merges=merges_text, wordpiece=vocab_lines,
       raw=st.binary(max_size=200), which=st.sampled_from(["text", "bytes"]))
def test_vocab_and_merges_readers_succeed_or_refuse(vocab: bytes, merges: str, wordpiece: str, raw: bytes,
                                                    which: str) -> None:
    from amdet_audit.checks.weights_diff import vocabulary
    from amdet_audit.sources.local import check_tokenizer
    from amdet_audit.sources.model import Component
    from amdet_audit.sources.safe_files import Jail

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "vocab.json").write_bytes(vocab)
        (folder / "merges.txt").write_bytes(merges.encode("utf-8", "surrogatepass") if which == "text" else raw)
        (folder / "vocab.txt").write_bytes(wordpiece.encode("utf-8", "surrogatepass") if which == "text" else raw)
        component = Component(name="model", config_path=folder / "config.json", weight_files=(),
                              tokenizer_path=folder, architecture="CLIPTextModel", model_type="clip_text_model",
                              weight_format="safetensors")
        jail = Jail(folder)
        outcome(lambda: check_tokenizer(folder, jail))
        if outcome(lambda: vocabulary(component, jail)) == "ok":
            assert all(isinstance(i, int) for i in vocabulary(component, jail))
        (folder / "vocab.json").unlink()  # the WordPiece reader: vocab.txt alone
        outcome(lambda: vocabulary(component, jail))


def policy_trees() -> st.SearchStrategy[Any]:
    """Random policy-shaped data: the real keys with random values, thresholds with odd numbers, waivers."""
    numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.integers(min_value=10**308)
    thresholds = st.dictionaries(st.sampled_from(["collapse_gain", "anchor_cosine", "same_target_rate", "bogus"]),
                                 numbers | scalars, max_size=3)
    waiver = st.dictionaries(st.sampled_from(["fingerprint", "check", "target", "reason", "owner", "expires"]),
                             scalars | st.dates() | st.datetimes(), max_size=6)
    return st.fixed_dictionaries({}, optional={
        "version": scalars, "fail_on": scalars, "severity": trees(POLICY_KEYS), "thresholds": thresholds,
        "required": trees(POLICY_KEYS), "reference": trees(POLICY_KEYS), "waivers": st.lists(waiver, max_size=3),
    }) | trees(POLICY_KEYS)


def yaml_text(data: Any) -> str:
    """``data`` as YAML (integers too large for a float stay integers)."""
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


hostile_yaml = st.one_of(
    st.integers(min_value=50, max_value=20_000).map(lambda n: "thresholds: " + nested(n)),
    st.integers(min_value=50, max_value=400).map(lambda n: "".join("  " * i + f"k{i}:\n" for i in range(n))),
    st.integers(min_value=1, max_value=9).map(
        lambda n: "a0: &a0 [x, x, x, x, x, x, x, x, x]\n"
                  + "".join(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n" for i in range(1, n + 1))
                  + f"thresholds: *a{n}\n"),
    st.integers(min_value=10, max_value=50_000).map(lambda n: "thresholds:\n  collapse_gain: 1" + ":59" * n + "\n"),
    st.sampled_from(["thresholds:\n  collapse_gain: .nan\n", "waivers:\n  - expires: 2099-13-45\n",
                     "!!python/object/apply:os.system [echo hi]\n", "? [a, b]\n: 1\n", "--- 1\n--- 2\n",
                     "thresholds: !!binary 'not base64'\n", "version: !!int 'x'\n", "\t- a\n", "a: 'unterminated\n"]),
    st.text(max_size=200),
)


@SETTINGS
@given(text=policy_trees().map(yaml_text) | hostile_yaml)
def test_policy_parser_succeeds_or_refuses(text: str) -> None:
    from amdet_audit.audit.policy import load_policy

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policy.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        if outcome(lambda: load_policy(path)) == "ok":
            thresholds = load_policy(path).thresholds.to_dict()
            assert all(math.isfinite(v) for v in thresholds.values()), thresholds


@pytest.mark.parametrize("depth", [63, 64, 65, 10_000])
def test_depth_limit_is_exact(tmp_path: Path, depth: int) -> None:
    from amdet_audit.sources.safe_files import MAX_DEPTH, read_json

    path = tmp_path / "deep.json"
    path.write_text('{"a": ' + nested(depth - 1) + "}")
    result = outcome(lambda: read_json(path))
    assert result == ("ok" if depth <= MAX_DEPTH else "refused")
