"""Flesch-Kincaid grade level, with a small syllable counter.

textstat, the usual package, loads the CMU pronouncing dictionary from the network on first use,
which neither CI nor a locked-down machine allows; the classic vowel-group rule below is within a
syllable or so of it on plain English, which is all a grade-8 ceiling needs.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*")
_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")
_SILENT_ENDING = re.compile(r"(?:[^laeiouy]es|[^laeiouy]ed|[^laeiouy]e)$")


def syllables(word: str) -> int:
    """Vowel groups, less a silent final e/es/ed; at least one."""
    word = re.sub(r"[^a-z]", "", word.lower())
    if len(word) <= 3:
        return 1
    word = _SILENT_ENDING.sub("", word)
    word = re.sub(r"^y", "", word)
    return max(1, len(re.findall(r"[aeiouy]{1,2}", word)))


def flesch_kincaid_grade(text: str) -> float:
    """0.39 * words per sentence + 11.8 * syllables per word - 15.59 (Kincaid et al., 1975)."""
    words = _WORD.findall(text)
    sentences = max(1, len(_SENTENCE_END.findall(text.strip() + " ")))
    if not words:
        return 0.0
    return 0.39 * len(words) / sentences + 11.8 * sum(map(syllables, words)) / len(words) - 15.59
