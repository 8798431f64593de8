"""Stage A filters on tiny literal queries: each removal has its reason, the first occurrence wins."""

from fi_method.corpus.decontamination import default_index
from fi_method.templating.queries import QueryFilters, filter_queries
from fi_method.text import clean_text, content_hash

LONG = (
    "Can you explain step by step how to set up a Python virtual environment on Windows 11, "
    "install Django and Postgres, and deploy the resulting web application to a small Linux server?"
)


def rows(*texts):
    return [{"text": t, "source": "q.jsonl", "line": i + 1, "turn": 0} for i, t in enumerate(texts)]


def run(*texts, filters: QueryFilters | None = None):
    return filter_queries(rows(*texts), default_index().match, filters or QueryFilters())


def test_near_duplicates_are_removed_and_the_first_is_kept():
    near = LONG.replace("small Linux server", "small Linux box")
    kept, rejects = run(LONG, near, "How do I make a cold brew coffee at home?")
    assert [k["line"] for k in kept] == [1, 3]
    assert [(r["line"], r["reason"]) for r in rejects] == [(2, "near_duplicate")]
    assert kept[0]["query_id"] in rejects[0]["detail"]


def test_cleaning_length_bounds_and_exact_duplicates():
    kept, rejects = run(
        "  What   is the\u00a0best way to learn   Japanese kanji?  ",
        "what is the best way to learn japanese kanji",
        "thanks!",
        "x " * 3000,
        filters=QueryFilters(max_chars=4000),
    )
    assert [k["query"] for k in kept] == ["What is the best way to learn Japanese kanji?"]
    assert [r["reason"] for r in rejects] == ["duplicate", "too_short", "too_long"]


def test_ids_are_content_hashes_of_the_cleaned_query():
    kept, _ = run("Why do cats purr when they are content?")
    assert kept[0]["query_id"] == content_hash(
        clean_text("Why do cats purr when they are content?")
    )
    again, _ = run("Why do cats purr when they are content?")
    assert again == kept


def test_contaminated_query_names_the_benchmark():
    _, rejects = run(
        "Quick question. My sister and her girlfriends want me to play kickball with them. "
        "Can you explain how the game is played, so they don't take advantage of me?"
    )
    assert rejects[0]["reason"] == "contaminated"
    assert rejects[0]["detail"].startswith("alpaca_eval")
