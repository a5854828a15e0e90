"""Generated English-like text for the language cases: deterministic, no files, no downloads.

Words are drawn from a fixed lexicon of made-up words with Zipf frequencies (``p(rank r) ∝ 1/r``)
into sentences of a small grammar (capitalised first word, commas, a full stop), so a character
model can learn spelling and word boundaries — far below the unigram entropy of the characters —
while a model that ignores its context stays at that entropy.
"""

from __future__ import annotations

import math
import random
from collections import Counter

ONSETS = ("b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr", "pl", "ch")
VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ou")
CODAS = ("", "", "n", "r", "s", "t", "l", "nd", "st")


def generate(chars: int = 120_000, seed: int = 0, words: int = 300) -> str:
    """``chars`` characters of sentences over a lexicon of ``words`` made-up words, from ``seed``."""
    rng = random.Random(seed)
    lexicon = sorted({"".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)
                              for _ in range(rng.choice((1, 1, 2, 2, 3)))) for _ in range(words)})
    rng.shuffle(lexicon)
    weights = [1.0 / (r + 1) for r in range(len(lexicon))]
    parts: list[str] = []
    size = 0
    while size < chars:
        n = rng.randint(4, 12)
        sentence = rng.choices(lexicon, weights, k=n)
        if n > 6:
            sentence[rng.randint(2, n - 3)] += ","
        text = " ".join(sentence).capitalize() + ". "
        parts.append(text)
        size += len(text)
    return "".join(parts)[:chars]


def unigram_entropy(text: str) -> float:
    """``H = −Σ_c p(c) log p(c)`` of the characters (nats): the loss of a model that ignores context."""
    counts = Counter(text)
    n = len(text)
    return -sum(k / n * math.log(k / n) for k in counts.values())
