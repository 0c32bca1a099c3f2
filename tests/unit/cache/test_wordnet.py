"""The verifier's WordNet table: relations of words no hand list of ours
names, read through WordNet's own inflection rules."""

from services.cache.verifier import Check, LexicalVerifier
from services.cache.wordnet import WordNet, wordnet
from services.cache.wordnet_build import TABLE


def test_the_table_ships_with_its_licence() -> None:
    assert TABLE.exists()
    licence = (TABLE.parent / "WORDNET-LICENSE").read_text()
    assert "Princeton University" in licence
    assert "Princeton University" in "".join(TABLE.read_text().splitlines()[:2])


def test_antonyms_are_found_through_inflections() -> None:
    table = wordnet()
    assert table.opposed("faster", "slower")
    assert table.opposed("cheaper", "expensive")
    assert table.opposed("permanent", "temporary")
    assert table.opposed("children", "parents")
    assert not table.opposed("modify", "change")
    assert not table.opposed("basil", "parsley")


def test_synonyms_share_a_synset_in_some_sense() -> None:
    table = wordnet()
    assert table.synonymous("modify", "change")
    assert table.synonymous("frequently", "often")
    assert table.synonymous("founders", "founder")
    assert not table.synonymous("basil", "parsley")
    assert not table.synonymous("france", "germany")


def test_irregular_forms_and_lemmas_that_only_look_inflected() -> None:
    table = wordnet()
    assert {"speak", "child", "good"} <= table.lemmas("spoken") | table.lemmas("children") | table.lemmas("better")
    assert "stop" in table.lemmas("stopped") and "big" in table.lemmas("bigger")
    # "bed" is no past tense of "b"; an adjective is not cut to a 3-letter stem.
    assert table.lemmas("bed") == {"bed"}
    assert "fast" in table.lemmas("faster")


def test_an_antonym_no_hand_list_names_turns_a_rewording_down() -> None:
    # Two places differ, so neither the slot check nor a one-word swap
    # sees it; without WordNet it was a rewording, accepted from its
    # similarity up.
    query, stored = "What makes some tattoos permanent?", "How do temporary tattoos work?"
    assert LexicalVerifier(lexicon=WordNet()).verify(query, stored).check is Check.REWORDED
    verdict = LexicalVerifier().verify(query, stored)
    assert not verdict.accepted and verdict.check is Check.ANTONYM, verdict


def test_function_words_opposed_in_wordnet_are_no_antonyms() -> None:
    # "no"/"any" are WordNet antonyms; as function words they reword.
    verdict = LexicalVerifier().verify(
        "Is there any alternative page mentioned in the guide?", "Is no alternative page mentioned in the guide?"
    )
    assert verdict.check is not Check.ANTONYM


def test_a_wordnet_synonym_is_no_slot_change() -> None:
    query, stored = "How can I modify a file's permissions on Linux?", "How do I change file permissions in Linux?"
    old = LexicalVerifier(lexicon=WordNet()).verify(query, stored)
    assert not old.accepted and old.check is Check.SLOT
    assert LexicalVerifier().verify(query, stored).accepted
    # A swap WordNet does not hold as synonyms is still a slot change.
    assert LexicalVerifier().verify("How do I store fresh basil?", "How do I store fresh parsley?").check is Check.SLOT
