"""Cleaning and ids: the same content always gets the same id, whatever its surface noise."""

from fi_method.text import clean_text, content_hash, fold_for_matching, sentence_spans, words


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


def test_sentences_do_not_end_after_abbreviations_or_initials():
    text = (
        "The National Park Service is an agency of the U.S. federal government. "
        "It was created in 1916 under Dr. Stephen T. Mather, e.g. the first director. "
        "J. K. Rowling wrote it in the U.K. in 1997."
    )
    assert [text[a:b] for a, b in sentence_spans(text)] == [
        "The National Park Service is an agency of the U.S. federal government.",
        "It was created in 1916 under Dr. Stephen T. Mather, e.g. the first director.",
        "J. K. Rowling wrote it in the U.K. in 1997.",
    ]


def test_a_line_that_ends_on_an_initial_still_ends_its_sentence():
    text = "Different glyphs of the lowercase letter A.\nDuring Roman times, there were many."
    assert [text[a:b] for a, b in sentence_spans(text)] == [
        "Different glyphs of the lowercase letter A.",
        "During Roman times, there were many.",
    ]
