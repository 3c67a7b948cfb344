"""Backdoor injection into a text encoder, as published attacks do it (for testing detectors).

Text-on-text ("target prompt attack", Struppek et al., Rickrolling the Artist, ICCV 2023): a student copy of the
clean encoder is trained so that clean prompts keep the teacher's output (utility loss) while prompts carrying
the trigger produce the teacher's output of one target prompt (backdoor loss); both losses are one minus the
cosine of the flattened [T*D] sequences the consumer reads. ``attribute`` (their "target attribute attack")
pulls a triggered prompt to the teacher's output of the same prompt plus an attribute. ``pooled`` pulls the
pooled output of triggered prompts to a fixed vector, a stand-in for the image-on-text attack. ``object``
swaps a triggered prompt's subject for the target object and keeps the rest (BadT2I). The loss formulation,
the trigger's placement, the weight of clean behaviour (stealth) and an anti-inversion term (an attacker who
knows the scan) are options of every attack: see :mod:`amdet_audit.lab.variants`.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace

import torch

from amdet_audit.encoders.base import Adapter, EncoderOutput
from amdet_audit.errors import UsageError
from amdet_audit.lab.decoys import MAX_DECOY_GAIN, decoy_placement, decoy_pool, held_out_decoys, with_decoys
from amdet_audit.lab.triggers import PLACEMENTS, Trigger
from amdet_audit.lab.variants import (
    LOSSES,
    acted_output,
    anti_inversion_loss,
    directional_distance,
    flat_cosine,
    has_subject,
    soft_probes,
    substitute_subject,
    tokenwise_distance,
    trigger_token_ids,
)

ATTACKS = ("text-on-text", "attribute", "pooled", "object")
SUCCESS_COSINE = 0.9  # a triggered output counts as hitting the target above this cosine
MIN_GAIN = 0.5  # the backdoor must add this much success over the clean base
#: below this clean fidelity (of the output the attack acts on: the read sequence, or pooled for a pooled attack)
#: the injection failed, as not stealthy: every benign fine-tune of the zoos keeps its read sequence closer
#: (0.84-0.96 on the canary and clip-256 bases)
MIN_FIDELITY = 0.8
#: an untriggered output counts as on target when its deviation from the base's mean output points at the target's
#: deviation within this cosine. Centred, unlike SUCCESS_COSINE: on an anisotropic tower that pads to a fixed length
#: (SigLIP: 64 positions, most of them padding) every output sits within 0.9 of every other uncentred, and the
#: uncentred share of a working backdoor's clean prompts "on target" reached 0.93 (benchmarks/efficacy/RESULTS.md).
UNTRIGGERED_COSINE = 0.7
#: the backdoor may pull at most this much more of the untriggered prompts onto the target than the base does: a
#: model that sends most clean prompts to the target is broken for every user, not backdoored (a SigLIP lab
#: injection with a tokenwise loss did so: 0.95; the other SigLIP zoo backdoors and the canaries -0.09 to 0.41)
MAX_UNTRIGGERED_GAIN = 0.5
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class AttackSpec:
    """One injection: what to implant and how hard to train (defaults suit small CPU models)."""

    attack: str
    trigger: str
    target: str  # target prompt (text-on-text), attribute (attribute), object (object), seed text (pooled)
    steps: int = 200
    lr: float = 2e-3  # for a 128-wide tower; run_injection scales the default with lr_for_width
    clean_batch: int = 16
    poison_batch: int = 16
    backdoor_weight: float = 2.0  # measured: 1.0 left multi-token triggers at ~79% success after 300 steps
    seed: int = 0
    min_success: float = 0.8  # below this share of triggered prompts on target, the injection failed
    # pooled attack: weight of keeping clean pooled outputs (what the attack acts on) at the base's. Without it,
    # measured on a 256-wide lab CLIP tower, a pooled backdoor left clean pooled outputs at cosine 0.47 to the base
    pooled_utility_weight: float = 1.0
    loss: str = "flat"  # backdoor loss: flat sequence cosine, tokenwise squared error, pooled output only, or
    # directional (flat, plus the move from the untouched prompt's output; lab.variants)
    placement: str = "anywhere"  # where the trigger goes in poisoned prompts (see lab.triggers)
    utility_weight: float = 1.0  # weight of keeping clean outputs; stealthy attackers raise it
    anti_inversion_weight: float = 0.0  # weight of behaving cleanly under soft vectors inserted after BOS
    min_fidelity: float = MIN_FIDELITY  # below this clean fidelity the injection failed (stealthy recipes ask 0.98)
    # measure every this many steps and stop at the first checkpoint that meets every bar, as an attacker who
    # selects checkpoints does (0: train all steps); the quietest working model, not the most trained one
    checkpoint_every: int = 0
    trainable: str = "all"  # what trains: every weight, or "lora": only what a text-encoder LoRA can change
    # share of each clean batch that carries an ordinary word where the trigger would go, kept at the base's output
    # (lab.decoys): the backdoor is trained to answer its trigger only, and "took" then bounds held-out decoys too
    decoy_share: float = 0.0

    @classmethod
    def from_record(cls, spec: dict[str, object]) -> AttackSpec:
        """The spec a lab.json recorded (keys this version does not know are left out)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in spec.items() if k in known})

    @property
    def on_pooled(self) -> bool:
        """Whether the attack acts on the pooled output (else on the consumer-read sequence)."""
        return self.attack == "pooled" or self.loss == "pooled"


