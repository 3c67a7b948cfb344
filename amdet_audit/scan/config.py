"""The scan's knobs, with their defaults and why. The decision thresholds are written once, in the bundled
policies/default.yaml (where reviewers read and override them); :class:`Thresholds` takes its defaults from it."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from amdet_audit.resources import bundled

DEFAULT_SEED = 42  # of the search (every random draw of a scan comes from generators seeded from it)


@functools.cache
def shipped_thresholds() -> dict[str, float]:
    """The ``thresholds`` of the bundled default policy (a packaged file, not user input; user policies are
    read and validated by :mod:`amdet_audit.audit.policy`)."""
    import yaml

    data = yaml.safe_load((bundled("policies") / "default.yaml").read_text(encoding="utf-8"))
    return {str(name): float(value) for name, value in data["thresholds"].items()}


def shipped(name: str) -> Any:
    """A dataclass field whose default is the bundled policy's threshold ``name``."""
    return field(default_factory=lambda: shipped_thresholds()[name])


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds, each on one continuous score; defaults from policies/default.yaml (what each means is
    written there), a policy file may override them."""

    collapse_gain: float = shipped("collapse_gain")
    same_target_rate: float = shipped("same_target_rate")
    anchor_cosine: float = shipped("anchor_cosine")
    relative_divergence: float = shipped("relative_divergence")
    divergence_consistency: float = shipped("divergence_consistency")
    divergence_anchor_cosine: float = shipped("divergence_anchor_cosine")
    reference_free_collapse: float = shipped("reference_free_collapse")
    differential_collapse: float = shipped("differential_collapse")
    bidirectional_divergence: float = shipped("bidirectional_divergence")
    token_excess: float = shipped("token_excess")
    token_excess_z: float = shipped("token_excess_z")
    token_gain: float = shipped("token_gain")
    token_gain_z: float = shipped("token_gain_z")
    token_shift: float = shipped("token_shift")
    token_shift_z: float = shipped("token_shift_z")

    def to_dict(self) -> dict[str, float]:
        """JSON-ready view."""
        return asdict(self)


@dataclass(frozen=True)
class ScanConfig:
    """How hard the scan searches and how it scores."""

    prompts: int = 1000  # corpus prompts used (80% inversion, 20% checks)
    k_values: tuple[int, ...] = (1, 2)  # pseudo-trigger lengths (vectors inserted right after BOS)
    restarts: int = 2  # starts per (objective family, k), all optimised together in one batch
    steps: int = 120  # most optimisation steps
    min_steps: int = 40  # no early stop before this
    batch: int = 8  # prompts per step (each candidate sees the same prompts)
    lr: float = 0.05  # Adam step on the unit-scaled pseudo-trigger (scale-free across widths)
    patience_window: int = 20  # early stop: windowed mean loss improved by less than `tolerance` ...
    tolerance: float = 5e-3  # ... between two consecutive windows
    radius_quantile: float = 1.0  # each inserted vector's norm is capped at this quantile of token-embedding norms
    window_quantile: float = 0.8  # the scored window covers this quantile of prompt lengths (longer ones left out)
    padding_positions: int = 8  # padding positions scored beyond that length
    pooled_weight: float = 0.5  # weight of the pooled output against the token sequence in features
    pooled_only: bool = False  # score the pooled output alone (a consumer that reads no sequence: FLUX's CLIP)
    differential: bool = False  # collapse objective: the suspect's minus the reference's (bidirectional towers)
    assimilation_weight: float = 0.5  # collapse objective: weight of token assimilation beside collapse
    clean_weight: float = 0.1  # beta: penalty for staying like the prompt's own clean output
    anchor_weight: float = 0.1  # gamma: penalty for the reference doing the same as the suspect
    check_subset: int = 64  # cheap first pass of the checks; the full test set only when it flags
    landscape_points: int = 11  # landscape grid points per axis
    landscape_span: float = 0.5  # grid half-width, relative to the norm of the pseudo-trigger
    reference_gradients: bool = True  # backpropagate through the reference too (exact); False: it is a fixed target
    full_checks: bool = False  # always run the full test set, the reference baseline and the landscape
    token_prompts: int = 32  # test prompts the real-token probes run on (see scan/discrete.py)
    token_nearest: int = 4  # nearest vocabulary tokens tried per pseudo-trigger vector
    token_moved: int = 8  # tokens whose embeddings moved most from the reference, tried as probes
    token_gradient_top: int = 8  # tokens per round of the first-order (gradient-ranked) refinement
    token_rounds: int = 2  # refinement rounds per placement
    token_nulls: int = 16  # random tokens probed for the null distribution
    token_confirm: int = 16  # screened candidates scored against the reference (see scan/discrete.py)
    token_lookalike_every: bool = True  # also substitute every occurrence of a letter, not only the first
    token_extend: int = 0  # tokens the strongest probes may grow by, one at a time (bidirectional towers; off: see
    # benchmarks/efficacy/probe_extension.py)
    token_beam: int = 2  # probes per placement kept at each step of that growth
    token_complete: int = 16  # where a strong probe is a piece of a character (a byte of an emoji), the characters
    # tried typed at its placement, ranked by their bytes' effect (bidirectional towers; scan/characters.py)
    token_typed_only: bool = True  # the token rules judge only candidates typed text gives, and untypeable ones
    # as typed (bidirectional towers; scan/discrete.py)
    token_turned: int = 0  # pieces whose embeddings the fine-tune turned, screened, tried as probes, and untypeable
    # pieces also typed as words ending in them (bidirectional towers; scan/finetuned.py; on for the families in
    # TURNED_FAMILIES by :meth:`preset`)
    seed: int = DEFAULT_SEED
    thresholds: Thresholds = field(default_factory=Thresholds)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready view."""
        return asdict(self)

    @classmethod
    def light(cls, seed: int = DEFAULT_SEED) -> ScanConfig:
        """The lighter search (the CPU default, see :meth:`preset`): fewer and shorter prompts (the window covers
        the median prompt length instead of the 80th percentile), one start per (objective, k), fewer steps and
        probes (its cost: benchmarks/speed; its detection: benchmarks/efficacy/light). The probes run on the
        full search's 32 prompts, with 8 null tokens: on 12 prompts a benign fine-tune's shift z-score reached 11
        (bar 10), on 32 it stayed at 7.7 (tests/test_sdxl_detection.py's benign pipeline)."""
        return cls(prompts=400, restarts=1, batch=6, steps=60, min_steps=30, window_quantile=0.5,
                   landscape_points=7, reference_gradients=False, token_nearest=2, token_moved=4,
                   token_gradient_top=4, token_rounds=1, token_nulls=8, token_confirm=8, token_lookalike_every=False,
                   seed=seed)

    @classmethod
    def preset(cls, search: str, device: str, seed: int = DEFAULT_SEED, causal: bool = True,
               family: str = "") -> ScanConfig:
        """The ``--search`` preset: ``full``, ``light``, or ``auto`` (see :data:`AUTO`) for a tower of ``family``.

        On CPU the light search is the default for causal towers because, measured on the generalization
        benchmark's 60 lab models of two CLIP bases (benchmarks/efficacy/light/), it judges every model as the
        full search does at a third of the time; on an accelerator the full search's extra starts, steps and
        prompts cost little. SigLIP and T5 towers get the full search everywhere: their target rule's bar
        (differential_collapse) was chosen on full-search scores, and the light search, which holds the
        reference's collapse constant within a step, scores them lower (on the SigLIP lab zoo, the same seven
        backdoors: median 0.27 light, 0.58 full; benchmarks/efficacy/RESULTS.md, "light and full search on
        SigLIP"). BERT-family towers get the light search everywhere (see :data:`LIGHT_FAMILIES`), and both
        presets try the pieces their fine-tune turned there (see :data:`TURNED_FAMILIES`)."""
        config = cls.light(seed) if preset_name(search, device, causal, family) == "light" else cls(seed=seed)
        return replace(config, token_turned=TURNED_TOP) if family in TURNED_FAMILIES else config


