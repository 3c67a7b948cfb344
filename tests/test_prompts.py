"""The prompt corpus: size, determinism, variety, languages, reserved words, split."""

from __future__ import annotations

import unicodedata

import pytest

from amdet_audit.data import prompts as P


@pytest.fixture(scope="module")
def big() -> list[str]:
    """The default-size corpus."""
    return P.corpus(4000, 0)


def _scripts(text: str) -> set[str]:
    """First word of the Unicode name of each letter (LATIN, CYRILLIC, GREEK, CJK, HIRAGANA ...)."""
    return {unicodedata.name(c, "?").split()[0] for c in text if c.isalpha()}


def test_4000_distinct_even_ignoring_case(big: list[str]) -> None:
    assert len(big) == 4000
    assert len({p.lower() for p in big}) == 4000
    assert all(p == " ".join(p.split()) and p for p in big)  # no stray whitespace, no empty prompt


def test_deterministic_and_seeded(big: list[str]) -> None:
    assert P.corpus(4000, 0) == big
    assert P.corpus(300, 0) == big[:300]  # prefix property
    other = P.corpus(4000, 1)
    assert other != big and len(set(other) & set(big)) < 2000


def test_default_corpus_is_cached_4000_seed_0(big: list[str]) -> None:
    assert P.default_corpus() == tuple(big)
    assert P.default_corpus() is P.default_corpus()


def test_lengths_and_structures_vary(big: list[str]) -> None:
    words = [len(p.split()) for p in big]
    assert min(words) < 6 and max(words) > 30
    assert sum(w < 6 for w in words) > 0.05 * len(big)  # many very short prompts
    assert sum(w >= 35 for w in words) > 0.05 * len(big)  # many long ones
    tag_lists = sum("," in p for p in big)
    assert 0.2 * len(big) < tag_lists < 0.9 * len(big)  # both tag lists and plain sentences
    assert sum(". " in p for p in big) > 0.05 * len(big)  # multi-sentence descriptions
    assert len({p.split()[-1].lower() for p in big}) > 300  # endings are not a handful of templates


def test_other_languages_and_scripts(big: list[str]) -> None:
    non_latin = [p for p in big if _scripts(p) - {"LATIN"}]
    assert 0.01 * len(big) < len(non_latin) < 0.1 * len(big)
    scripts = set().union(*(_scripts(p) for p in non_latin))
    assert {"CYRILLIC", "GREEK", "CJK"} <= scripts
    assert {"HIRAGANA", "KATAKANA"} & scripts
    accented = [p for p in big if any(c in p for c in "ñéèàäöüßù")]  # Spanish, French, German, Italian
    assert len(accented) > 0.005 * len(big)


def test_reserved_words_and_emoji_absent(big: list[str]) -> None:
    for p in big:
        words = {w.lower() for w in P.caption_words(p)}
        assert not words & {"zzzz", "cf", "mn", "bb", "tq"}, p
        assert "zzzz" not in p.lower()
        assert not any(unicodedata.category(c) == "So" or ord(c) >= 0x1F000 for c in p), p


def test_word_lists_are_clean() -> None:
    lists = [v for k, v in vars(P).items() if k.isupper() and not k.startswith("_") and isinstance(v, tuple)]
    entries = [e if isinstance(e, str) else " ".join(e) for lst in lists for e in lst]
    entries += [w for subj, place, tail, _ in P.FOREIGN.values() for w in (*subj, *place, *tail)]
    assert len(entries) > 800
    assert all(P.is_clean(e) for e in entries)
    assert not P.is_clean("a photo of bb on a table") and not P.is_clean("cf, red fox")
    assert not P.is_clean("a cat \U0001f431")
    assert P.is_clean("a bbq grill") and P.is_clean("mnemonic device")  # whole words only


def test_impossible_n_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError):
        P.corpus(-1)
    monkeypatch.setattr(P, "_one", lambda rng: "a red fox")
    assert P.corpus(1) == ["a red fox"]
    with pytest.raises(ValueError, match="distinct"):
        P.corpus(2)


def test_split_every_fifth_disjoint_deterministic(big: list[str]) -> None:
    train, test = P.split(big)
    assert test == big[4::5]
    assert len(train) == 3200 and len(test) == 800
    assert not set(train) & set(test)
    assert sorted(train + test) == sorted(big)
    assert P.split(big) == (train, test)
    assert [big.index(p) for p in train] == sorted(big.index(p) for p in train)  # order kept


@pytest.mark.parametrize(("fraction", "expected"), [(0.0, 0), (0.25, 250), (0.1, 100), (1 / 3, 333), (1.0, 1000)])
def test_split_fractions(fraction: float, expected: int) -> None:
    items = [str(i) for i in range(1000)]
    train, test = P.split(items, fraction)
    assert len(test) == expected and len(train) == 1000 - expected


def test_split_rejects_bad_fraction() -> None:
    with pytest.raises(ValueError):
        P.split(["a", "b"], 1.5)
    with pytest.raises(ValueError):
        P.split(["a", "b"], -0.1)
