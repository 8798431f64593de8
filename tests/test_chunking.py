"""Chunks fit the embedder, follow paragraph then sentence boundaries, and lose no text."""

from fi_method.retrieval.chunking import chunk_document


def count_words(text: str) -> int:
    return len(text.split())


def test_a_short_document_is_one_chunk():
    chunks = chunk_document("d", "One paragraph.\n\nAnother one.", count_words, max_tokens=50)
    assert [(c.position, c.text, c.n_tokens) for c in chunks] == [
        (0, "One paragraph.\n\nAnother one.", 4)
    ]


def test_paragraphs_pack_greedily_and_long_ones_split_on_sentences():
    first = "Alpha beta gamma delta."
    second = "Epsilon zeta eta theta iota kappa. Lambda mu nu xi omicron pi. Rho sigma tau."
    third = "Upsilon phi chi psi omega."
    chunks = chunk_document("d", f"{first}\n\n{second}\n\n{third}", count_words, max_tokens=9)
    assert [c.text for c in chunks] == [
        first,
        "Epsilon zeta eta theta iota kappa.",
        "Lambda mu nu xi omicron pi. Rho sigma tau.",
        "Upsilon phi chi psi omega.",
    ]
    assert all(c.n_tokens <= 9 for c in chunks)
    assert [c.position for c in chunks] == [0, 1, 2, 3]
    packed = chunk_document("d", f"{first}\n\n{third}", count_words, max_tokens=9)
    assert [c.text for c in packed] == [f"{first}\n\n{third}"]


def test_a_sentence_longer_than_the_window_splits_on_words_and_ids_are_stable():
    text = " ".join(f"w{i}" for i in range(25))
    chunks = chunk_document("d", text, count_words, max_tokens=10)
    assert [c.n_tokens for c in chunks] == [10, 10, 5]
    assert " ".join(c.text for c in chunks) == text
    again = chunk_document("d", text, count_words, max_tokens=10)
    assert [c.chunk_id for c in again] == [c.chunk_id for c in chunks]
    assert chunk_document("other", text, count_words, 10)[0].chunk_id != chunks[0].chunk_id


def test_chunks_are_verbatim_text_of_the_document_whatever_separates_sentences():
    # One paragraph of lines (a poem, a list): sentences split on single line breaks.
    text = "\n".join(f"Line {i} of the poem talks about the sea." for i in range(30))
    chunks = chunk_document("d", text, count_words, max_tokens=20)
    assert len(chunks) > 1
    assert all(chunk.text in text for chunk in chunks)
    assert "\n" in chunks[0].text
    assert all(chunk.n_tokens <= 20 for chunk in chunks)
