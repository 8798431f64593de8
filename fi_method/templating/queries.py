"""Stage A filters: from ingested user turns to the clean, unique, uncontaminated queries that
become templates. Every removal is returned with its reason, for the rejects table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from datasketch import MinHash, MinHashLSH

from fi_method.corpus.decontamination import Contamination
from fi_method.text import clean_text, content_hash, fold_for_matching

# Length bounds are ours (the paper is silent): a query needs a few words to carry an intent, and
# past a few thousand characters it is a pasted document rather than a question.
MIN_QUERY_WORDS = 3
MAX_QUERY_CHARS = 4_000
# Near duplicates: MinHash over word 3-grams; 0.8 Jaccard is datatrove's and the common default.
NEAR_DUPLICATE_JACCARD = 0.8
MINHASH_PERMUTATIONS = 128
MINHASH_SEED = 1
SHINGLE_WORDS = 3
# raw_queries' code version: change it whenever filter_queries' rows change (the cleaning, the
# bounds, deduplication, decontamination). tests/goldens/queries.json holds them for real queries;
# tests/test_goldens.py fails when they change while this does not.
QUERIES_VERSION = "1"


@dataclass(frozen=True)
class QueryFilters:
    min_words: int = MIN_QUERY_WORDS
    max_chars: int = MAX_QUERY_CHARS
    near_duplicate_jaccard: float = NEAR_DUPLICATE_JACCARD


def _minhash(folded: str) -> MinHash:
    tokens = folded.split()
    shingles = [
        " ".join(tokens[i : i + SHINGLE_WORDS])
        for i in range(max(1, len(tokens) - SHINGLE_WORDS + 1))
    ]
    signature = MinHash(num_perm=MINHASH_PERMUTATIONS, seed=MINHASH_SEED)
    signature.update_batch([s.encode("utf-8") for s in shingles])
    return signature


def filter_queries(
    rows: list[dict],
    contamination_of: Callable[[str], Contamination | None],
    filters: QueryFilters = QueryFilters(),
) -> tuple[list[dict], list[dict]]:
    """Clean and filter ingested query rows (`text`, `source`, `line`, `turn`), in order:
    whitespace and encoding repair, length bounds, exact duplicates (after case and punctuation
    folding), near duplicates (MinHash LSH), then decontamination. The first occurrence wins.
    Returns (kept rows with `query_id`, `query`, `n_words`; rejects with `reason` and `detail`)."""
    kept: list[dict] = []
    rejects: list[dict] = []
    seen_exact: dict[str, str] = {}
    lsh = MinHashLSH(threshold=filters.near_duplicate_jaccard, num_perm=MINHASH_PERMUTATIONS)

    for row in rows:
        query = clean_text(row["text"])
        query_id = content_hash(query)
        folded = fold_for_matching(query)
        n_words = len(folded.split())

        if n_words < filters.min_words:
            reason, detail = "too_short", f"{n_words} words < {filters.min_words}: {query[:200]}"
        elif len(query) > filters.max_chars:
            reason, detail = "too_long", f"{len(query)} characters > {filters.max_chars}"
        elif folded in seen_exact:
            reason, detail = "duplicate", f"same text as query {seen_exact[folded]}"
        elif near := lsh.query(signature := _minhash(folded)):
            reason = "near_duplicate"
            detail = f"Jaccard >= {filters.near_duplicate_jaccard} with query {min(near)}"
        elif contamination := contamination_of(query):
            reason = "contaminated"
            detail = (
                f"{contamination.benchmark} item {contamination.item_id}: "
                f"{contamination.coverage:.0%} of its n-grams"
            )
        else:
            reason = detail = None
        if reason is not None:
            rejects.append(
                {**_origin(row), "item_id": query_id, "reason": reason, "detail": detail}
            )
            continue
        seen_exact[folded] = query_id
        lsh.insert(query_id, signature)
        kept.append({**_origin(row), "query_id": query_id, "query": query, "n_words": n_words})
    return kept, rejects


def _origin(row: dict) -> dict:
    return {"source": row["source"], "line": row["line"], "turn": row["turn"]}
