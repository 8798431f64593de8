"""Ingestion keeps every good row of a file and rejects each bad one with its line and reason."""

import csv
import json

import polars as pl
import pytest

from fi_method.ingest import RowError, document_fields, ingest_source, query_texts

GOOD = "How do I keep sourdough starter alive while traveling for two weeks?"


def write_bad_queries(path):
    lines = [
        json.dumps({"query": GOOD}).encode(),  # 1
        b'{"query": "broken json',  # 2
        json.dumps({"text": 42}).encode(),  # 3
        json.dumps({"title": "no text field"}).encode(),  # 4
        json.dumps({"query": "   \t  "}).encode(),  # 5
        b'{"query": "caf\xe9 latte recipe please"}',  # 6: Latin-1 byte, not UTF-8
        json.dumps({"query": GOOD}).encode(),  # 7: duplicate of line 1
        json.dumps({"query": "x" * 1_100_000}).encode(),  # 8: a megabyte-long row
        b"",  # 9
        json.dumps(["not", "an", "object"]).encode(),  # 10
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": "You are helpful."},
                    {"role": "user", "content": "What caused the French Revolution in 1789?"},
                    {"role": "assistant", "content": "Several causes..."},
                    {"role": "user", "content": "Compare it with the American Revolution."},
                ]
            }
        ).encode(),  # 11
        json.dumps(
            {"conversation": [{"from": "human", "value": "Write a haiku about the Amazon River."}]}
        ).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_every_bad_row_is_rejected_with_its_line_and_reason(tmp_path):
    result = ingest_source("queries", str(write_bad_queries(tmp_path / "q.jsonl")))
    rejected = {r["line"]: r["reason"] for r in result.rejects}
    assert rejected == {
        2: "malformed_json",
        3: "text_not_a_string",
        4: "missing_text",
        5: "empty_text",
        6: "undecodable_bytes",
        7: "duplicate",
        8: "too_long",
        9: "empty_row",
        10: "not_an_object",
    }
    assert [(r["line"], r["turn"], r["text"]) for r in result.rows] == [
        (1, 0, GOOD),
        (11, 0, "What caused the French Revolution in 1789?"),
        (11, 1, "Compare it with the American Revolution."),
        (12, 0, "Write a haiku about the Amazon River."),
    ]
    assert all(r["source"].endswith("q.jsonl") for r in result.rows + result.rejects)


def test_csv_and_parquet_sources(tmp_path):
    csv_path = tmp_path / "docs.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "url", "text"])
        writer.writerow(["a1", "https://example.org/a", "First document,\nwith a line break."])
        writer.writerow(["a2", "", ""])
    result = ingest_source("documents", str(csv_path))
    assert [(r["line"], r["source_id"], r["text"]) for r in result.rows] == [
        (3, "a1", "First document,\nwith a line break.")
    ]
    assert [(r["line"], r["reason"]) for r in result.rejects] == [(4, "empty_text")]

    parquet_path = tmp_path / "q.parquet"
    pl.DataFrame(
        {"query": ["What is a monad in Haskell?", None, "Explain Rust lifetimes."]}
    ).write_parquet(parquet_path)
    result = ingest_source("queries", str(parquet_path))
    assert [r["line"] for r in result.rows] == [1, 3]
    assert [(r["line"], r["reason"]) for r in result.rejects] == [(2, "missing_text")]


def test_hugging_face_dataset_loader_on_a_local_dataset_folder(tmp_path):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text(
        "\n".join(json.dumps({"text": t}) for t in ["How do tides work?", "Why is the sky blue?"])
        + "\n"
    )
    result = ingest_source("queries", f"hf:{folder}@train")
    assert [r["text"] for r in result.rows] == ["How do tides work?", "Why is the sky blue?"]


def test_query_fields_of_the_papers_sources():
    """GooAQ's `question`, Dolly's `instruction` (not its context or response), HelpSteer's
    `prompt`: each record gives its user's words."""
    gooaq = {"question": "who played the joker in the dark knight", "answer": "Heath Ledger"}
    dolly = {"instruction": "When did Virgin Australia start operating?", "context": "Virgin"}
    helpsteer = {"prompt": "Write a haiku about rain.", "response": "Soft rain..."}
    assert [query_texts(r)[0] for r in (gooaq, dolly, helpsteer)] == [
        gooaq["question"],
        dolly["instruction"],
        helpsteer["prompt"],
    ]


def test_field_extraction_errors():
    with pytest.raises(RowError) as error:
        query_texts({"messages": [{"role": "assistant", "content": "hi"}]})
    assert error.value.reason == "no_user_turn"
    with pytest.raises(RowError, match="no 'query', 'text', 'question', 'instruction' or 'prompt' field"):
        query_texts({"answer": "Heath Ledger"})
    assert document_fields({"text": "Body", "id": 7, "url": 3}) == {
        "source_id": "7",
        "url": None,
        "text": "Body",
    }


def test_unknown_file_type_and_missing_file(tmp_path):
    (tmp_path / "q.txt").write_text("hello")
    with pytest.raises(ValueError, match="unsupported file type"):
        ingest_source("queries", str(tmp_path / "q.txt"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        ingest_source("queries", str(tmp_path / "missing.jsonl"))
