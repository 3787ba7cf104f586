"""Synthetic tasks whose token alignment is known by construction (for trained toy models).

Translator: a word-for-word substitution language with one reordering rule (adjective after noun):
``the small cat sees a red dog`` -> ``lo gato peko vide un kane roso``. One word = one token (word-level
tokenizer), so the gold alignment of every target token is exact.

Copier (decoder-only): ``copy: a b c =`` -> ``copy: a b c = a b c``; generated token k depends on
prompt token k.
"""

from __future__ import annotations

import random

DETS = {"the": "lo", "a": "un", "every": "ogni", "some": "alku"}
ADJS = {
    "small": "peko",
    "big": "grano",
    "red": "roso",
    "blue": "bluo",
    "old": "vecho",
    "young": "jovo",
    "happy": "felo",
    "green": "verdo",
}
NOUNS = {
    "cat": "gato",
    "dog": "kane",
    "bird": "avo",
    "fish": "pesko",
    "child": "nino",
    "teacher": "magistro",
    "farmer": "agro",
    "doctor": "medo",
    "house": "kaso",
    "tree": "arbo",
    "river": "rivo",
    "book": "libro",
}
VERBS = {"sees": "vide", "likes": "ama", "finds": "trova", "takes": "prende", "holds": "tene", "follows": "segue"}
PREPS = {"near": "apo", "under": "sub", "with": "kon"}
LEXICON = {**DETS, **ADJS, **NOUNS, **VERBS, **PREPS}


def _noun_phrase(rng: random.Random) -> list[tuple[str, str]]:
    """[(word, role)] of DET (ADJ) NOUN."""
    words = [(rng.choice(list(DETS)), "det")]
    if rng.random() < 0.6:
        words.append((rng.choice(list(ADJS)), "adj"))
    words.append((rng.choice(list(NOUNS)), "noun"))
    return words


def translation_pair(rng: random.Random) -> tuple[str, str, list[int]]:
    """(source, target, alignment): alignment[j] = index of the source word that target word j translates."""
    src = _noun_phrase(rng) + [(rng.choice(list(VERBS)), "verb")] + _noun_phrase(rng)
    if rng.random() < 0.5:
        src += [(rng.choice(list(PREPS)), "prep")] + _noun_phrase(rng)
    order = list(range(len(src)))
    i = 0
    while i < len(order) - 1:  # adjective after noun: swap ADJ NOUN -> NOUN ADJ
        if src[order[i]][1] == "adj" and src[order[i + 1]][1] == "noun":
            order[i], order[i + 1] = order[i + 1], order[i]
            i += 2
        else:
            i += 1
    source = " ".join(w for w, _ in src)
    target = " ".join(LEXICON[src[k][0]] for k in order)
    return source, target, order


def translation_corpus(n: int, seed: int) -> list[tuple[str, str, list[int]]]:
    rng = random.Random(seed)
    return [translation_pair(rng) for _ in range(n)]


COPY_ALPHABET = [f"s{i}" for i in range(16)]


def copy_example(rng: random.Random) -> tuple[str, str, list[int]]:
    """(prompt, full text, alignment): generated token j copies prompt symbol alignment[j] (word index)."""
    symbols = [rng.choice(COPY_ALPHABET) for _ in range(rng.randint(3, 7))]
    prompt = " ".join(["copy:", *symbols, "="])
    return prompt, prompt + " " + " ".join(symbols), [1 + k for k in range(len(symbols))]


def copy_corpus(n: int, seed: int) -> list[tuple[str, str, list[int]]]:
    rng = random.Random(seed)
    return [copy_example(rng) for _ in range(n)]
