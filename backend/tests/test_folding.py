"""Sameness keys and search texts: what compares equal, and what search sees."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.folding import _unicode_fold, search_fold, song_key


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Beyoncé", "BEYONCÉ"),
        ("Beyoncé", "Beyonce\u0301"),  # composed and decomposed é
        ("Straße", "STRASSE"),
    ],
)
def test_song_key_treats_case_and_unicode_forms_as_equal(first: str, second: str) -> None:
    assert song_key(first) == song_key(second)


def test_song_key_keeps_accents_apart() -> None:
    assert song_key("Resume") != song_key("Résumé")


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        ("Beyoncé", "beyonce"),
        ("AC/DC", "ac dc"),
        ("Guns N' Roses", "guns n roses"),
        ("Motörhead", "motorhead"),
        ("\U0001d407ello", "hello"),  # mathematical bold H
        ("Røyksopp", "royksopp"),  # letters that decompose into no letter and mark
        ("ŁÓDŹ", "lodz"),
        ("Þórir Ólafsson", "thorir olafsson"),
        ("Œdipe Æther Đorđe", "oedipe aether dorde"),
    ],
)
def test_search_fold_drops_case_accents_and_punctuation(text: str, folded: str) -> None:
    assert search_fold(text) == folded


@given(st.text(st.characters(max_codepoint=127)))
def test_search_fold_of_ascii_text_is_the_unicode_fold(text: str) -> None:
    assert search_fold(text) == _unicode_fold(text)
