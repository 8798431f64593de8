"""Stage A filters on tiny literal queries: each removal has its reason, the first occurrence wins.
The bundled query sources (WebQuestions, ShareGPT) as the sample and `fi ingest` read them, and
their credit in an exported dataset card."""

import json

import polars as pl
import pytest
from typer.testing import CliRunner

from fi_assets.cli import app
from fi_assets.cli.export import query_source_rows, query_sources_section
from fi_method import samples
from fi_method.corpus.decontamination import default_index
from fi_method.ingest import ingest_source
from fi_method.templating.queries import QueryFilters, filter_queries
from fi_method.text import clean_text, content_hash
from fi_resources.storage import Storage
from fi_resources.tables import INSTANTIATED_PAIRS, PACKED_CORPUS, RAW_QUERIES

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


def test_bundled_sources_hold_their_documented_counts():
    questions = samples.webquestions_questions()
    assert len(questions) == len({q["qId"] for q in questions}) == 5_810
    assert [len(json.loads(path.read_text())) for path in samples.webquestions_files()] == [
        2_834,
        755,
        189,
        2_032,
    ]
    openings = samples.sharegpt_openings()
    assert len(openings) == 9_434
    assert all(record["id"].endswith("_0") for record in openings)
    assert all(
        len(record["conversations"]) == 1
        and record["conversations"][0]["from"] in ("human", "user")
        and record["conversations"][0]["value"].strip()
        for record in openings
    )


def test_seeded_sample_is_deterministic_and_keeps_source_order():
    items = list(range(1_000))
    drawn = samples.seeded_sample(items, 10)
    assert drawn == samples.seeded_sample(items, 10) == sorted(drawn)
    assert drawn != samples.seeded_sample(items, 10, seed=1)
    assert samples.seeded_sample(items, None) == samples.seeded_sample(items, 5_000) == items


def test_the_sample_draws_each_source_as_published_and_ingests_it(tmp_path):
    first = samples.write_sample(tmp_path)
    assert [p.name for p in first.query_files] == [
        "wildchat_sample.jsonl",
        "webquestions_sample.json",
        "sharegpt_sample.json",
    ]

    webquestions = json.loads(first.webquestions.read_text())
    published = samples.webquestions_questions()
    assert webquestions == samples.seeded_sample(published, samples.DEMO_WEBQUESTIONS)
    assert len(webquestions) == samples.DEMO_WEBQUESTIONS
    result = ingest_source("queries", str(first.webquestions))
    assert [row["text"] for row in result.rows] == [q["qText"] for q in webquestions]

    sharegpt = json.loads(first.sharegpt.read_text())
    openings = samples.sharegpt_openings()
    assert sharegpt == samples.seeded_sample(openings, samples.DEMO_SHAREGPT)
    assert len(sharegpt) == samples.DEMO_SHAREGPT
    result = ingest_source("queries", str(first.sharegpt))
    assert not result.rejects
    assert [row["text"] for row in result.rows] == [
        record["conversations"][0]["value"] for record in sharegpt
    ]


def test_sources_are_credited_by_where_their_files_come_from(tmp_path):
    sample = tmp_path / "samples"
    assert samples.query_source_of(str(sample / "sharegpt_sample.json")) is samples.SHAREGPT
    assert samples.query_source_of(str(sample / "webquestions_full.json")) is samples.WEBQUESTIONS
    assert samples.query_source_of(str(sample / "wildchat_sample.jsonl")) is samples.WILDCHAT
    assert samples.query_source_of(str(samples.sharegpt_file())) is samples.SHAREGPT
    for path in samples.webquestions_files():
        assert samples.query_source_of(str(path)) is samples.WEBQUESTIONS
    # A file of the user's own, even one named like a WebQuestions split, is not credited.
    assert samples.query_source_of(str(tmp_path / "test.json")) is None
    assert samples.query_source_of("hf:allenai/WildChat-1M@train") is None


def test_ingest_names_a_bundled_source_without_its_path(fi_home):
    result = CliRunner().invoke(app, ["ingest", "queries", "webquestions", "--shard", "wq"])
    assert result.exit_code == 0, result.output
    for split, count in (("trainmodel", 2_834), ("val", 755), ("devtest", 189), ("test", 2_032)):
        assert f"queries shard wq_{split}: {count} accepted, 0 rejected" in result.output
    assert samples.bundled_query_files("sharegpt") == {"sharegpt": samples.sharegpt_file()}
    with pytest.raises(KeyError, match="not a bundled query source"):
        samples.bundled_query_files("gooaq")


def test_dataset_card_credits_the_query_shards_behind_the_rows(tmp_path):
    storage = Storage(home=str(tmp_path / "home"))
    sources = {
        "sharegpt_sample": str(tmp_path / "samples" / "sharegpt_sample.json"),
        "webquestions_val": str(samples.webquestions_files()[1]),
        "mine": str(tmp_path / "my_queries.jsonl"),
    }
    for shard, source in sources.items():
        rows = [{"query_id": f"{shard}-q{n}", "source": source} for n in range(2)]
        storage.write_table(RAW_QUERIES, shard, RAW_QUERIES.frame(rows))
    pairs = [
        ("p1", "sharegpt_sample-q0"),
        ("p2", "sharegpt_sample-q1"),
        ("p3", "webquestions_val-q0"),
        ("p4", "mine-q1"),
        ("p5", "mine-q0"),  # instantiated but not packed: not in the export
    ]
    storage.write_table(
        INSTANTIATED_PAIRS,
        "wiki",
        INSTANTIATED_PAIRS.frame({"pair_id": p, "query_id": q} for p, q in pairs),
    )
    packed = [{"recipe": "fineinstructions", "sample_id": p} for p, _ in pairs[:4]]
    storage.write_table(PACKED_CORPUS, "wiki.fineinstructions", PACKED_CORPUS.frame(packed))

    rows = query_source_rows(storage, "fineinstructions", ["wiki"])
    assert rows.rows() == [
        ("sharegpt_sample", sources["sharegpt_sample"], 2),
        ("mine", sources["mine"], 1),
        ("webquestions_val", sources["webquestions_val"], 1),
    ]
    card = query_sources_section(rows)
    assert f"| sharegpt_sample | {samples.SHAREGPT.title}; {samples.SHAREGPT.origin} | " in card
    assert "| Apache-2.0, as declared by" in card
    assert "| webquestions_val | WebQuestions (Berant" in card and "| CC BY 4.0 | 1 |" in card
    assert "| mine | `my_queries.jsonl` | the source's own terms | 1 |" in card
    assert query_source_rows(storage, "non_instructional", ["wiki"]).is_empty()
    assert query_sources_section(pl.DataFrame()).startswith("No user query")
