"""What a resolved target is: files on local disk, their digests, and where they came from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SAFETENSORS_SUFFIX = ".safetensors"
TOKENIZER_FILE_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("vocab.txt",), ("spiece.model",))
TOKENIZER_EXTRAS = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def has_tokenizer(folder: Path) -> bool:
    """True when ``folder`` holds a complete set of tokenizer files."""
    return folder.is_dir() and any(all((folder / f).is_file() for f in files) for files in TOKENIZER_FILE_SETS)


@dataclass(frozen=True)
class FileRecord:
    """One file the audit used, relative to the target root, with its size and sha256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class LoraPatch:
    """A text-encoder LoRA to merge onto a component's weights when it is loaded (see amdet_audit.encoders.lora).

    path: the LoRA's safetensors file.
    format: ``kohya``, ``peft`` or ``diffusers``: how its tensors are named and where its alphas are.
    prefix: the start of the names of this component's tensors in the file (``lora_te1_``, ``text_encoder.``).
    config_path: PEFT's adapter_config.json (rank, alpha, rsLoRA, per-module patterns), when there is one.
    """

    path: Path
    format: str
    prefix: str
    config_path: Path | None = None


@dataclass(frozen=True)
class Component:
    """One text encoder inside a target (a plain model folder has one, a diffusers pipeline several).

    name: ``"text_encoder"``, ``"text_encoder_2"``... for pipelines; ``"model"`` for a plain folder or file.
    config_path: the encoder's config.json.
    weight_files: the safetensors (or, with --allow-pickle, pickle) files holding its weights.
    tokenizer_path: folder with the tokenizer files the consumer uses, or None when there is none.
    architecture: the config's class name, e.g. ``CLIPTextModel``.
    key_prefix: the prefix of its tensor names in a file it shares (``cond_stage_model.transformer.``).
    refusal: set when the component was found but cannot be loaded; loading it raises this reason.
    patch: a LoRA merged onto the weights on load (a LoRA target: the base's component plus the LoRA).
    """

    name: str
    config_path: Path
    weight_files: tuple[Path, ...]
    tokenizer_path: Path | None
    architecture: str
    model_type: str
    weight_format: str = "safetensors"
    key_prefix: str = ""  # where its tensors sit in a file shared with others (single-file checkpoints)
    key_layout: str = "transformers"  # the tensor names under it: transformers', or "openclip" (converted on load)
    refusal: str | None = None  # why it cannot be loaded although it was found (a layout not converted yet)
    patch: LoraPatch | None = None


@dataclass
class ResolvedTarget:
    """A target turned into files on local disk, with provenance.

    kind: ``hub``, ``local``, ``file``, ``canary``, ``package`` or ``lora`` (a LoRA file applied onto ``base``).
    root: the folder the FileRecord paths are relative to.
    commit_sha: the hub commit the files were fetched at (hub targets only).
    custom_code: files or config keys that would run code (auto_map, .py files); reported, never executed.
    other_files: files present in the target but not used (e.g. pickle files beside safetensors).
    base: for a LoRA, the resolved model it is applied onto (its files are the components' weight files).
    """

    input: str
    kind: str
    root: Path
    components: list[Component]
    files: list[FileRecord]
    repo_id: str | None = None
    revision: str | None = None
    commit_sha: str | None = None
    pipeline_class: str | None = None
    custom_code: list[str] = field(default_factory=list)
    other_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    base: ResolvedTarget | None = None

    def component(self, name: str) -> Component:
        """Return the component called ``name``."""
        for comp in self.components:
            if comp.name == name:
                return comp
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view, paths as strings."""
        data = asdict(replace(self, base=None))  # the base in its own view, not copied twice
        data["root"] = str(self.root)
        data["base"] = None if self.base is None else self.base.to_dict()
        for comp in data["components"]:
            comp["config_path"] = str(comp["config_path"])
            comp["weight_files"] = [str(p) for p in comp["weight_files"]]
            comp["tokenizer_path"] = None if comp["tokenizer_path"] is None else str(comp["tokenizer_path"])
            if comp["patch"] is not None:
                comp["patch"] = {k: None if v is None else str(v) for k, v in comp["patch"].items()}
        return data
