"""Types and size limits of a model's config.json, checked before anything is built from it.

A hostile config can ask for a million layers or a billion-token vocabulary, or put a list where a name belongs.
:func:`check_config` refuses such a config with one line naming the file and the key, before any model is built.
The limits are far above any released text encoder and far below what would exhaust memory or time.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from amdet_audit.errors import ConfigFileError, shown

#: size keys -> largest accepted value (text towers of released models are far below these)
SIZE_LIMITS: dict[str, int] = {
    "num_hidden_layers": 512,
    "hidden_size": 65536,
    "intermediate_size": 1 << 20,
    "num_attention_heads": 1024,
    "vocab_size": 1 << 22,
    "max_position_embeddings": 1 << 20,
    "projection_dim": 65536,
    "type_vocab_size": 1 << 16,
    # T5's names for the same sizes
    "num_layers": 512,
    "num_decoder_layers": 512,
    "d_model": 65536,
    "d_ff": 1 << 20,
    "d_kv": 65536,
    "num_heads": 1024,
    "relative_attention_num_buckets": 4096,
    "relative_attention_max_distance": 1 << 20,
    # SigLIP's projection
    "projection_size": 65536,
}
NAME_KEYS = ("model_type", "_class_name")


def check_config(config: Mapping[str, Any], path: Path | str) -> Mapping[str, Any]:
    """Return ``config`` after checking its name keys, ``architectures`` and size keys (also in ``text_config``).

    Raises:
        ConfigFileError: ``path: key: what is wrong`` for the first bad key.
    """
    for key in NAME_KEYS:
        if config.get(key) is not None and not isinstance(config[key], str):
            raise _bad(path, key, f"must be a name (text), not {shown(config[key])}")
    archs = config.get("architectures")
    if archs is not None and (not isinstance(archs, list) or not all(isinstance(a, str) for a in archs)):
        raise _bad(path, "architectures", f"must be a list of class names, not {shown(archs)}")
    check_sizes(config, path, "")
    text = config.get("text_config")
    if text is not None:
        if not isinstance(text, Mapping):
            raise _bad(path, "text_config", f"must be an object, not {shown(text)}")
        for key in NAME_KEYS:
            if text.get(key) is not None and not isinstance(text[key], str):
                raise _bad(path, f"text_config.{key}", f"must be a name (text), not {shown(text[key])}")
        check_sizes(text, path, "text_config.")
    return config


def check_sizes(config: Mapping[str, Any], path: Path | str, prefix: str) -> None:
    """Each size key present is a whole number from 1 to its limit."""
    for key, limit in SIZE_LIMITS.items():
        value = config.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(path, prefix + key, f"must be a whole number, not {shown(value)}")
        if not 1 <= value <= limit:
            raise _bad(path, prefix + key, f"{value} is outside the accepted range 1..{limit}")


def _bad(path: Path | str, key: str, message: str) -> ConfigFileError:
    return ConfigFileError(f"{path}: {key}: {message}")

