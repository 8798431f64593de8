"""Cleaning and ids: the same content always gets the same id, whatever its surface noise."""

from fi_method.text import clean_text, content_hash, fold_for_matching, words


def test_clean_text_repairs_mojibake_spaces_and_control_characters():
    assert clean_text("  SchrÃ¶dinger\u00a0 equation\x07 \r\n\r\n\r\n\r\nnext  paragraph ") == (
        "Schrödinger equation\n\nnext paragraph"
    )


def test_content_hash_is_stable_and_separates_parts():
    assert content_hash("a") == "69fc94c033d1f48c"
    assert content_hash("ab", "c") != content_hash("a", "bc")
    assert len(content_hash("anything")) == 16


def test_folding_ignores_case_accents_and_punctuation():
    assert fold_for_matching("Héllo, WORLD!  It's") == "hello world it's"
    assert words("Don't stop-believing") == ["don't", "stop", "believing"]
