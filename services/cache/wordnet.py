"""Word relations from WordNet 3.0 for the verifier: antonyms, synonyms
and lemmas of any English word it holds, instead of lists written from the
evaluation set's examples.

The table (data/wordnet-relations.txt, derived by services/cache/
wordnet_build.py; licence in data/WORDNET-LICENSE) is read once per
process, on first use (~0.2 s), into sets and dicts; a lookup is a few
dict reads.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from services.cache.wordnet_build import TABLE

# WordNet's own detachment rules (morphy), per part of speech: the endings
# an inflected form may have, and what its lemma ends with instead.
_DETACH = {
    "n": (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"),
          ("ies", "y")),
    "v": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")),
    "a": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
}  # fmt: skip
# An adjective reduced to fewer letters than this is taken from a rule only
# with a doubled consonant (bigger -> big): "offer" is not "off" + er.
_MIN_REDUCED = 4


@dataclass
class WordNet:
    antonyms: dict[str, set[str]] = field(default_factory=dict)
    # Lemma -> the numbers of the synsets it belongs to (with at least one
    # other single-word member).
    synsets: dict[str, set[int]] = field(default_factory=dict)
    # (part of speech, irregular form) -> lemma.
    irregular: dict[tuple[str, str], str] = field(default_factory=dict)
    # Part of speech (n, v, a, r) -> its single-word lemmas.
    vocabulary: dict[str, set[str]] = field(default_factory=dict)

    def lemmas(self, word: str) -> frozenset[str]:
        """The word itself and every lemma WordNet's rules reach from it
        that the table holds ("children" -> child, "faster" -> fast)."""
        return _lemmas(self, word)

    def opposed(self, one: str, other: str) -> bool:
        """Whether some lemma of one is an antonym of some lemma of the other."""
        lemmas_other = self.lemmas(other)
        return any(self.antonyms.get(x, set()) & lemmas_other for x in self.lemmas(one))

    def synonymous(self, one: str, other: str) -> bool:
        """Whether the two share a lemma or a synset (in any of their senses)."""
        lemmas_one, lemmas_other = self.lemmas(one), self.lemmas(other)
        if lemmas_one & lemmas_other:
            return True
        senses = set().union(*(self.synsets.get(x, set()) for x in lemmas_one))
        return any(senses & self.synsets.get(y, set()) for y in lemmas_other)


@functools.lru_cache(maxsize=65536)
def _lemmas(wordnet: WordNet, word: str) -> frozenset[str]:
    found = {word}
    for pos, rules in _DETACH.items():
        irregular = wordnet.irregular.get((pos, word))
        if irregular is not None:
            found.add(irregular)
            continue
        lemmas = wordnet.vocabulary.get(pos, set())
        for ending, replacement in rules:
            if word.endswith(ending):
                lemma = word[: len(word) - len(ending)] + replacement
                doubled = len(lemma) > 2 and lemma[-1] == lemma[-2] and not replacement
                if doubled and lemma[:-1] in lemmas:
                    found.add(lemma[:-1])  # stopped -> stop, bigger -> big
                elif lemma in lemmas and (pos != "a" or len(lemma) >= _MIN_REDUCED):
                    found.add(lemma)
    return frozenset(found)


# Hashable by identity for the lemma cache: there is one table.
WordNet.__hash__ = object.__hash__  # type: ignore[assignment]


@functools.cache
def wordnet() -> WordNet:
    """The table, read once."""
    table = WordNet()
    for line in TABLE.read_text().splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "A":
            x, y = rest.split()
            table.antonyms.setdefault(x, set()).add(y)
            table.antonyms.setdefault(y, set()).add(x)
        elif kind == "S":
            number, *words = rest.split()
            for word in words:
                table.synsets.setdefault(word, set()).add(int(number))
        elif kind == "M":
            pos, form, lemma = rest.split()
            table.irregular.setdefault((pos, form), lemma)
        elif kind == "L":
            pos, *words = rest.split()
            table.vocabulary.setdefault(pos, set()).update(words)
    return table