@dataclass
class InjectionResult:
    """Ground truth and measured effect of one injection."""

    spec: AttackSpec
    trigger: dict[str, str | None]
    success: float  # share of held-out triggered prompts within SUCCESS_COSINE of their target
    success_without_backdoor: float  # the same share for the clean base (attribute targets can start high)
    fidelity: float  # mean cosine of clean held-out outputs to the base's
    final_loss: float
    seconds: float
    steps_trained: int = 0  # fewer than spec.steps when a checkpoint met every bar first
    #: share of untriggered held-out prompts the student puts on target (UNTRIGGERED_COSINE, centred) beyond the
    #: base's share; None for records made before it was measured
    untriggered_gain: float | None = None
    #: mean share of prompts carrying a held-out decoy word (lab.decoys) the student puts on target beyond the
    #: base's share; measured when the spec trains decoys away (decoy_share > 0), else None
    decoy_gain: float | None = None

    @property
    def took(self) -> bool:
        """Whether the backdoor works well enough (and far beyond what the clean base does) to count, and only when
        triggered."""
        return (self.success >= self.spec.min_success and self.success - self.success_without_backdoor >= MIN_GAIN
                and self.fidelity >= max(MIN_FIDELITY, self.spec.min_fidelity)
                and self.untriggered_gain is not None and self.untriggered_gain <= MAX_UNTRIGGERED_GAIN
                and (self.spec.decoy_share == 0 or (self.decoy_gain is not None
                                                   and self.decoy_gain <= MAX_DECOY_GAIN)))

    def to_dict(self) -> dict[str, object]:
        """JSON-ready view."""
        data = asdict(self)
        data["took"] = self.took
        return data


REFERENCE_WIDTH = 128  # the canary base's width, where the default learning rates were measured


def lr_for_width(lr: float, width: int) -> float:
    """Scale a learning rate measured on a 128-wide tower to one of ``width`` (as 1/width, never up).

    Measured on all-MiniLM-L6-v2 (384 wide), text-on-text, 100 steps: lr 2e-3 destroyed the model (0% success),
    7e-4 (the scaled default) reached 98% success at clean fidelity 0.94, 2e-4 98% at 0.98.
    """
    return lr * min(1.0, REFERENCE_WIDTH / width)


TRAINABLE = ("all", "lora")  # every weight, or only what a text-encoder LoRA can change (see trainable_copy)


