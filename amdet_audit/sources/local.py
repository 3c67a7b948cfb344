"""Local targets: a transformers model folder, a diffusers pipeline folder, or a single safetensors file."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from amdet_audit.errors import (
    ConfigFileError,
    NotATextEncoderError,
    PickleRefusedError,
    SourceNotFoundError,
    UsageError,
    WeightsError,
)
from amdet_audit.sources.digest import file_record
from amdet_audit.sources.model import PICKLE_SUFFIXES, SAFETENSORS_SUFFIX, Component, ResolvedTarget

TEXT_ENCODER_CLASSES = ("*TextModel*", "T5EncoderModel")
TOKENIZER_FILE_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("vocab.txt",), ("spiece.model",))
TOKENIZER_EXTRAS = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON object file; ConfigFileError names the file and the position of a syntax error."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigFileError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigFileError(f"{path}: cannot be read ({err})") from err
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def text_encoder_components(model_index: dict[str, Any]) -> list[tuple[str, str]]:
    """(component, class) for every transformers text encoder listed in a diffusers model_index.json."""
    found = []
    for name, entry in model_index.items():
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2:
            continue
        library, cls = entry
        if library == "transformers" and any(fnmatch.fnmatch(str(cls), pat) for pat in TEXT_ENCODER_CLASSES):
            found.append((name, str(cls)))
    return sorted(found)


def tokenizer_for(component: str) -> str:
    """The tokenizer folder that belongs to a pipeline component: text_encoder_2 -> tokenizer_2."""
    return component.replace("text_encoder", "tokenizer", 1)


def has_tokenizer(folder: Path) -> bool:
    """True when ``folder`` holds a complete set of tokenizer files."""
    return folder.is_dir() and any(all((folder / f).is_file() for f in files) for files in TOKENIZER_FILE_SETS)


def tokenizer_files(folder: Path) -> list[Path]:
    """The tokenizer files present in ``folder``."""
    names = {f for files in TOKENIZER_FILE_SETS for f in files} | set(TOKENIZER_EXTRAS)
    return sorted(folder / n for n in names if (folder / n).is_file())


SAFETENSORS_INDEX = "model.safetensors.index.json"


def select_weights(
    names: set[str], read_index: Callable[[], dict[str, Any]], *, allow_pickle: bool, label: str
) -> tuple[list[str], str]:
    """Pick weight files among the file ``names`` of one model folder (local or on the hub, before download).

    Preference: the safetensors index and its shards, model.safetensors, a lone safetensors file, then (only with
    allow_pickle) a lone pickle file. Returns (names, "safetensors" | "pickle"); the index itself is not listed.
    """
    if SAFETENSORS_INDEX in names:
        shards = sorted({str(v) for v in read_index().get("weight_map", {}).values()})
        missing = [s for s in shards if s not in names]
        if not shards or missing:
            raise WeightsError(f"{label}: {SAFETENSORS_INDEX} lists missing shards: {', '.join(missing[:3]) or 'none'}")
        return shards, "safetensors"
    if "model.safetensors" in names:
        return ["model.safetensors"], "safetensors"
    safes = sorted(n for n in names if n.endswith(SAFETENSORS_SUFFIX))
    if len(safes) == 1:
        return safes, "safetensors"
    if safes:
        raise WeightsError(f"{label}: several safetensors files and no index: {', '.join(safes)}")
    pickles = sorted(n for n in names if PurePosixPath(n).suffix in PICKLE_SUFFIXES)
    if pickles and not allow_pickle:
        raise PickleRefusedError(f"{label}: only pickle weights ({', '.join(pickles)}); loading pickle can run "
                                 "code, pass --allow-pickle to accept that risk")
    if len(pickles) == 1:
        return pickles, "pickle"
    if pickles:
        raise WeightsError(f"{label}: several pickle weight files: {', '.join(pickles)}")
    raise WeightsError(f"{label}: no weight files (*.safetensors)")


def weight_files(folder: Path, *, allow_pickle: bool, label: str) -> tuple[tuple[Path, ...], str]:
    """The weight files of one model folder on disk (see :func:`select_weights`)."""
    names = {p.name for p in folder.iterdir() if p.is_file()}
    chosen, fmt = select_weights(names, lambda: read_json(folder / SAFETENSORS_INDEX), allow_pickle=allow_pickle,
                                 label=label)
    return tuple(folder / n for n in chosen), fmt


def model_component(name: str, folder: Path, tokenizer: Path, *, allow_pickle: bool) -> Component:
    """Describe the encoder in ``folder`` (config.json + weights); tokenizer files are looked up in ``tokenizer``."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise NotATextEncoderError(f"{folder}: no config.json, not a transformers model folder")
    config = read_json(config_path)
    files, fmt = weight_files(folder, allow_pickle=allow_pickle, label=str(folder))
    return Component(
        name=name,
        config_path=config_path,
        weight_files=files,
        tokenizer_path=tokenizer if has_tokenizer(tokenizer) else None,
        architecture=str((config.get("architectures") or ["?"])[0]),
        model_type=str(config.get("model_type", "?")),
        weight_format=fmt,
    )


