"""Local targets: a transformers model folder, a diffusers pipeline folder, or a single safetensors file."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from amdet_audit.errors import (
    NotATextEncoderError,
    PickleRefusedError,
    SourceNotFoundError,
    TokenizerError,
    UnsafeFileError,
    UsageError,
    WeightsError,
)
from amdet_audit.sources import safe_files
from amdet_audit.sources.config_limits import check_config
from amdet_audit.sources.digest import file_record
from amdet_audit.sources.model import (
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIX,
    TOKENIZER_EXTRAS,
    TOKENIZER_FILE_SETS,
    Component,
    ResolvedTarget,
    has_tokenizer,
)

TEXT_ENCODER_CLASSES = ("*TextModel*", "T5EncoderModel")
#: files a tokenizer loader may open by name in its folder
LOADER_READS = (*sorted({f for files in TOKENIZER_FILE_SETS for f in files}), *TOKENIZER_EXTRAS, "config.json",
                "tokenizer.model", "chat_template.json", "chat_template.jinja", "processor_config.json")


def text_encoder_components(model_index: dict[str, Any], where: str = "model_index.json") -> list[tuple[str, str]]:
    """(component, class) for every transformers text encoder listed in a diffusers model_index.json.

    Raises:
        UnsafeFileError: a text encoder's name is not a plain folder name (a path, ``..``, absolute).
    """
    found = []
    for name, entry in model_index.items():
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2:
            continue
        library, cls = entry
        if library == "transformers" and any(fnmatch.fnmatch(str(cls), pat) for pat in TEXT_ENCODER_CLASSES):
            if not safe_files.is_plain_name(name):
                raise UnsafeFileError(f"{where}: component name {name[:80]!r} is not a plain folder name; refused")
            found.append((name, str(cls)))
    return sorted(found)


def tokenizer_for(component: str) -> str:
    """The tokenizer folder that belongs to a pipeline component: text_encoder_2 -> tokenizer_2."""
    return component.replace("text_encoder", "tokenizer", 1)


def tokenizer_files(folder: Path) -> list[Path]:
    """The tokenizer files present in ``folder``."""
    names = {f for files in TOKENIZER_FILE_SETS for f in files} | set(TOKENIZER_EXTRAS)
    return sorted(folder / n for n in names if (folder / n).is_file())


def check_tokenizer(folder: Path, jail: safe_files.Jail, *, whole_folder: bool = True) -> None:
    """The tokenizer folder a loader will read: every entry safe (:meth:`Jail.check_folder`; with ``whole_folder``
    false only the names a tokenizer loader opens), each tokenizer file at most 64 MiB, and each JSON one
    parseable within the nesting limit. TokenizerError or UnsafeFileError names the file."""
    if whole_folder:
        jail.check_folder(folder)
    else:
        jail.contained(folder)
        for name in LOADER_READS:
            if os.path.lexists(folder / name) and os.path.exists(folder / name):  # dangling links read nothing
                jail.regular(folder / name)
    for path in tokenizer_files(folder):
        if path.suffix == ".json":
            jail.json(path, limit=safe_files.MAX_TOKENIZER_BYTES, error=TokenizerError, want=(dict, list))
        elif jail.regular(path).st_size > safe_files.MAX_TOKENIZER_BYTES:
            raise TokenizerError(f"{path}: larger than the {safe_files.MAX_TOKENIZER_BYTES} bytes a tokenizer "
                                 "file may have")


SAFETENSORS_INDEX = "model.safetensors.index.json"


def select_weights(
    names: set[str], read_index: Callable[[], dict[str, Any]], *, allow_pickle: bool, label: str
) -> tuple[list[str], str]:
    """Pick weight files among the file ``names`` of one model folder (local or on the hub, before download).

    Preference: the safetensors index and its shards, model.safetensors, a lone safetensors file, then (only with
    allow_pickle) a lone pickle file. Returns (names, "safetensors" | "pickle"); the index itself is not listed.
    """
    if SAFETENSORS_INDEX in names:
        weight_map = read_index().get("weight_map", {})
        if not isinstance(weight_map, dict):
            raise WeightsError(f"{label}: {SAFETENSORS_INDEX}: weight_map must be an object")
        shards = sorted({str(v) for v in weight_map.values()})
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



def weight_files(
    folder: Path, jail: safe_files.Jail, *, allow_pickle: bool, label: str
) -> tuple[tuple[Path, ...], str]:
    """The weight files of one model folder on disk (see :func:`select_weights`), each a regular file in the target."""
    try:
        names = {p.name for p in folder.iterdir() if p.is_file()}
    except OSError as err:
        raise UnsafeFileError(f"{folder}: cannot be listed ({err.strerror or err})") from err
    chosen, fmt = select_weights(names, lambda: jail.json(folder / SAFETENSORS_INDEX), allow_pickle=allow_pickle,
                                 label=label)
    files = tuple(folder / n for n in chosen)
    for path in files:
        jail.regular(path)
    return files, fmt


def read_model_config(path: Path, jail: safe_files.Jail | None) -> dict[str, Any]:
    """A config.json, read safely (inside ``jail`` when given) and checked for types and sizes."""
    config = safe_files.read_json(path) if jail is None else jail.json(path)
    check_config(config, path)
    return config


def describe_config(config: dict[str, Any]) -> tuple[str, str]:
    """(architecture, model_type) of a checked config, ``"?"`` where absent."""
    return str((config.get("architectures") or ["?"])[0]), str(config.get("model_type") or "?")


def model_component(
    name: str, folder: Path, tokenizer: Path, jail: safe_files.Jail, *, allow_pickle: bool
) -> Component:
    """Describe the encoder in ``folder`` (config.json + weights); tokenizer files are looked up in ``tokenizer``."""
    jail.check_folder(folder)
    config_path = folder / "config.json"
    if not os.path.lexists(config_path):
        raise NotATextEncoderError(f"{folder}: no config.json, not a transformers model folder")
    config = read_model_config(config_path, jail)
    files, fmt = weight_files(folder, jail, allow_pickle=allow_pickle, label=str(folder))
    if tokenizer.is_dir() or tokenizer.is_symlink():
        check_tokenizer(tokenizer, jail)
    architecture, model_type = describe_config(config)
    return Component(
        name=name,
        config_path=config_path,
        weight_files=files,
        tokenizer_path=tokenizer if has_tokenizer(tokenizer) else None,
        architecture=architecture,
        model_type=model_type,
        weight_format=fmt,
    )


def pipeline_components(
    root: Path, component: str | None, jail: safe_files.Jail, *, allow_pickle: bool
) -> tuple[list[Component], str]:
    """Text-encoder components of a diffusers pipeline folder, and the pipeline class."""
    index = jail.json(root / "model_index.json")
    found = text_encoder_components(index, str(root / "model_index.json"))
    if not found:
        raise NotATextEncoderError(f"{root}: the pipeline's model_index.json lists no text encoder")
    names = [name for name, _ in found]
    if component is not None and component not in names:
        raise UsageError(f"component {component!r} not in this pipeline; it has: {', '.join(names)}")
    comps = []
    for name in [component] if component else names:
        if not (root / name).is_dir():
            raise SourceNotFoundError(f"{root}: component folder {name}/ is missing")
        comps.append(model_component(name, root / name, root / tokenizer_for(name), jail, allow_pickle=allow_pickle))
    return comps, str(index.get("_class_name", "?"))


def custom_code(root: Path, configs: list[Path], jail: safe_files.Jail, entries: list[Path]) -> list[str]:
    """Files and config keys that would run code if a loader trusted them (never executed here).

    ``entries`` lists the target's files (:func:`safe_files.walk`); each tokenizer_config.json among them is read
    safely (a FIFO or a link out of the target is refused).
    """
    found = sorted(p.relative_to(root).as_posix() for p in entries if p.suffix == ".py")
    tokenizer_configs = sorted(p for p in entries if p.name == "tokenizer_config.json")
    for path in [*configs, *tokenizer_configs]:
        if "auto_map" in jail.json(path, limit=safe_files.MAX_TOKENIZER_BYTES):
            found.append(f"{path.relative_to(root).as_posix()}: auto_map")
    return found


def inspect_folder(
    root: Path,
    *,
    input: str,
    kind: str = "local",
    component: str | None = None,
    allow_pickle: bool = False,
    link_roots: tuple[Path, ...] = (),
) -> ResolvedTarget:
    """Inspect a transformers model folder or a diffusers pipeline folder and record what will be used.

    Every file read lies in ``root`` (a symlink may lead elsewhere in ``root`` or into one of ``link_roots``, a hub
    snapshot's blob store) and is a regular file.

    Raises:
        SourceNotFoundError: the folder does not exist.
        NotATextEncoderError: no config.json / no text encoder in the pipeline.
        UnsafeFileError: a file that leaves the folder or is not a regular file; a component name that is a path.
        PickleRefusedError, WeightsError, ConfigFileError, TokenizerError, UsageError: see :func:`weight_files`.
    """
    if not root.exists():
        raise SourceNotFoundError(f"{input}: no such file or folder")
    if not root.is_dir():
        raise UsageError(f"{input}: not a folder")
    jail = safe_files.Jail(root, link_roots or safe_files.hub_blob_store(root))
    pipeline_class = None
    if os.path.lexists(root / "model_index.json"):
        comps, pipeline_class = pipeline_components(root, component, jail, allow_pickle=allow_pickle)
    else:
        if component not in (None, "model"):
            raise UsageError(f"--component {component!r} given, but {input} is a single model, not a pipeline")
        comps = [model_component("model", root, root, jail, allow_pickle=allow_pickle)]
    used = used_files(root, comps)
    entries = list(safe_files.walk(root))
    return ResolvedTarget(
        input=input,
        kind=kind,
        root=root,
        components=comps,
        files=[file_record(p, root) for p in used],
        pipeline_class=pipeline_class,
        custom_code=custom_code(root, [c.config_path for c in comps], jail, entries),
        other_files=unused_weight_files(root, set(used), jail, entries),
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


def unused_weight_files(root: Path, used: set[Path], jail: safe_files.Jail, entries: list[Path]) -> list[str]:
    """Weight-like files in the target that the audit does not load (e.g. a pickle twin of the safetensors).

    A consumer may load them and the file checks read them, so each must be a regular file inside the target
    (UnsafeFileError otherwise).
    """
    suffixes = (*PICKLE_SUFFIXES, SAFETENSORS_SUFFIX)
    found = []
    for path in entries:
        if path.suffix in suffixes and path not in used:
            if os.path.exists(path):  # a dangling link cannot be loaded by anyone
                jail.regular(path)
            found.append(path.relative_to(root).as_posix())
    return sorted(found)


def tensor_shapes(path: Path, fmt: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a weights file: from a safetensors header, or from a pickle (a .ckpt) unpickled
    with ``weights_only`` once the serialization check finds only checkpoint imports in it."""
    if fmt == "safetensors":
        return {key: shape for key, (_, shape) in safe_files.safetensors_header(path).items()}
    from amdet_audit.encoders.weights import read_weight_file

    return {key: tuple(tensor.shape) for key, tensor in read_weight_file(path, "pickle").items()}


def resolve_file(path: Path, *, input: str, config: Path | None = None, allow_pickle: bool = False,
                 base: str | None = None, resolve_base: Callable[[str], ResolvedTarget] | None = None
                 ) -> ResolvedTarget:
    """A single weights file plus a config (``--config`` or config.json beside it) and a tokenizer beside either;
    a single-file checkpoint's text encoders; a text-encoder LoRA applied onto ``base`` (by ``resolve_base``).

    Raises:
        SourceNotFoundError: the file or the config does not exist.
        UsageError: no config given and none beside the file.
        PickleRefusedError: a pickle file without allow_pickle.
        UnsafeFileError: the file, the config or a tokenizer file is not a regular file, or a file found beside
            the weights links out of their folder.
    """
    if not os.path.lexists(path):
        raise SourceNotFoundError(f"{input}: no such file")
    try:
        safe_files.check_regular(path)
    except FileNotFoundError as err:  # a symlink whose target is gone
        raise SourceNotFoundError(f"{input}: a symbolic link to a file that does not exist") from err
    if path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise PickleRefusedError(f"{input}: pickle weights can run code; pass --allow-pickle to accept that risk")
        fmt = "pickle"
    elif path.suffix == SAFETENSORS_SUFFIX:
        fmt = "safetensors"
    else:
        raise UsageError(f"{input}: expected a .safetensors file (or pickle with --allow-pickle)")
    if config is None and (fmt == "safetensors" or not os.path.lexists(path.parent / "config.json")):
        from amdet_audit.sources.lora import PEFT_CONFIG, lora_format, resolve_lora
        from amdet_audit.sources.single_file import components, detect

        shapes = tensor_shapes(path, fmt)
        lora = lora_format(list(shapes))
        if lora is not None and fmt == "pickle":
            raise UsageError(f"{input}: a LoRA stored as a pickle; convert it to safetensors to scan it")
        if lora is not None:
            beside = [path.parent / PEFT_CONFIG] if os.path.lexists(path.parent / PEFT_CONFIG) else []
            for extra in beside:
                safe_files.check_regular(extra, path.parent)  # a link out of the folder, a FIFO: refused
            records = [file_record(p, path.parent) for p in (path, *beside)]
            if resolve_base is None:
                raise UsageError(f"{input}: a LoRA cannot be a base or a reference")
            return resolve_lora(path, list(shapes), lora, input=input, base=base, resolve_base=resolve_base,
                                records=records)
        layout = detect(shapes)
        if layout is not None:
            comps, notes = components(path, shapes, layout, fmt)
            return ResolvedTarget(input=input, kind="file", root=path.parent, components=comps,
                                  files=[file_record(path, path.parent)], pipeline_class=layout.pipeline_class,
                                  notes=notes)
    config_path = config or path.parent / "config.json"
    if not os.path.lexists(config_path):
        hint = "" if config else "; pass --config CONFIG.json"
        raise SourceNotFoundError(f"{config_path}: config not found{hint}")
    beside = safe_files.Jail(path.parent, safe_files.hub_blob_store(path.parent))
    data = read_model_config(config_path, None if config else beside)
    tok = next((d for d in (path.parent, config_path.parent) if has_tokenizer(d)), None)
    if tok is not None:
        check_tokenizer(tok, safe_files.Jail(tok, safe_files.hub_blob_store(tok)), whole_folder=False)
    architecture, model_type = describe_config(data)
    comp = Component(
        name="model",
        config_path=config_path,
        weight_files=(path,),
        tokenizer_path=tok,
        architecture=architecture,
        model_type=model_type,
        weight_format=fmt,
    )
    root = path.parent
    used = [path, config_path, *(tokenizer_files(tok) if tok else [])]
    return ResolvedTarget(input=input, kind="file", root=root, components=[comp],
                          files=[file_record(p, root) for p in used])