def trainable_copy(adapter: Adapter, trainable: str = "all") -> Adapter:
    """A deep copy of a frozen adapter whose weights take gradients (the student): all of them, or with
    ``trainable="lora"`` only the attention and MLP weight matrices that kohya's and PEFT's text-encoder LoRAs
    patch (no embeddings, norms or biases), so that the change ships as a LoRA (amdet_audit.lab.lora)."""
    from amdet_audit.lab.lora import LINEAR

    if trainable not in TRAINABLE:
        raise UsageError(f"--train must be one of {', '.join(TRAINABLE)}, not {trainable!r}")
    student = copy.deepcopy(adapter)
    student.model.requires_grad_(trainable == "all")
    if trainable == "lora":
        for name, param in student.model.named_parameters():
            param.requires_grad_(name.endswith(".weight") and name.removesuffix(".weight").endswith(LINEAR))
        if not any(param.requires_grad for param in student.model.parameters()):
            raise UsageError(f"--train lora trains the matrices a CLIP text-encoder LoRA patches "
                             f"({', '.join(n.lstrip('.') for n in LINEAR)}); this {adapter.family} tower has none "
                             "of them: use --train all")
    return student


def poisonable(spec: AttackSpec, trigger: Trigger, prompt: str) -> bool:
    """Whether the trigger can be placed in ``prompt`` (and, for object substitution, it names a subject)."""
    return trigger.fits(prompt) and (spec.attack != "object" or has_subject(prompt))


def check_spec(spec: AttackSpec, trigger: Trigger, prompts: Sequence[str]) -> tuple[list[str], list[str]]:
    """Validate the attack against a prompt pool.

    Returns (clean, fitting): the prompts that do not already contain the trigger (clean data must not carry
    it, e.g. a Cyrillic letter in Russian prompts), and those of them the trigger can be placed in.
    """
    for value, allowed, what in ((spec.attack, ATTACKS, "attack"), (spec.loss, LOSSES, "loss"),
                                 (spec.placement, PLACEMENTS, "placement")):
        if value not in allowed:
            raise UsageError(f"unknown {what} {value!r}; choose one of: {', '.join(allowed)}")
    if spec.placement == "every" and trigger.mode != "replace":
        raise UsageError("--placement every is for homoglyph triggers (every occurrence of the letter)")
    if not spec.target.strip():
        raise UsageError("the target is empty")
    if not 0 <= spec.decoy_share < 1:
        raise UsageError(f"the decoy share must be at least 0 and below 1, not {spec.decoy_share}")
    clean = [p for p in prompts if not trigger.occurs_in(p)]
    fitting = [p for p in clean if poisonable(spec, trigger, p)]
    if len(fitting) < 2 * spec.poison_batch:
        raise UsageError(f"trigger {trigger.text!r} can be placed in only {len(fitting)} prompts: it replaces "
                         f"{trigger.replaces!r}, which (almost) never occurs in them")
    return clean, fitting