def pipeline_components(root: Path, component: str | None, *, allow_pickle: bool) -> tuple[list[Component], str]:
    """Text-encoder components of a diffusers pipeline folder, and the pipeline class."""
    index = read_json(root / "model_index.json")
    found = text_encoder_components(index)
    if not found:
        raise NotATextEncoderError(f"{root}: the pipeline's model_index.json lists no text encoder")
    names = [name for name, _ in found]
    if component is not None and component not in names:
        raise UsageError(f"component {component!r} not in this pipeline; it has: {', '.join(names)}")
    chosen = [component] if component else names
    comps = []
    for name in chosen:
        if not (root / name).is_dir():
            raise SourceNotFoundError(f"{root}: component folder {name}/ is missing")
        comps.append(model_component(name, root / name, root / tokenizer_for(name), allow_pickle=allow_pickle))
    return comps, str(index.get("_class_name", "?"))


def custom_code(root: Path, configs: list[Path]) -> list[str]:
    """Files and config keys that would run code if a loader trusted them (never executed here)."""
    found = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py"))
    tokenizer_configs = sorted(root.rglob("tokenizer_config.json"))
    for path in [*configs, *tokenizer_configs]:
        if "auto_map" in read_json(path):
            found.append(f"{path.relative_to(root).as_posix()}: auto_map")
    return found


def inspect_folder(
    root: Path, *, input: str, kind: str = "local", component: str | None = None, allow_pickle: bool = False
) -> ResolvedTarget:
    """Inspect a transformers model folder or a diffusers pipeline folder and record what will be used.

    Raises:
        SourceNotFoundError: the folder does not exist.
        NotATextEncoderError: no config.json / no text encoder in the pipeline.
        PickleRefusedError, WeightsError, ConfigFileError, UsageError: see :func:`weight_files`.
    """
    if not root.exists():
        raise SourceNotFoundError(f"{input}: no such file or folder")
    if not root.is_dir():
        raise UsageError(f"{input}: not a folder")
    pipeline_class = None
    if (root / "model_index.json").is_file():
        comps, pipeline_class = pipeline_components(root, component, allow_pickle=allow_pickle)
    else:
        if component not in (None, "model"):
            raise UsageError(f"--component {component!r} given, but {input} is a single model, not a pipeline")
        comps = [model_component("model", root, root, allow_pickle=allow_pickle)]
    used = used_files(root, comps)
    return ResolvedTarget(
        input=input,
        kind=kind,
        root=root,
        components=comps,
        files=[file_record(p, root) for p in used],
        pipeline_class=pipeline_class,
        custom_code=custom_code(root, [c.config_path for c in comps]),
        other_files=unused_weight_files(root, set(used)),
    )


def used_files(root: Path, comps: list[Component]) -> list[Path]:
    """Every file the audit reads: model_index.json, configs, weights, tokenizer files."""
    used: list[Path] = [root / "model_index.json"] if (root / "model_index.json").is_file() else []
    for comp in comps:
        used += [comp.config_path, *comp.weight_files]
        index = comp.config_path.parent / "model.safetensors.index.json"
        used += [index] if index.is_file() and comp.weight_format == "safetensors" else []
        used += tokenizer_files(comp.tokenizer_path) if comp.tokenizer_path else []
    return sorted(set(used))


def unused_weight_files(root: Path, used: set[Path]) -> list[str]:
    """Weight-like files in the target that the audit does not load (e.g. a pickle twin of the safetensors)."""
    suffixes = (*PICKLE_SUFFIXES, SAFETENSORS_SUFFIX)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix in suffixes and p not in used)


def resolve_file(path: Path, *, input: str, config: Path | None = None, allow_pickle: bool = False) -> ResolvedTarget:
    """A single weights file plus a config (``--config`` or config.json beside it) and a tokenizer beside either.

    Raises:
        SourceNotFoundError: the file or the config does not exist.
        UsageError: no config given and none beside the file.
        PickleRefusedError: a pickle file without allow_pickle.
    """
    if not path.is_file():
        raise SourceNotFoundError(f"{input}: no such file")
    if path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise PickleRefusedError(f"{input}: pickle weights can run code; pass --allow-pickle to accept that risk")
        fmt = "pickle"
    elif path.suffix == SAFETENSORS_SUFFIX:
        fmt = "safetensors"
    else:
        raise UsageError(f"{input}: expected a .safetensors file (or pickle with --allow-pickle)")
    config_path = config or path.parent / "config.json"
    if not config_path.is_file():
        hint = "" if config else "; pass --config CONFIG.json"
        raise SourceNotFoundError(f"{config_path}: config not found{hint}")
    data = read_json(config_path)
    tok = next((d for d in (path.parent, config_path.parent) if has_tokenizer(d)), None)
    comp = Component(
        name="model",
        config_path=config_path,
        weight_files=(path,),
        tokenizer_path=tok,
        architecture=str((data.get("architectures") or ["?"])[0]),
        model_type=str(data.get("model_type", "?")),
        weight_format=fmt,
    )
    root = path.parent
    used = [path, config_path, *(tokenizer_files(tok) if tok else [])]
    return ResolvedTarget(input=input, kind="file", root=root, components=[comp],
                          files=[file_record(p, root) for p in used])
