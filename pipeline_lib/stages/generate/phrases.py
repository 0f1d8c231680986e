"""Texts of the generated corpus: the phrase's variants, phonetic confusables, other speech."""

from __future__ import annotations

import itertools
from functools import lru_cache
from importlib import resources

from pipeline_lib.stages.generate import tts
from pipeline_lib.stages.generate.confusables import edit_distance


@lru_cache(maxsize=1)
def lexicon() -> tuple[str, ...]:
    text = (
        resources.files("pipeline_lib.stages.generate.data")
        .joinpath("words.txt")
        .read_text(encoding="utf-8")
    )
    return tuple(sorted(set(text.split())))


@lru_cache(maxsize=1)
def sentences() -> tuple[str, ...]:
    text = (
        resources.files("pipeline_lib.stages.generate.data")
        .joinpath("sentences.txt")
        .read_text(encoding="utf-8")
    )
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def near_words(
    word: str, k: int, session: tts.SpeechSession, min_distance: float = 0.0
) -> list[str]:
    """The ``k`` lexicon words whose IPA is closest to ``word``'s, at least ``min_distance``
    away (a share of the sounds), excluding ``word`` itself."""
    words = list(lexicon())
    target, *sounds = session.phonemes([word, *words])
    scored = []
    for cand, ph in zip(words, sounds, strict=True):
        if cand == word.lower():
            continue
        if ph == target:
            continue
        dist = edit_distance(target, ph) / max(len(target), len(ph), 1)
        if dist >= min_distance:
            scored.append((dist, cand))
    scored.sort()
    return [w for _, w in scored[:k]]


def target_variants(phrase: str) -> list[str]:
    """Ways of writing the phrase that change espeak-ng's intonation, not its words."""
    p = phrase.strip()
    return [p, p.capitalize(), f"{p}!", f"{p}?", p.replace(" ", ", ", 1), f"{p.capitalize()}."]


def confusables(
    phrase: str,
    extra: list[str],
    session: tts.SpeechSession,
    k: int = 6,
    min_distance: float = 0.0,
    dictionary: str = "lexicon",
    per_word: int = 30,
    min_phones: int = 2,
    min_share: float = 0.25,
) -> list[str]:
    """Phonetically confusable negatives: single words and partial phrases, one word swapped
    for a near-sounding word (from CMUdict by phonemes, or from the bundled lexicon by
    espeak-ng's IPA; a word CMUdict lacks falls back to the lexicon), words reordered, plus
    user-given phrases."""
    from pipeline_lib.stages.generate import confusables as cmu

    words = phrase.lower().split()
    out: list[str] = []
    out.extend(words)
    if len(words) > 1:
        out.extend(" ".join(words[:i]) for i in range(1, len(words)))
        out.extend(" ".join(p) for p in itertools.permutations(words) if list(p) != words)
    for i, w in enumerate(words):
        if dictionary == "cmudict" and w in cmu.dictionary():
            out.extend(cmu.for_phrase(phrase, per_word, min_phones, min_share, only=i))
            continue
        for near in near_words(w, k, session, min_distance):
            out.append(" ".join([*words[:i], near, *words[i + 1 :]]))
    out.extend(extra)
    unique = dict.fromkeys(p for p in out if p != phrase.lower())  # ordered, no repeats
    return list(unique)


def other_speech(phrase: str) -> list[str]:
    """Sentences of the bundled corpus that do not contain a word of the phrase."""
    banned = {w.lower() for w in phrase.split()}
    return [s for s in sentences() if not banned & {w.strip(".,?!").lower() for w in s.split()}]


def word_salad_pool(phrase: str) -> list[str]:
    banned = {w.lower() for w in phrase.split()}
    return [w for w in lexicon() if w not in banned]
