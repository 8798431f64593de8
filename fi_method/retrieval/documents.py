"""Document cleaning: the text every later stage excerpts from, with a stable id, its language
and its length."""

from __future__ import annotations

from functools import cache

from py3langid.langid import MODEL_FILE, LanguageIdentifier

from fi_method.text import clean_text, content_hash

# Shorter than this, a document cannot ground six instruction-answer pairs (ours; the paper is
# silent). Matching and packing work per document, so there is no upper bound here.
MIN_DOCUMENT_CHARS = 200
LANGUAGE_ID_CHARS = 5_000
# documents' code version: change it whenever clean_documents' rows change (the cleaning, the id,
# the language). tests/goldens/documents.json holds them for real articles; tests/test_goldens.py
# fails when they change while this does not.
DOCUMENTS_VERSION = "1"


@cache
def _language_identifier() -> LanguageIdentifier:
    # Normalised probabilities, so `language_score` reads as a confidence in [0, 1].
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def clean_documents(
    rows: list[dict], min_chars: int = MIN_DOCUMENT_CHARS, seen: set[str] | None = None
) -> tuple[list[dict], list[dict]]:
    """Clean ingested document rows (`text`, `source`, `line`, `source_id`, `url`). Returns (kept
    rows with `doc_id`, `text`, `language`, `language_score`, `n_chars`, `n_words`; rejects for
    documents too short after cleaning and for duplicates). A partition cleaned a batch at a
    time passes every batch the same `seen` (the doc_ids kept so far), which grows, so a
    duplicate of an earlier batch's document is rejected too."""
    kept: list[dict] = []
    rejects: list[dict] = []
    seen = set() if seen is None else seen
    for row in rows:
        text = clean_text(row["text"])
        doc_id = content_hash(text)
        origin = {"source": row["source"], "line": row["line"], "item_id": doc_id}
        if len(text) < min_chars:
            rejects.append(
                {**origin, "reason": "too_short", "detail": f"{len(text)} characters < {min_chars}"}
            )
            continue
        if doc_id in seen:
            rejects.append(
                {
                    **origin,
                    "reason": "duplicate",
                    "detail": "same cleaned text as an earlier document",
                }
            )
            continue
        seen.add(doc_id)
        language, score = _language_identifier().classify(text[:LANGUAGE_ID_CHARS])
        kept.append(
            {
                "doc_id": doc_id,
                "source_id": row.get("source_id"),
                "url": row.get("url"),
                "source": row["source"],
                "line": row["line"],
                "language": language,
                "language_score": float(score),
                "n_chars": len(text),
                "n_words": len(text.split()),
                "text": text,
            }
        )
    return kept, rejects