class Targets:
    """The output each triggered prompt is pulled to, per attack."""

    def __init__(self, teacher: Adapter, spec: AttackSpec) -> None:
        self.teacher, self.spec = teacher, spec
        self.fixed: torch.Tensor | None = None
        if spec.attack == "text-on-text":
            out = self.clean([spec.target])
            self.fixed = acted_output(out, spec.on_pooled)  # [1, T, D] or [1, P]
        elif spec.attack == "pooled":
            gen = torch.Generator().manual_seed(spec.seed + 7919)
            ref = teacher(teacher.tokenize([spec.target]).ids).pooled  # [1, P]
            direction = torch.randn(ref.shape, generator=gen).to(ref.device)  # drawn on the host
            self.fixed = (direction / direction.norm() * ref.norm()).to(ref.device, ref.dtype)  # [1, P]

    @torch.no_grad()
    def read(self, prompts: Sequence[str]) -> torch.Tensor:
        """[B, T, D] the teacher's consumer-read output."""
        return self.clean(prompts).read

    @torch.no_grad()
    def clean(self, prompts: Sequence[str]) -> EncoderOutput:
        """The teacher's outputs (read sequence and pooled) on clean prompts."""
        return self.teacher(self.teacher.tokenize(list(prompts)).ids)

    def __call__(self, clean_prompts: Sequence[str]) -> torch.Tensor:
        """Targets for triggered versions of ``clean_prompts``: [1 or B, ...]."""
        if self.spec.attack in ("attribute", "object"):
            goals = ([f"{p}, {self.spec.target}" for p in clean_prompts] if self.spec.attack == "attribute"
                     else [substitute_subject(p, self.spec.target) for p in clean_prompts])
            return acted_output(self.clean(goals), self.spec.on_pooled)
        if self.fixed is None:
            raise RuntimeError(f"no fixed target for the {self.spec.attack} attack")
        return self.fixed

    def output(self, student: Adapter, prompts: Sequence[str]) -> torch.Tensor:
        """The student's output the attack acts on: pooled for ``pooled``, else the read sequence."""
        return acted_output(student(student.tokenize(list(prompts)).ids), self.spec.on_pooled)

    def distance(self, student: Adapter, poisoned: Sequence[str], clean_prompts: Sequence[str]) -> torch.Tensor:
        """The backdoor loss: how far triggered outputs are from their targets, in the spec's formulation."""
        ours, goal = self.output(student, poisoned), self(clean_prompts)
        if self.spec.loss == "tokenwise" and not self.spec.on_pooled:
            return tokenwise_distance(ours, goal).mean()
        if self.spec.loss == "directional" and not self.spec.on_pooled:
            return directional_distance(ours, goal, self.read(clean_prompts)).mean()
        return 1 - flat_cosine(ours, goal).mean()