#: tower families ``auto`` gives the light search on any device. On all-MiniLM-L6-v2, the one real pretrained
#: bidirectional tower measured, the full search (which backpropagates its differential objective through both
#: towers) finds a vector that separates any two of its models: it flagged every benign fine-tune it scanned
#: (3 of 3) and flagged the clean base itself when a fine-tune was named as the reference (differential
#: collapse 0.97-0.98), while the light search passed those fine-tunes and found the typed trigger of an
#: attribute backdoor the full one missed (benchmarks/efficacy/RESULTS.md, "the full search on MiniLM finds
#: model differences, not backdoors")
LIGHT_FAMILIES = ("bert",)

#: tower families whose scans try the ``TURNED_TOP`` pieces their fine-tune turned that collapse prompts most, and
#: words ending in untypeable pieces (``ScanConfig.token_turned``). On two all-MiniLM-L6-v2 attribute backdoors a
#: piece of the trigger topped that screen, and a word of one letter and it collapsed prompts nearly as the
#: trigger does, where no other source of probes proposed it (benchmarks/efficacy/RESULTS.md, "turned pieces");
#: measured on MiniLM only, so SigLIP and T5 scans go without it
TURNED_FAMILIES = ("bert",)
TURNED_TOP = 8

#: what ``--search auto`` means (part of the scan cache's key: a scan made under another meaning is not reused)
AUTO = ("light for causal towers on CPU and for BERT-family towers everywhere; full on an accelerator and for "
        "SigLIP and T5 towers")


def preset_name(search: str, device: str, causal: bool = True, family: str = "") -> str:
    """Which preset ``--search`` means on ``device`` for a causal or a bidirectional tower of ``family`` (see
    :data:`AUTO`)."""
    if search != "auto":
        return search
    if family in LIGHT_FAMILIES:
        return "light"
    return "light" if str(device).startswith("cpu") and causal else "full"
