"""Token-space trigger search: the candidates a pseudo-trigger points to, tried as real, typeable input.

An attacker's trigger must be something a user can type. The soft pseudo-trigger (a free vector right after
the start token) finds the backdoor's basin, but an attacker who keeps clean behaviour at 0.99, places the
trigger only at the prompt's end, or trains soft vectors after the start token to behave cleanly, leaves
that vector little to find, while the real trigger still works. So the scan also tries real input:

- probes: tokens nearest to each pseudo-trigger vector, tokens whose embeddings moved most from the
  reference, tokens ranked by a first-order (HotFlip-style) estimate of the collapse objective over the
  whole vocabulary, refined greedily, each inserted after the start token and before the end token; on a
  BERT-family tower also the pieces whose embeddings the fine-tune turned that collapse the prompts most, and
  an untypeable piece typed as the word of one character that ends in it (scan/finetuned.py); on a
  bidirectional tower, where a strong probe is a piece of a character (a lone byte of an emoji, which no typed
  text gives), the whole characters whose bytes do most are tried as typed (scan/characters.py), and the
  strongest probes can grow, a token at a time on either side, into multi-token probes (a trigger spelt in
  several pieces; off by default); and every single-letter look-alike substitution (a homoglyph trigger)
  applied to real prompts; on a bidirectional tower the rules judge only what typed text gives: a one-piece
  candidate no text types to in place (a piece without its word-start mark before a prompt) is replaced by its
  text typed as a word of its own, and an untypeable one of several pieces is left out;
- features: what a triggered prompt's consumer reads after the trigger: the end-token state, the mean of the
  padding states after it and the pooled output, each centred by the clean corpus mean and scaled to unit
  typical norm (positions before an end-placed trigger cannot change in a causal tower, so they are left out;
  a bidirectional tower's end state and pooled output see the whole prompt);
- scores: cross-prompt collapse of the suspect beyond the reference's under the same probe (as a difference, the
  excess, and as the share of the reference's room to full collapse that the suspect closes, the gain), and the
  consistent shift the probe causes in the suspect but not in the reference, each also as a robust z-score
  against random vocabulary tokens probed the same way (a null distribution of this very model pair; a grown
  probe's against random sequences of its own length).

Inspired by NLP trigger inversion in token space (DBS, Shen et al. 2022; PICCOLO, Liu et al. 2022); no code
from either.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from amdet_audit.encoders.base import Adapter, EncoderOutput
from amdet_audit.scan.characters import (
    PROOF,
    complete_characters,
    part_of_character,
    speller,
    typed_ids,
    unknown_character_ids,
)
from amdet_audit.scan.features import collapse, collapse_gain, move_cosine, spread_ratio
from amdet_audit.scan.finetuned import MOST_TURNED, continuation_words, continuations, turned_ids
from amdet_audit.scan.lookalikes import LOOKALIKES, UNLIKE, substitute_every, substitute_first, substitutions

PLACEMENTS = ("start", "end")
MAD_FLOOR = 0.01  # least spread of the null distribution (a z-score of noise must stay finite)
TYPEABLE_SHARE = 0.5  # a candidate is typeable when typed text gives it on at least this share of the prompts
TYPED_ORIGINS = ("completed", "out-of-vocabulary", "typed")  # candidates made by typing text
SCREEN_PROMPTS = 8  # the shortest test prompts a batch screen of many probes runs on (turned pieces, words)
SCREEN_CHUNK = 16  # probes per forward pass of that screen


@dataclass(frozen=True)
class Probe:
    """One real-input trigger candidate: token ids inserted at a placement, or a look-alike substitution."""

    label: str
    placement: str  # "start", "end" or "text"
    tokens: tuple[int, ...] = ()
    substitution: tuple[str, str, str] | None = None  # (latin, twin, "first" | "every")
    origin: str = field(default="", compare=False)  # why it was tried: nearest, moved, turned, gradient,
    # lookalike, out-of-vocabulary, extended, completed, byte, typed, null
    text: str = field(default="", compare=False)  # the text typed to give it (a typed twin's), shown as its text


@dataclass
class ProbeScore:
    """Scores of one probe on the test prompts."""

    probe: Probe
    collapse: float  # suspect's cross-prompt collapse under the probe
    excess: float  # minus the reference's (only the suspect's collapse while screening)
    shift: float  # consistent shift the probe causes in the suspect beyond the reference, relative to size
    gain: float = 0.0  # share of the reference's room to full collapse the suspect closes (the collapse alone while
    # screening; features.collapse_gain)
    excess_z: float = 0.0
    shift_z: float = 0.0
    gain_z: float = 0.0
    spread: float | None = None  # suspect's spread ratio under the probe (features.spread_ratio; with a reference)
    reference_spread: float | None = None  # the reference's under the same probe
    move_cosine: float | None = None  # cosine of the suspect's and the reference's mean moves under the probe
    # (features.move_cosine; with a reference): near 1 when the suspect only goes further where the reference goes


@dataclass
class TokenSearch:
    """Outcome of the token-space search."""

    best_collapse: ProbeScore | None  # judged by its excess, or by its gain (``by_gain``)
    best_shift: ProbeScore | None
    probes: int
    null: dict[str, float] = field(default_factory=dict)
    top: list[ProbeScore] = field(default_factory=list)
    by_gain: bool = False  # best_collapse was judged by its gain (bidirectional towers; see search_tokens)
    confirmed: list[ProbeScore] = field(default_factory=list)  # every probe scored against the reference, the
    # token rules' choice
    untypeable: int = 0  # candidates no typed text gives, left unjudged (a one-piece one's typed twin judged
    # instead)


@dataclass
class Tail:
    """Centring and scaling of one encoder's tail parts (end state, padding mean, pooled), from clean prompts."""

    centres: tuple[torch.Tensor, ...]
    scales: tuple[float, ...]

    def features(self, parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """[B, D], [B, D], [B, P] -> [B, F] centred, scaled, concatenated."""
        return torch.cat([(p.float() - c) / s for p, c, s in zip(parts, self.centres, self.scales, strict=True)], dim=1)


def tail_parts(out: EncoderOutput, eos: torch.Tensor, padding: int,
               pooled_only: bool = False) -> tuple[torch.Tensor, ...]:
    """(end-token state [B, D], mean of the next ``padding`` states [B, D], pooled [B, P]); (pooled,) alone
    for a consumer that reads no sequence."""
    if pooled_only:
        return (out.pooled,)
    B, T, _ = out.read.shape
    rows = torch.arange(B, device=out.read.device)
    after = (eos.unsqueeze(1) + torch.arange(1, padding + 1, device=eos.device)).clamp(max=T - 1)  # [B, pad]
    pad_mean = out.read[rows.unsqueeze(1), after].mean(dim=1)  # [B, pad, D] -> [B, D]
    return out.read[rows, eos], pad_mean, out.pooled


def fit_tail(parts: tuple[torch.Tensor, ...]) -> Tail:
    """Centres (means) and scales (typical centred norms) of clean tail parts."""
    centres = tuple(p.float().mean(dim=0) for p in parts)
    scales = tuple(max(float((p.float() - c).norm(dim=-1).mean()), 1e-8) for p, c in zip(parts, centres, strict=True))
    return Tail(centres, scales)


@dataclass
class Batch:
    """Probe inputs for a set of prompts: ids [B, L] cut to what the tail needs, end-token positions [B]."""

    ids: torch.Tensor
    eos: torch.Tensor


class ProbeRunner:
    """Builds probe inputs for fixed test prompts and scores them on the suspect and reference."""

    def __init__(self, suspect: Adapter, reference: Adapter | None, prompts: Sequence[str], padding: int,
                 pooled_only: bool = False) -> None:
        self.suspect, self.reference, self.prompts, self.padding = suspect, reference, list(prompts), padding
        self.pooled_only = pooled_only
        self.clean = self.tokenized(self.prompts)
        ids, eos = self.clean.ids.cpu(), self.clean.eos.cpu()
        self.rows = [row[: int(e) + 1].tolist() for row, e in zip(ids, eos, strict=True)]  # BOS .. EOS each
        self.suspect_features: dict[Probe, torch.Tensor] = {}  # [B, F] per probe, kept for the second pass
        self.typists: dict[int, tuple[set[int], Callable[[Sequence[int]], str], list[bool]]] = {}  # per
        # tokenizer's adapter: its special ids, ids -> text, and per prompt whether its text tokenizes back to it
        self.prompts_alike: bool | None = None  # the reference's tokenizer names the prompts' pieces as ours
        self.typed_shares: dict[Probe, float] = {}
        self.s_tail, self.s_clean = self.fit(suspect)
        self.r_tail, self.r_clean = self.fit(reference) if reference is not None else (None, None)

    def tail(self, out: EncoderOutput, eos: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The tail parts the probes are scored on (:func:`tail_parts`)."""
        return tail_parts(out, eos, self.padding, self.pooled_only)

    def tokenized(self, prompts: Sequence[str], adapter: Adapter | None = None) -> Batch:
        """Tokenize as the consumer does (with the suspect's tokenizer unless ``adapter`` is given); the end token
        sits at the last real position."""
        batch = (adapter or self.suspect).tokenize(list(prompts))
        return self.cut(Batch(batch.ids, batch.attention_mask.sum(dim=1) - 1))

    def cut(self, batch: Batch) -> Batch:
        """Drop positions beyond the tail where earlier states do not depend on them (a causal tower, or one that
        masks its padding); a tower that attends its padding runs at full length."""
        if not self.suspect.causal and getattr(self.suspect, "attends_padding", True):
            return batch
        length = min(batch.ids.shape[1], int(batch.eos.max()) + self.padding + 1)
        return Batch(batch.ids[:, :length], batch.eos)

    @torch.no_grad()
    def fit(self, adapter: Adapter) -> tuple[Tail, torch.Tensor]:
        """Tail statistics of ``adapter`` on the clean prompts, and their clean features [B, F]."""
        parts = self.tail(adapter(self.clean.ids), self.clean.eos)
        tail = fit_tail(parts)
        return tail, tail.features(parts)

    def inputs(self, probe: Probe) -> Batch:
        """The test prompts carrying ``probe``."""
        if probe.substitution is not None:
            latin, twin, mode = probe.substitution
            change = substitute_every if mode == "every" else substitute_first
            return self.tokenized([change(p, latin, twin) for p in self.prompts])
        T = min(self.clean.ids.shape[1] + len(probe.tokens), self.suspect.max_length)
        rows, eos, pad, at = [], [], self.suspect.pad_id, self.suspect.insert_position
        for row in self.rows:  # row: [BOS] .. EOS
            body = ([*row[:at], *probe.tokens, *row[at:]] if probe.placement == "start"
                    else [*row[:-1], *probe.tokens, row[-1]])
            body = body[: T - 1] + [row[-1]] if len(body) > T else body  # a prompt cut to T keeps its end token
            eos.append(len(body) - 1)
            rows.append(body + [pad] * (T - len(body)))
        device = self.clean.ids.device
        return self.cut(Batch(torch.tensor(rows, device=device), torch.tensor(eos, device=device)))

    def typeable(self, probe: Probe) -> float:
        """Share of the test prompts on which some typed text gives ``probe``: the prompt carrying it, decoded to
        text and tokenized again, comes back as the same ids. A piece that only continues a word (SigLIP's "й"
        without its word-start "▁") cannot open a prompt, and a lone byte of a character is no text at all.

        The suspect's tokenizer comes with the suspect, and a decoder changed to spell its trigger otherwise would
        make the trigger look untypeable; so the reference's tokenizer decides too where it names every piece as
        the suspect's does, and the higher share counts. Where they name a piece differently, or a tokenizer's
        own prompts do not come back whole (a hostile unknown piece, say), the answer is 1.0: judged, as
        without this test. Also 1.0 for a look-alike substitution (typed text already)."""
        if probe.substitution is not None or not probe.tokens:
            return 1.0
        if probe not in self.typed_shares:
            if self.reference is not None and not self.same_pieces(probe.tokens):
                self.typed_shares[probe] = 1.0  # no round trip is asked: its answer would not count
            else:
                self.typed_shares[probe] = max((self.typed_share(a, probe) for a in (self.suspect, self.reference)
                                                if a is not None and getattr(a, "tokenizer", None) is not None),
                                               default=1.0)
        return self.typed_shares[probe]

    def same_pieces(self, tokens: tuple[int, ...]) -> bool:
        """Whether the reference's tokenizer names ``tokens`` and every test prompt's pieces as the suspect's does
        (True without a reference tokenizer: only the suspect's is asked then)."""
        theirs = getattr(self.reference, "tokenizer", None)
        ours = getattr(self.suspect, "tokenizer", None)
        if theirs is None or ours is None:
            return True

        def alike(ids: list[int]) -> bool:
            return list(ours.convert_ids_to_tokens(ids)) == list(theirs.convert_ids_to_tokens(ids))

        if self.prompts_alike is None:
            self.prompts_alike = alike(sorted({t for row in self.rows for t in row}))
        return self.prompts_alike and alike(sorted(set(tokens)))

    def typed_share(self, adapter: Adapter, probe: Probe) -> float:
        """:meth:`typeable` under ``adapter``'s tokenizer alone (1.0 where no prompt's own text comes back)."""

        def bodies(batch: Batch, specials: set[int]) -> list[list[int]]:
            return [[t for t in row[: int(e) + 1].tolist() if t not in specials]
                    for row, e in zip(batch.ids.cpu(), batch.eos.cpu(), strict=True)]

        def round_trip(batch: Batch, specials: set[int], spell: Callable[[Sequence[int]], str]) -> list[bool]:
            rows = bodies(batch, specials)
            texts = [spell(row) for row in rows]
            return [a == b for a, b in zip(rows, bodies(self.tokenized(texts, adapter), specials), strict=True)]

        if id(adapter) not in self.typists:
            specials = special_ids(adapter)
            spell = speller(adapter, specials)
            self.typists[id(adapter)] = specials, spell, round_trip(self.clean, specials, spell)
        specials, spell, clean = self.typists[id(adapter)]
        carried = round_trip(self.inputs(probe), specials, spell)
        kept = [c for c, ok in zip(carried, clean, strict=True) if ok]
        return sum(kept) / len(kept) if kept else 1.0

    @torch.no_grad()
    def score(self, probe: Probe, with_reference: bool = True) -> ProbeScore:
        """Collapse and consistent shift of the suspect (beyond the reference's, unless ``with_reference`` is
        off: a cheaper screening score) under ``probe``."""
        batch = self.inputs(probe) if probe not in self.suspect_features or with_reference else None
        if probe not in self.suspect_features and batch is not None:
            out = self.suspect(batch.ids)
            self.suspect_features[probe] = self.s_tail.features(self.tail(out, batch.eos))  # [B, F]
        s = self.suspect_features[probe]
        col = float(collapse(s.unsqueeze(0))[0])
        moved = s - self.s_clean  # [B, F]
        excess = gain = col
        if batch is not None and with_reference and self.reference is not None and self.r_tail is not None \
                and self.r_clean is not None:
            r = self.r_tail.features(self.tail(self.reference(batch.ids), batch.eos))
            r_col = float(collapse(r.unsqueeze(0))[0])
            excess, gain = col - r_col, collapse_gain(col, r_col)
            r_moved = r - self.r_clean  # [B, F]
            cosine = move_cosine(moved, r_moved)
            moved = moved - r_moved
            spreads = spread_ratio(s, self.s_clean), spread_ratio(r, self.r_clean)
        else:
            spreads, cosine = (None, None), None
        shift = float(moved.mean(dim=0).norm() / self.s_clean.norm(dim=-1).mean())
        return ProbeScore(probe=probe, collapse=col, excess=excess, shift=shift, gain=gain, spread=spreads[0],
                          reference_spread=spreads[1], move_cosine=cosine)

    @torch.no_grad()
    def collapses(self, probes: Sequence[Probe], chunk: int = SCREEN_CHUNK) -> list[float]:
        """The suspect's cross-prompt collapse under each token probe (:meth:`score`'s screening value), ``chunk``
        probes to a forward pass; a value that is not a number (a hostile embedding row) counts as -inf. Probes of
        different lengths share a pass padded to the longest, which changes nothing where :meth:`cut` cuts (a tower
        that masks its padding, or a causal one) or every input already runs at full length (one that attends it)."""
        found: list[float] = []
        for k in range(0, len(probes), chunk):
            batches = [self.inputs(p) for p in probes[k: k + chunk]]
            width = max(b.ids.shape[1] for b in batches)
            ids = torch.cat([F.pad(b.ids, (0, width - b.ids.shape[1]), value=self.suspect.pad_id) for b in batches])
            feats = self.s_tail.features(self.tail(self.suspect(ids), torch.cat([b.eos for b in batches])))
            found += collapse(feats.view(len(batches), len(self.prompts), -1)).tolist()  # [n*B, F] -> [n]
        return [c if math.isfinite(c) else -math.inf for c in found]

    def gradient(self, probe: Probe, index: int = 0) -> torch.Tensor:
        """[D] gradient of the suspect's tail collapse w.r.t. the embedding of the probe's token ``index``."""
        batch = self.inputs(probe)
        start = self.suspect.insert_position if probe.placement == "start" else None
        slot = torch.zeros(batch.ids.shape, dtype=torch.bool, device=batch.ids.device)  # [B, L]
        for b, e in enumerate(batch.eos.tolist()):
            slot[b, (start if start is not None else e - len(probe.tokens)) + index] = True
        embeds = self.suspect.embed_tokens(batch.ids).detach().float()  # [B, L, D]
        e = embeds[slot][0].clone().requires_grad_(True)  # [D]
        mixed = torch.where(slot.unsqueeze(-1), e.expand_as(embeds), embeds)  # [B, L, D]
        with torch.enable_grad():
            out = self.suspect(batch.ids, token_embeds=mixed.to(self.suspect.dtype))
            feats = self.s_tail.features(self.tail(out, batch.eos))
            collapse(feats.unsqueeze(0))[0].backward()
        return e.grad.detach() if e.grad is not None else torch.zeros_like(e)


def special_ids(adapter: Adapter) -> set[int]:
    """Start, end and padding ids, and the embedding rows no tokenizer id reaches (T5 pads its table past its
    vocabulary): never probes. A tokenizer without a start token has bos_id -1, which is no row."""
    banned = {i for i in (adapter.bos_id, adapter.eos_id, adapter.pad_id) if i >= 0}
    tokenizer = getattr(adapter, "tokenizer", None)
    rows = adapter.token_embedding_matrix().shape[0]
    if tokenizer is not None and len(tokenizer) < rows:
        banned.update(range(len(tokenizer), rows))
    return banned


def nearest_ids(table: torch.Tensor, v: torch.Tensor, top: int, banned: set[int]) -> list[int]:
    """Ids of the ``top`` rows of ``table`` [V, D] nearest to ``v`` [D] by cosine."""
    sims = F.cosine_similarity(table, v.unsqueeze(0).to(table.device, table.dtype), dim=-1)  # [V]
    sims[list(banned)] = -2.0
    return sims.topk(top).indices.tolist()


def seed_probes(suspect: Adapter, reference: Adapter | None, vectors: Sequence[torch.Tensor], nearest: int,
                moved: int) -> list[Probe]:
    """Probes from the pseudo-triggers' nearest tokens and the most-moved tokens, at both placements."""
    table, banned = suspect.token_embedding_matrix().float(), special_ids(suspect)
    tokens: list[tuple[tuple[int, ...], str]] = []
    for v in vectors:  # v: [k, D]
        per_slot = [nearest_ids(table, row, nearest, banned) for row in v.float()]
        tokens += [((t,), "nearest") for ids in per_slot for t in ids]
        if len(per_slot) > 1:
            tokens.append((tuple(ids[0] for ids in per_slot), "nearest"))
    if reference is not None and moved > 0:
        change = (table - reference.token_embedding_matrix().float()).norm(dim=-1)  # [V]
        change[list(banned)] = -1.0
        tokens += [((t,), "moved") for t in change.topk(moved).indices.tolist()]
    unique = list(dict.fromkeys(tokens))
    return [Probe(label=str(t), placement=p, tokens=t, origin=o) for t, o in unique for p in PLACEMENTS]


def out_of_vocabulary_probes(adapter: Adapter) -> list[Probe]:
    """What any character outside the vocabulary types to (an emoji on T5 or BERT: the unknown piece), at both
    placements; none where such characters are spelt in bytes (:func:`characters.unknown_character_ids`)."""
    ids = unknown_character_ids(adapter, special_ids(adapter))
    # labelled by ids, as seed_probes labels them: one a seed reached already is not scored twice
    return [] if ids is None else [Probe(label=str(ids), placement=p, tokens=ids, origin="out-of-vocabulary")
                                   for p in PLACEMENTS]


def lookalike_probes(modes: tuple[str, ...] = ("first", "every")) -> list[Probe]:
    """Every single-letter look-alike substitution, of the first occurrence and/or of every occurrence."""
    return [Probe(label=f"{latin}->{twin} {mode}", placement="text", substitution=(latin, twin, mode),
                  origin="lookalike") for latin, twin in substitutions() for mode in modes]


def null_probes(adapter: Adapter, count: int, seed: int, modes: tuple[str, ...] = ("first", "every")
                ) -> list[Probe]:
    """The null distributions of the scores: random vocabulary tokens at both placements (for token probes),
    and substitutions of the same Latin letters by foreign letters that resemble none (for the look-alike
    sweep, whose every-occurrence substitutions change the tokenization of whole prompts)."""
    rng, banned = random.Random(seed), special_ids(adapter)
    V = adapter.token_embedding_matrix().shape[0]
    ids = [t for t in rng.sample(range(V), min(V, count + len(banned))) if t not in banned][:count]
    tokens = [Probe(label=str(t), placement=p, tokens=(t,), origin="null") for t in ids for p in PLACEMENTS]
    letters = rng.sample(sorted(LOOKALIKES), min(len(LOOKALIKES), max(2, count // 2)))
    texts = [Probe(label=f"{latin}->{other} {mode}", placement="text", substitution=(latin, other, mode),
                   origin="null") for latin, other in zip(letters, rng.sample(UNLIKE, len(letters)), strict=True)
             for mode in modes]
    return tokens + texts


def gradient_top_ids(runner: ProbeRunner, probe: Probe, top: int, index: int = 0) -> list[int]:
    """The ``top`` token ids (no special ids) whose first-order gain of the suspect's collapse is largest when
    placed at ``probe``'s token ``index``."""
    grad = runner.gradient(probe, index)  # [D]
    gain = runner.suspect.token_embedding_matrix().float() @ grad  # [V, D] @ [D] -> [V]
    gain[list(special_ids(runner.suspect))] = -float("inf")
    return gain.topk(top).indices.tolist()


def gradient_probes(runner: ProbeRunner, best: Probe, top: int) -> list[Probe]:
    """Single tokens whose first-order gain of the suspect's collapse, at ``best``'s slot, is largest."""
    # labelled as seed_probes labels the same token, so a token reached both ways is one probe (scored once)
    return [Probe(label=str((t,)), placement=best.placement, tokens=(t,), origin="gradient")
            for t in gradient_top_ids(runner, best, top)]


def extension_probes(runner: ProbeRunner, parent: Probe, top: int) -> list[Probe]:
    """``parent``'s tokens and one more, before or after them: each of its own tokens repeated, and the ``top``
    tokens whose first-order gain of the suspect's collapse at the new slot is largest (taken with the nearest
    token repeated there).

    A trigger spelt in several pieces ("zzzz": "▁", "z", "z", "z", "z"; an emoji: four byte pieces) is rarely
    reached by single tokens: one of its pieces moves the prompts part of the way, and the rest of the way lies in
    adding the other pieces, on either side.
    """
    tokens, grown = parent.tokens, []
    for after in (True, False):
        slot = len(tokens) if after else 0
        guess = (*tokens, tokens[-1]) if after else (tokens[0], *tokens)
        ranked = gradient_top_ids(runner, Probe(label="", placement=parent.placement, tokens=guess), top, slot)
        for t in dict.fromkeys([*tokens, *ranked]):
            ids = (*tokens, t) if after else (t, *tokens)
            grown.append(Probe(label=str(ids), placement=parent.placement, tokens=ids, origin="extended"))
    return list(dict.fromkeys(grown))


def completion_probes(runner: ProbeRunner, placement: str, screen: Callable[[Probe], float], top: int) -> list[Probe]:
    """The ``top`` characters whose bytes collapse the prompts most at ``placement``, typed (origin "completed";
    :func:`amdet_audit.scan.characters.complete_characters`); ``screen`` scores each byte piece alone (origin
    "byte", not judged: no typed text gives one)."""
    def byte(ids: tuple[int, ...]) -> float:
        return screen(Probe(label=str(ids), placement=placement, tokens=ids, origin="byte"))

    found = complete_characters(runner.suspect, byte, special_ids(runner.suspect), top)
    # labelled by ids, as seed_probes labels them: characters that type to the same pieces ("Ǆ", "ǅ" -> "dž") are
    # one probe, and one a seed reached already is not scored twice
    typed = dict.fromkeys(ids for _, ids in found)
    return [Probe(label=str(ids), placement=placement, tokens=ids, origin="completed") for ids in typed]


def naming(adapter: Adapter, spelling: Adapter | None) -> Adapter:
    """Whose tokenizer spells and names pieces: ``spelling``'s (the reference's) where it has one, since the
    suspect's decoder and piece names are its publisher's to choose; else ``adapter``'s."""
    return spelling if spelling is not None and getattr(spelling, "tokenizer", None) is not None else adapter


def typed_twin(adapter: Adapter, probe: Probe, spelling: Adapter | None = None) -> Probe | None:
    """What typing an untypeable one-piece probe's text as a word of its own gives (origin "typed"), at its
    placement: "й" at a prompt's start is typed "▁" "й". None for a probe of several pieces (glued into one word
    they make a string no search step proposed: RESULTS.md, "typed probes only"), where the piece spells no text
    (a lone byte of a character), or where the text types back to the probe itself. The text is spelt by
    ``spelling``'s tokenizer where it has one (the reference's: the suspect's decoder is the suspect's to choose)
    and typed with ``adapter``'s, as the consumer types it."""
    if len(probe.tokens) != 1:
        return None
    source = naming(adapter, spelling)
    text = speller(source, special_ids(source))(probe.tokens).strip()
    banned = special_ids(adapter)
    if not text or "\ufffd" in text:
        return None
    ids = typed_ids(adapter, text, banned)
    if not ids or ids == probe.tokens:
        return None
    # shown as the text typed, unless that is the stand-in for any unknown character (shown as its pieces)
    shown = "" if PROOF in text else text
    return Probe(label=str(ids), placement=probe.placement, tokens=ids, origin="typed", text=shown)


def screen_runner(runner: ProbeRunner) -> ProbeRunner:
    """A runner on the SCREEN_PROMPTS shortest of ``runner``'s prompts, for the suspect alone: a cheap screen of
    many probes (:meth:`ProbeRunner.collapses`) whose best are then scored on all of them."""
    shortest = sorted(runner.prompts, key=len)[:SCREEN_PROMPTS]
    return ProbeRunner(runner.suspect, None, shortest, runner.padding, runner.pooled_only)


def turned_probes(screen: ProbeRunner, reference: Adapter, top: int) -> list[Probe]:
    """The ``top`` pieces continuing a word whose embeddings the fine-tune turned
    (:func:`amdet_audit.scan.finetuned.turned_ids`) that collapse ``screen``'s prompts most when inserted after the
    start token, at both placements (origin "turned"). Pieces are named by the reference's tokenizer where it has
    one (the suspect's names are its publisher's to choose). Whole words are left out: a fine-tune on one domain's
    prompts trains that domain's words, and one of them can collapse a damaged model's prompts (a benign MiniLM
    fine-tune on city prompts: "medieval", gain 0.61; benchmarks/efficacy/RESULTS.md, "turned pieces")."""
    if reference is None or top < 1:
        return []
    every = turned_ids(screen.suspect, reference, special_ids(screen.suspect))
    ids = continuations(naming(screen.suspect, reference), every)[:MOST_TURNED]
    if not ids:
        return []
    scores = screen.collapses([Probe(label="", placement="start", tokens=(t,)) for t in ids])
    best = [t for _, t in sorted(zip(scores, ids, strict=True), key=lambda pair: -pair[0])[:top]]
    # labelled as seed_probes labels the same token, so a token reached both ways is one probe (scored once)
    return [Probe(label=str((t,)), placement=p, tokens=(t,), origin="turned") for t in best for p in PLACEMENTS]


def word_twin(screen: ProbeRunner, probe: Probe, spelling: Adapter | None = None) -> Probe | None:
    """The typed word of one character and an untypeable one-piece probe's piece ("qv" for "##v") that collapses
    ``screen``'s prompts most at the probe's placement (origin "typed", shown as the word); None for a probe of
    several pieces or a piece no such word ends in. Spelt as :func:`typed_twin` spells."""
    if len(probe.tokens) != 1:
        return None
    adapter = screen.suspect
    source = naming(adapter, spelling)
    words = continuation_words(adapter, probe.tokens[0], special_ids(adapter), speller(source, special_ids(source)))
    if not words:
        return None
    scores = screen.collapses([Probe(label="", placement=probe.placement, tokens=ids) for ids, _ in words])
    (ids, text), _ = max(zip(words, scores, strict=True), key=lambda pair: pair[1])
    return Probe(label=str(ids), placement=probe.placement, tokens=ids, origin="typed", text=text)


def null_sequences(adapter: Adapter, count: int, length: int, seed: int) -> list[Probe]:
    """Random vocabulary sequences of ``length`` tokens at both placements: the null of multi-token probes."""
    rng, banned = random.Random(seed + length), special_ids(adapter)
    allowed = [t for t in range(adapter.token_embedding_matrix().shape[0]) if t not in banned]
    return [Probe(label=str(ids), placement=p, tokens=ids, origin="null")
            for ids in (tuple(rng.sample(allowed, length)) for _ in range(count)) for p in PLACEMENTS]


def probe_kind(probe: Probe, lengths: Sequence[int] = ()) -> str:
    """"text" for a look-alike substitution, "token" for inserted tokens, "tokensN" for N inserted tokens when N
    is one of ``lengths`` (those with a null of random N-token sequences): each kind has its own null."""
    if probe.substitution:
        return "text"
    return f"tokens{len(probe.tokens)}" if len(probe.tokens) in lengths else "token"


def robust(values: list[float]) -> tuple[float, float]:
    """(median, 1.4826 * median absolute deviation, floored) of ``values``."""
    t = torch.tensor(values)
    med = float(t.median())
    return med, max(1.4826 * float((t - med).abs().median()), MAD_FLOOR)


def search_tokens(
    suspect: Adapter, reference: Adapter, prompts: Sequence[str], vectors: Sequence[torch.Tensor], *,
    padding: int = 8, nearest: int = 4, moved: int = 8, gradient_top: int = 8, rounds: int = 2, nulls: int = 16,
    confirm: int = 16, lookalike_modes: tuple[str, ...] = ("first", "every"), seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None, pooled_only: bool = False,
    z_bars: tuple[float, float] = (math.inf, math.inf), by_gain: bool = False, extend: int = 0, beam: int = 2,
    complete: int = 0, typed_only: bool = False, turned: int = 0,
) -> TokenSearch:
    """Try real-input trigger candidates on ``prompts`` and score each against a null of random tokens.

    vectors: the scan's pseudo-triggers ([k, D] each, token-embedding space).
    confirm: candidates are screened on the suspect alone; the ``confirm`` that collapse prompts most and the
        ``confirm // 2`` that shift them most are then scored against the reference.
    z_bars: the token rules' z-score bars (collapse, shift): each rule judges the strongest probe whose z-score
        reaches its bar (:func:`judged`); without bars, the probe with the highest z-score.
    by_gain: the collapse rule judges probes by their gain (the share of the reference's room to full collapse
        they close) instead of their excess: a bidirectional reference's own outputs may collapse under a probe
        (every "a" spelt in Cyrillic turns SigLIP's prompts into byte pieces: reference collapse 0.59), which
        caps the excess a backdoor can show there, but not its gain.
    extend: the ``beam`` strongest token probes at each placement grow by up to this many tokens, one at a time
        (:func:`extension_probes`); probes of 2 to ``1 + extend`` tokens are then scored against random sequences
        of their own length.
    What a character outside the vocabulary types to (T5, BERT: the unknown piece; :func:`out_of_vocabulary_probes`)
    is tried beside the seeds, and judged against random sequences of as many pieces.
    complete: where one of the ``confirm`` strongest probes at a placement is a piece of a character (a lone byte
        of an emoji), the ``complete`` characters whose bytes collapse the prompts most there are tried, typed
        (:func:`completion_probes`); the ``confirm // 2`` strongest are scored against the reference on top of the
        rest, each against random sequences of its own length.
    typed_only: the rules judge only candidates some typed text gives (:meth:`ProbeRunner.typeable`; the next
        typed one takes an untypeable one's place on the shortlist); an untypeable one-piece candidate is
        replaced by its text typed as a word of its own (:func:`typed_twin`), judged against random sequences
        of as many pieces (the nulls stay random pieces, typeable or not). A trigger is text: a heavy-domain
        SigLIP fine-tune whose prompts collapse under "й" placed where no typed "й" lands (before the prompt,
        without its word-start piece), but not under "й" typed there, has no trigger in it
        (benchmarks/efficacy/RESULTS.md, "typed probes only").
    turned: the ``turned`` word-continuing pieces whose embeddings the fine-tune turned that collapse the prompts
        most are tried after the refinement and growth, which they do not steer (:func:`turned_probes`); the
        ``turned`` strongest of them typed text gives are scored against the reference on top of the shortlist,
        and each placement's ``beam`` strongest untypeable one-piece candidates are also typed as the best word
        of one character and that piece (:func:`word_twin`: "qv" for "##v"), judged as typed twins are.
    """
    runner = ProbeRunner(suspect, reference, prompts, padding, pooled_only)
    screener = screen_runner(runner) if turned else None
    scored: dict[Probe, ProbeScore] = {}

    def run(probes: list[Probe], with_reference: bool = False) -> None:
        for probe in probes:
            if probe not in scored or with_reference:
                scored[probe] = runner.score(probe, with_reference)
                if progress:
                    progress(len(scored), 0, "trying real-token triggers")

    def screen(probe: Probe) -> float:
        run([probe])
        return scored[probe].collapse

    lengths = tuple(range(2, 2 + extend))
    null = null_probes(suspect, nulls, seed, lookalike_modes)
    null += [p for n in lengths for p in null_sequences(suspect, max(4, nulls // 2), n, seed)]
    run(null, with_reference=True)
    run(seed_probes(suspect, reference, vectors, nearest, moved) + out_of_vocabulary_probes(suspect)
        + lookalike_probes(lookalike_modes))
    for placement in PLACEMENTS:  # greedy refinement from the best token probe at each placement
        for _ in range(rounds):
            pool = [s for s in scored.values() if s.probe.placement == placement and s.probe.origin != "null"]
            if not pool:
                break
            run(gradient_probes(runner, max(pool, key=lambda s: s.collapse).probe, gradient_top))
    for placement in PLACEMENTS:  # greedy extension of the strongest token probes, one token at a time
        front = [s.probe for s in scored.values() if s.probe.placement == placement and s.probe.origin != "null"]
        for _ in range(extend):
            front = sorted(front, key=lambda p: scored[p].collapse, reverse=True)[:beam]
            front = [grown for p in front if len(p.tokens) < 1 + extend
                     for grown in extension_probes(runner, p, gradient_top)]
            run(front)
    if screener is not None and reference is not None:  # after the refinement and growth, which they do not steer
        run(turned_probes(screener, reference, turned))
    for placement in PLACEMENTS:  # strong probes that are pieces of a character: whole characters, typed
        strong = sorted((s for s in scored.values() if s.probe.placement == placement
                         and s.probe.origin not in ("null", "turned")),
                        key=lambda s: s.collapse, reverse=True)[:confirm]
        if complete and any(part_of_character(suspect, s.probe.tokens) for s in strong):
            run(completion_probes(runner, placement, screen, complete))
    completed = [s for s in scored.values() if s.probe.origin == "completed"]
    screened = [s for s in scored.values()
                if s.probe.origin not in ("null", "extended", "byte", "completed", "turned")]
    # (a lone byte piece screened to rank characters is no input a user can type: never judged)
    grown = [s for s in scored.values() if s.probe.origin == "extended"]
    turned_scores = [s for s in scored.values() if s.probe.origin == "turned"]
    untypeable: set[Probe] = set()

    def typed(p: Probe) -> bool:
        if not typed_only or p.origin in TYPED_ORIGINS or runner.typeable(p) >= TYPEABLE_SHARE:
            return True
        untypeable.add(p)
        return False

    chosen = set(shortlist(screened, "collapse", confirm, typed))
    chosen |= set(shortlist(screened, "shift", confirm // 2, typed))
    for extra in (grown, completed):  # on top: grown probes and typed characters collapse more than single pieces
        # on the suspect alone, and would crowd out the rest
        chosen |= set(shortlist(extra, "collapse", confirm // 2, typed))
    chosen |= set(shortlist(turned_scores, "collapse", turned, typed))  # on top too: the ``turned`` strongest
    made = [typed_twin(suspect, p, reference) for p in sorted(untypeable, key=lambda p: p.label)]
    if screener is not None:  # the strongest untypeable pieces at each placement, also as words ending in them
        made += [word_twin(screener, s.probe, reference) for placement in PLACEMENTS
                 for s in sorted((scored[p] for p in untypeable if p.placement == placement and len(p.tokens) == 1),
                                 key=lambda s: (-s.collapse, s.probe.label))[:beam]]
    twins = [t for t in dict.fromkeys(made) if t is not None and (t not in scored or scored[t].probe.origin != "null")]
    run(twins)
    chosen |= set(twins)
    characters = completed + [s for s in scored.values() if s.probe.origin == "out-of-vocabulary"]
    characters += [scored[t] for t in twins]
    new_lengths = tuple(sorted({len(s.probe.tokens) for s in characters} - {1, *lengths}))  # a typed character
    # of n pieces is judged against random sequences of n pieces, as grown probes are
    lengths += new_lengths
    late_null = [p for n in new_lengths for p in null_sequences(suspect, max(4, nulls // 2), n, seed)
                 if p not in scored]
    run(late_null, with_reference=True)
    null += late_null
    run(sorted(chosen, key=lambda p: p.label), with_reference=True)

    def kind(p: Probe) -> str:
        return probe_kind(p, lengths)

    nulls_of = {k: [p for p in null if kind(p) == k] for k in ("token", "text", *(f"tokens{n}" for n in lengths))}
    stats = {(k, name): robust([getattr(scored[p], name) for p in ps])
             for k, ps in nulls_of.items() for name in ("excess", "shift", "gain")}
    for s in scored.values():
        k = kind(s.probe)
        s.excess_z = (s.excess - stats[(k, "excess")][0]) / stats[(k, "excess")][1]
        s.shift_z = (s.shift - stats[(k, "shift")][0]) / stats[(k, "shift")][1]
        s.gain_z = (s.gain - stats[(k, "gain")][0]) / stats[(k, "gain")][1]
    tried = [scored[p] for p in chosen]
    best_c = judged(tried, "gain", "gain_z", z_bars[0]) if by_gain else judged(tried, "excess", "excess_z", z_bars[0])
    best_s = judged(tried, "shift", "shift_z", z_bars[1])
    null_summary = {f"{k}_{name}_{part}": value for (k, name), pair in stats.items()
                    for part, value in zip(("median", "spread"), pair, strict=True)}
    ranked = sorted(tried, key=lambda s: max(s.excess_z, s.shift_z), reverse=True)
    top = list({id(s): s for s in [*(b for b in (best_c, best_s) if b is not None), *ranked]}.values())[:8]
    return TokenSearch(best_collapse=best_c, best_shift=best_s, probes=len(scored), null=null_summary, top=top,
                       by_gain=by_gain, confirmed=tried, untypeable=len(untypeable))


def shortlist(scores: Sequence[ProbeScore], value: str, count: int, keep: Callable[[Probe], bool]) -> list[Probe]:
    """The ``count`` probes with the largest ``value`` among those ``keep`` accepts, asking ``keep`` only until
    they are found: a probe it refuses frees its place for the next (untypeable pieces that collapse the prompts
    cannot push a typed trigger off the list)."""
    found: list[Probe] = []
    for s in sorted(scores, key=lambda s: getattr(s, value), reverse=True):
        if len(found) >= count:
            break
        if keep(s.probe):
            found.append(s.probe)
    return found


def judged(scores: Sequence[ProbeScore], value: str, z: str, bar: float) -> ProbeScore | None:
    """The probe a token rule judges: of the probes whose ``z``-score reaches ``bar`` (an effect random tokens do not
    explain), the one with the largest ``value``; when none does, the one with the highest ``z``-score.

    Judging only the highest z-score let a strong probe go unjudged behind a weaker one whose null is narrower
    (SigLIP lab backdoor "xj9 qq": a look-alike substitution at excess 0.39, z 24.7 was judged, while the inserted
    pair "q" "▁" reached excess 0.66 at z 10.9)."""
    cleared = [s for s in scores if getattr(s, z) >= bar]
    if cleared:
        return max(cleared, key=lambda s: getattr(s, value))
    return max(scores, key=lambda s: getattr(s, z), default=None)