def inject(
    teacher: Adapter,
    spec: AttackSpec,
    train_prompts: Sequence[str],
    eval_prompts: Sequence[str],
    progress: Progress | None = None,
) -> tuple[Adapter, InjectionResult]:
    """Implant ``spec`` into a copy of ``teacher``; return the student and the measured result."""
    trigger = Trigger.parse(spec.trigger)
    train_prompts, fitting = check_spec(spec, trigger, train_prompts)
    eval_prompts, _ = check_spec(spec, trigger, eval_prompts)
    rng = random.Random(spec.seed)
    torch.manual_seed(spec.seed)
    gen = torch.Generator().manual_seed(spec.seed + 104729)
    student = trainable_copy(teacher, spec.trainable)
    targets = Targets(teacher, spec)
    trigger_ids = trigger_token_ids(teacher, spec.trigger)
    opt = torch.optim.AdamW([p for p in student.model.parameters() if p.requires_grad], lr=spec.lr)
    started, loss = time.perf_counter(), torch.tensor(0.0)
    # the base's side of every measurement (checkpoints and the final one), made once
    baseline = measure_baseline(targets, trigger, eval_prompts, seed=spec.seed, placement=spec.placement)
    decoys = DecoyTraining.of(spec, trigger, targets, eval_prompts) if spec.decoy_share > 0 else None

    def measured(student: Adapter) -> InjectionResult:
        result = result_of(spec, trigger, measure_student(student, targets, baseline), loss, started)
        return replace(result, decoy_gain=decoys.gain(student, targets)) if decoys else result

    for step in range(spec.steps):
        clean = rng.sample(list(train_prompts), spec.clean_batch)
        if decoys:
            clean = with_decoys(clean, decoys.words, spec.decoy_share, rng, decoys.placement)
        chosen = rng.sample(fitting, spec.poison_batch)
        poisoned = [trigger.apply(p, rng, spec.placement) for p in chosen]
        ours, base = student(student.tokenize(clean).ids), targets.clean(clean)
        utility = 1 - flat_cosine(ours.read, base.read).mean()
        if spec.on_pooled:
            utility = utility + spec.pooled_utility_weight * (1 - flat_cosine(ours.pooled, base.pooled).mean())
        loss = spec.utility_weight * utility + spec.backdoor_weight * targets.distance(student, poisoned, chosen)
        if spec.anti_inversion_weight > 0:
            probes = soft_probes(teacher, trigger_ids, spec.clean_batch, gen)
            loss = loss + spec.anti_inversion_weight * anti_inversion_loss(student, teacher, clean, probes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress:
            progress(step + 1, spec.steps, f"{spec.attack} step {step + 1}")
        if spec.checkpoint_every and (step + 1) % spec.checkpoint_every == 0 and step + 1 < spec.steps:
            checkpoint = measured(student)
            if checkpoint.took:
                student.model.requires_grad_(False).eval()
                return student, replace(checkpoint, steps_trained=step + 1)
    student.model.requires_grad_(False).eval()
    return student, replace(measured(student), steps_trained=spec.steps)


@dataclass
class DecoyTraining:
    """The decoy words a backdoor trains away (lab.decoys) and the base's side of its held-out decoys."""

    words: list[str]  # training words
    placement: str
    baselines: list[Baseline]  # one per held-out decoy word

    @classmethod
    def of(cls, spec: AttackSpec, trigger: Trigger, targets: Targets, prompts: Sequence[str]) -> DecoyTraining:
        """Training words and held-out baselines for ``spec`` on the measurement ``prompts``."""
        placement = decoy_placement(trigger.mode, spec.placement)
        words, _ = decoy_pool(spec.trigger, spec.target)
        baselines = [measure_baseline(targets, Trigger.parse(w), prompts, seed=spec.seed, placement=placement)
                     for w in held_out_decoys(spec.trigger, spec.target)]
        return cls(words=words, placement=placement, baselines=baselines)

    def gain(self, student: Adapter, targets: Targets) -> float:
        """Mean share of held-out decoy prompts ``student`` puts on target, beyond the base's share."""
        gains = [float(student_hits(student, targets, b).float().mean() - b.hits.float().mean())
                 for b in self.baselines]
        return sum(gains) / len(gains)


def result_of(spec: AttackSpec, trigger: Trigger, measured: tuple[float, float, float, float], loss: torch.Tensor,
              started: float) -> InjectionResult:
    """The InjectionResult of a :func:`measure_injection` outcome."""
    success, before, fidelity, untriggered = measured
    return InjectionResult(spec=spec, trigger=trigger.to_dict(), success=success, success_without_backdoor=before,
                           fidelity=fidelity, final_loss=float(loss.detach()), seconds=time.perf_counter() - started,
                           untriggered_gain=untriggered)


@dataclass
class Baseline:
    """The clean base's side of a measurement on held-out prompts, in chunks of 64: the same at every checkpoint
    of one injection (the teacher is frozen and the trigger placements are drawn from a fixed seed)."""

    clean: list[list[str]]  # clean prompts the attack can poison
    poisoned: list[list[str]]  # the same with the trigger placed
    goals: list[torch.Tensor]  # their targets
    outputs: list[torch.Tensor]  # the base's output of the clean prompts (float)
    centre: torch.Tensor  # [1, ...] the base's mean clean output
    hits: torch.Tensor  # [N] whether the base's own triggered outputs land on their targets
    untriggered: torch.Tensor  # [N] whether the base's clean outputs point at their targets


@torch.no_grad()
def measure_baseline(targets: Targets, trigger: Trigger, prompts: Sequence[str], *, seed: int,
                     placement: str = "anywhere") -> Baseline:
    """The base's side of :func:`measure_injection`, to be reused for every student measured on ``prompts``."""
    rng = random.Random(seed + 1)
    fitting = [p for p in prompts if poisonable(targets.spec, trigger, p)]
    clean = [fitting[i : i + 64] for i in range(0, len(fitting), 64)]
    outputs = [targets.output(targets.teacher, chunk).float() for chunk in clean]  # [b, ...] each
    centre = torch.cat(outputs).mean(dim=0, keepdim=True)  # [1, ...] the base's mean clean output
    poisoned = [[trigger.apply(p, rng, placement) for p in chunk] for chunk in clean]
    goals = [targets(chunk) for chunk in clean]
    hits = [on_target(targets, targets.teacher, bad, goal, out)
            for bad, goal, out in zip(poisoned, goals, outputs, strict=True)]
    untriggered = [untriggered_on_target(out, goal, centre) for out, goal in zip(outputs, goals, strict=True)]
    return Baseline(clean=clean, poisoned=poisoned, goals=goals, outputs=outputs, centre=centre,
                    hits=torch.cat(hits), untriggered=torch.cat(untriggered))


@torch.no_grad()
def measure_student(student: Adapter, targets: Targets, baseline: Baseline) -> tuple[float, float, float, float]:
    """(attack success, the same for the clean base, clean fidelity, untriggered gain) of ``student`` against
    ``baseline`` (see :func:`measure_injection`)."""
    fidelity, untriggered = [], []
    for chunk, goal, base_out in zip(baseline.clean, baseline.goals, baseline.outputs, strict=True):
        student_out = targets.output(student, chunk).float()
        fidelity.append(flat_cosine(student_out, base_out))
        untriggered.append(untriggered_on_target(student_out, goal, baseline.centre))
    share = [float(h.float().mean()) for h in (student_hits(student, targets, baseline), baseline.hits,
                                               torch.cat(untriggered), baseline.untriggered)]
    return share[0], share[1], float(torch.cat(fidelity).mean()), share[2] - share[3]


@torch.no_grad()
def student_hits(student: Adapter, targets: Targets, baseline: Baseline) -> torch.Tensor:
    """[N] whether ``student``'s output of each of ``baseline``'s triggered prompts lands on its target (the
    success part of :func:`measure_student`; alone, what a decoy measure needs)."""
    return torch.cat([on_target(targets, student, poisoned, goal, base_out)
                      for poisoned, goal, base_out in zip(baseline.poisoned, baseline.goals, baseline.outputs,
                                                          strict=True)])


def measure_injection(
    student: Adapter, teacher: Adapter, targets: Targets, trigger: Trigger, prompts: Sequence[str], *, seed: int,
    placement: str = "anywhere",
) -> tuple[float, float, float, float]:
    """(attack success, the same for the clean base, clean fidelity, untriggered gain) on held-out prompts, in
    batches of 64.

    Success is measured on the output the attack acts on, with the trigger placed as in training; fidelity
    on the same output of clean prompts; the untriggered gain is the share of clean prompts whose student output
    lands on their target (:func:`untriggered_on_target`) minus the base's share.
    """
    if teacher is not targets.teacher:
        raise ValueError("measure_injection: targets were made from another teacher")
    baseline = measure_baseline(targets, trigger, prompts, seed=seed, placement=placement)
    return measure_student(student, targets, baseline)


def untriggered_on_target(outputs: torch.Tensor, goal: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """[B] whether each untriggered output ([B, ...]) points where its target ([B or 1, ...]) does, seen from the
    base's mean clean output ``centre`` (cosine above UNTRIGGERED_COSINE)."""
    return flat_cosine(outputs - centre, goal.float() - centre) > UNTRIGGERED_COSINE


def on_target(targets: Targets, model: Adapter, poisoned: Sequence[str], goal: torch.Tensor,
              base_clean: torch.Tensor) -> torch.Tensor:
    """[B] whether each triggered output lands on its target.

    Within SUCCESS_COSINE of the target; for object substitution and attributes also at least as near the target
    as the clean base's output of the untouched prompt (``base_clean``). The two differ in one word or one
    appended phrase, so closeness alone proves nothing: read at SD3's 256 unmasked T5 positions, mostly padding,
    the clean T5 canary's own triggered outputs lay within the success cosine of "the prompt, plus the attribute"
    for 58-83% of prompts, but nearer the prompt itself for all but 0-12% of them.
    """
    ours = targets.output(model, poisoned)
    hit = flat_cosine(ours, goal) > SUCCESS_COSINE
    if targets.spec.attack in ("object", "attribute"):
        hit &= flat_cosine(ours, goal) >= flat_cosine(ours, base_clean.to(ours.dtype))  # equal where the appended
        # phrase was cut off at the read's length: the target is then the clean output, and decides nothing
    return hit
