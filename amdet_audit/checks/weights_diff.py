"""The ``weights-diff`` check: which parts of each text encoder moved how far from the reference model.

Reads both models' safetensors tensors one at a time (no model is built; a LoRA target's change is added to its
base's tensors) and reports, per layer group, the
relative change ||W - W_ref|| / ||W_ref||, plus the token-embedding rows that moved most, decoded through the
target's vocabulary: a textual backdoor trained into new trigger tokens often shows there. Everything is
information for the reviewer (severity info), except an encoder whose tensors do not match the reference's
(low: the reference may be the wrong base).
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from amdet_audit.checks.base import CheckContext, CheckResult, Finding
from amdet_audit.errors import AmdetError, TokenizerError
from amdet_audit.sources import safe_files
from amdet_audit.sources.model import Component

WRAPPERS = ("model.", "transformer.")  # generic wrappers around the same tensors, beside each family's own prefix
EMBEDDING_KEYS = ("embeddings.token_embedding.weight", "embeddings.word_embeddings.weight")
TOP_ROWS = 5
LAYER = re.compile(r"^(.*?(?:layers?|block)\.\d+)\.")  # "encoder.layers.3.mlp.fc1.weight" -> "encoder.layers.3"


@functools.cache
def prefixes() -> tuple[str, ...]:
    """The prefixes under which checkpoints nest an encoder: each encoder family's ``STATE_PREFIX``, then the
    generic wrappers (imported on first use: the family modules import torch)."""
    from amdet_audit.encoders.load import FAMILIES

    nested = (getattr(module, "STATE_PREFIX", "") for module in FAMILIES.values())
    return (*(prefix for prefix in nested if prefix), *WRAPPERS)  # T5 nests nothing


def canonical(key: str) -> str:
    """A tensor name without the wrapper prefixes that differ between checkpoints of the same model."""
    for prefix in prefixes():
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def group_of(key: str) -> str:
    """The layer group a tensor belongs to (a numbered layer, or the module path without the leaf)."""
    match = LAYER.match(key)
    return match.group(1) if match else key.rsplit(".", 1)[0]


def tensor_names(component: Component) -> dict[str, tuple[Path, str]]:
    """canonical name -> (file, stored name) over a component's safetensors files (only its own tensors in a
    file shared with other parts, under its ``key_prefix``)."""
    from safetensors import safe_open

    names = {}
    for path in component.weight_files:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                if key.startswith(component.key_prefix):
                    names[canonical(key.removeprefix(component.key_prefix))] = (path, key)
    return names


def lora_changes(component: Component, names: dict[str, tuple[Path, str]]):
    """The changes a LoRA target's patch makes (``encoders.lora.Deltas``: ``name in it``, ``.change(name)``),
    or None without a patch."""
    if component.patch is None:
        return None
    from amdet_audit.encoders.lora import Deltas

    headers = {path: safe_files.safetensors_header(path) for path in {p for p, _ in names.values()}}
    return Deltas(component.patch, {name: headers[path][key][1] for name, (path, key) in names.items()})


def load(where: tuple[Path, str]):
    """One tensor, as float32."""
    from safetensors import safe_open

    with safe_open(str(where[0]), framework="pt") as handle:
        return handle.get_tensor(where[1]).float()


def vocabulary(component: Component, jail: safe_files.Jail) -> dict[int, str]:
    """Token id -> token text from tokenizer.json, vocab.json (BPE) or vocab.txt (WordPiece); empty if none.

    Each file is read through ``jail`` (a capped regular file inside the target); TokenizerError or
    UnsafeFileError names a file that is refused or a vocabulary entry whose id is not an integer.
    """
    folder = component.tokenizer_path
    if folder is None:
        return {}
    if not folder.resolve().is_relative_to(jail.root.resolve()):  # --tokenizer, the shipped vocabulary, a base
        jail = safe_files.Jail(folder, safe_files.hub_blob_store(folder))
    if os.path.lexists(folder / "tokenizer.json"):
        path = folder / "tokenizer.json"
        document = jail.json(path, limit=safe_files.MAX_TOKENIZER_BYTES, error=TokenizerError)
        model = document.get("model")
        vocab = model.get("vocab") if isinstance(model, dict) else None
        if isinstance(vocab, dict):
            return id_map(vocab, path)
    if os.path.lexists(folder / "vocab.json"):
        path = folder / "vocab.json"
        return id_map(jail.json(path, limit=safe_files.MAX_TOKENIZER_BYTES, error=TokenizerError), path)
    if os.path.lexists(folder / "vocab.txt"):
        path = folder / "vocab.txt"
        data = safe_files.read_bytes(path, limit=safe_files.MAX_TOKENIZER_BYTES, root=jail.root,
                                     link_roots=jail.link_roots, error=TokenizerError)
        try:
            return dict(enumerate(data.decode("utf-8").splitlines()))
        except UnicodeDecodeError as err:
            raise TokenizerError(f"{path}: not UTF-8 text") from err
    return {}


def id_map(vocab: dict[str, object], path: Path) -> dict[int, str]:
    """id -> token of a token -> id mapping; TokenizerError names the first id that is not an integer."""
    mapping = {}
    for token, index in vocab.items():
        if not isinstance(index, int) or isinstance(index, bool):
            raise TokenizerError(f"{path}: token {token[:40]!r} has the id {str(index)[:40]!r}, not an integer")
        mapping[index] = token
    return mapping


def compare(component: Component, reference: Component, jail: safe_files.Jail) -> tuple[dict[str, float],
                                                                                       list[Finding]]:
    """Scores and findings for one component against its reference component (the target's files in ``jail``)."""
    import torch

    mine, theirs = tensor_names(component), tensor_names(reference)
    changes = lora_changes(component, mine)  # a LoRA target: its base's tensors plus the LoRA's change
    shared = sorted(set(mine) & set(theirs))
    findings, groups = [], {}
    only = sorted(set(mine) ^ set(theirs))
    mismatched = []
    embedding_rows: list[tuple[float, int]] = []
    for key in shared:
        a, b = load(mine[key]), load(theirs[key])
        if changes is not None and key in changes:
            a = a + changes.change(key)
        if a.shape != b.shape:
            mismatched.append(key)
            continue
        delta, base = float((a - b).norm()), float(b.norm())
        sq = groups.setdefault(group_of(key), [0.0, 0.0])
        sq[0] += delta ** 2
        sq[1] += base ** 2
        if key in EMBEDDING_KEYS:
            moved = (a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-12)
            top = torch.topk(moved, min(TOP_ROWS, moved.numel()))
            embedding_rows = [(float(v), int(i)) for v, i in zip(top.values, top.indices, strict=True)]
    if only or mismatched or not shared:
        findings.append(Finding("weights-diff.architecture-mismatch", "low",
                                f"{component.name}: {len(only)} tensors in only one of target and reference, "
                                f"{len(mismatched)} of different shapes; is the reference the true base model?",
                                str(component.config_path.name)))
    relative = {g: (d ** 0.5) / max(b ** 0.5, 1e-12) for g, (d, b) in groups.items()}
    scores = {f"{component.name}:{g}": round(v, 6) for g, v in sorted(relative.items())}
    if relative:
        worst = max(relative, key=relative.__getitem__)
        scores[f"{component.name}:max_relative_change"] = round(relative[worst], 6)
        unchanged = sum(v == 0.0 for v in relative.values())
        findings.append(Finding("weights-diff.summary", "info",
                                f"{component.name}: {len(shared)} tensors compared; largest relative change "
                                f"{relative[worst]:.4f} in {worst}; {unchanged} of {len(relative)} layer groups "
                                f"unchanged"))
    if embedding_rows and embedding_rows[0][0] > 0:
        vocab = vocabulary(component, jail)
        listed = ", ".join(f"{vocab.get(i, f'#{i}')!r} {v:.3f}" for v, i in embedding_rows)
        findings.append(Finding("weights-diff.token-embeddings", "info",
                                f"{component.name}: token embeddings that moved most (relative change): {listed}"))
    return scores, findings


class WeightsDiffCheck:
    """Layer-wise distance of each text encoder from the reference model (needs a reference)."""

    id = "weights-diff"
    version = "1"
    description = "which layers and token embeddings moved how far from the reference model"

    def run(self, context: CheckContext) -> CheckResult:
        """Compare every component with the reference's same-named (or only) component."""
        if context.reference is None:
            return CheckResult(self.id, self.version, "skipped",
                               reason="no reference model (pass --reference, or scan a known base's fine-tune)")
        ref_components = {c.name: c for c in context.reference.components}
        scores, findings = {}, []
        single = len(context.target.components) == 1 and len(context.reference.components) == 1
        jail = safe_files.Jail(context.target.root, safe_files.hub_blob_store(context.target.root))
        for comp in context.target.components:
            ref = ref_components.get(comp.name) or (context.reference.components[0] if single else None)
            if ref is None:  # e.g. SDXL's text_encoder_2 against a reference for the first encoder
                findings.append(Finding("weights-diff.no-reference-component", "info",
                                        f"{comp.name}: the reference has no component of this name; not compared"))
                continue
            if comp.patch is not None and comp.key_layout != "transformers":
                findings.append(Finding("weights-diff.not-compared", "info", f"{comp.name}: a LoRA on a base in "
                                        "OpenCLIP's tensor layout (a single file); not compared"))
                continue
            if comp.weight_format != "safetensors" or ref.weight_format != "safetensors":
                return CheckResult(self.id, self.version, "skipped", reason="compares safetensors weights only")
            try:
                s, f = compare(comp, ref, jail)
            except AmdetError as err:  # a refused or malformed file of the target: the check could not complete
                return CheckResult(self.id, self.version, "error", reason=str(err))
            scores.update(s)
            findings.extend(f)
        return CheckResult(self.id, self.version, "ran", findings, scores)
