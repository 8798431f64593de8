"""Ingestion keeps every good row of a file and rejects each bad one with its line and reason."""

import csv
import json

import polars as pl
import pytest
from typer.testing import CliRunner

import fi_method.ingest
from fi_assets.cli import app
from fi_method.ingest import (
    RowError,
    document_fields,
    ingest_batches,
    ingest_source,
    iter_records,
    query_texts,
)
from fi_method.samples import sharegpt_file, webquestions_files
from fi_resources.instance import open_instance
from fi_resources.settings import get_settings
from fi_resources.storage import Storage
from fi_resources.tables import INGESTED_DOCUMENTS

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
    with pytest.raises(RowError) as error:
        query_texts({"answer": "Heath Ledger"})
    assert error.value.reason == "missing_text"
    assert error.value.detail == (
        "no 'query', 'text', 'question', 'instruction', 'prompt' or 'qText' field, "
        "nor a 'messages', 'conversation' or 'conversations' list"
    )
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


# The ShareGPT file is pretty-printed with two spaces: a line "  }," ends a top-level element.
SHAREGPT_ELEMENT_END = b"\n  },\n  {"
SHAREGPT_SLICE_BYTES = 250_000


def sharegpt_slice(path, size=SHAREGPT_SLICE_BYTES):
    """The first `size` bytes of the real ShareGPT file, cut inside an element, and the elements
    that are complete in it (decoded independently of the reader under test), with the byte where
    the cut element starts."""
    with sharegpt_file().open("rb") as handle:
        head = handle.read(size)
    path.write_bytes(head)
    last_end = head.rfind(SHAREGPT_ELEMENT_END)
    complete = json.loads(head[: last_end + len(b"\n  }")] + b"]")
    return complete, last_end + len(b"\n  },\n  ")


def test_sharegpt_as_published_user_turns_only_and_the_cut_element_is_a_reject(tmp_path):
    complete, cut_element_byte = sharegpt_slice(tmp_path / "sharegpt.json")
    result = ingest_source("queries", str(tmp_path / "sharegpt.json"))

    turns = [(line, t) for line, r in enumerate(complete, 1) for t in r["conversations"]]
    assert len(complete) > 30 and {t["from"] for _, t in turns} == {"human", "gpt"}
    # Each user turn with text is a row, the first time it is said; an empty turn (element 29
    # has one) costs only itself.
    expected, said = [], set()
    for line, turn in turns:
        if turn["from"] == "human" and turn["value"].strip() and turn["value"] not in said:
            said.add(turn["value"])
            expected.append((line, turn["value"]))
    assert len(expected) > 60
    assert [(row["line"], row["text"]) for row in result.rows] == expected
    assert {(r["line"], r["reason"], r["detail"]) for r in result.rejects if r["line"] == 29} == {
        (29, "empty_text", "user turn 5")
    }
    # The element the cut falls in is rejected with its position; nothing after it is read.
    last = result.rejects[-1]
    assert (last["line"], last["reason"]) == (len(complete) + 1, "truncated")
    assert last["detail"] == (
        f"the file ends inside this element, which starts at byte {cut_element_byte}"
    )
    assert max(row["line"] for row in result.rows) == len(complete)


def test_a_json_array_reads_the_same_whatever_the_chunk_size(tmp_path, monkeypatch):
    sharegpt_slice(tmp_path / "sharegpt.json", size=60_000)
    whole = list(iter_records(str(tmp_path / "sharegpt.json")))
    # Chunks of a few bytes split every string, number, escape and multi-byte character.
    monkeypatch.setattr(fi_method.ingest, "JSON_CHUNK_BYTES", 7)
    chunked = list(iter_records(str(tmp_path / "sharegpt.json")))
    assert [(line, str(r) if isinstance(r, RowError) else r) for line, r in chunked] == [
        (line, str(r) if isinstance(r, RowError) else r) for line, r in whole
    ]
    assert isinstance(whole[-1][1], RowError) and whole[-1][1].reason == "truncated"


def test_the_whole_sharegpt_file_streams_to_its_cut_end():
    records = list(iter_records(str(sharegpt_file())))
    good = [r for _, r in records if isinstance(r, dict)]
    errors = [(line, r.reason, r.detail) for line, r in records if isinstance(r, RowError)]
    assert len(good) == 17_671
    assert errors == [
        (17_672, "truncated", "the file ends inside this element, which starts at byte 125506645")
    ]
    first_turns = [
        turns[0] for r in good if (turns := [t for t in r["conversations"] if t["from"] == "human"])
    ]
    assert sum(1 for turn in first_turns if turn["value"].strip()) == 17_382


def test_malformed_undecodable_and_unclosed_json_arrays(tmp_path):
    cases = {
        b'[{"qText": "who is the president of brazil?"}, {"qText": oops}, {"qText": "c?"}]': (
            "malformed_json",
            "Expecting value at byte 57",  # where `oops` starts
        ),
        b'[{"qText": "who is the president of brazil?"} {"qText": "c?"}]': (
            "malformed_json",
            "expected ',' or ']' after element 1, found '{' at byte 46",
        ),
        b'[{"qText": "who is the president of brazil?"}, {"qText": "caf\xe9?"}]': (
            "undecodable_bytes",
            "not UTF-8 at byte 61",  # the Latin-1 é
        ),
        b'[{"qText": "who is the president of brazil?"}': (
            "truncated",
            "the file ends after element 1, before the array's closing ]",
        ),
    }
    for number, (data, (reason, detail)) in enumerate(cases.items()):
        path = tmp_path / f"q{number}.json"
        path.write_bytes(data)
        result = ingest_source("queries", str(path))
        assert [row["text"] for row in result.rows] == ["who is the president of brazil?"]
        assert [(r["line"], r["reason"], r["detail"]) for r in result.rejects] == [
            (2, reason, detail)
        ]
    (tmp_path / "object.json").write_text('{"qText": "not in an array?"}')
    with pytest.raises(ValueError, match="must hold a list of objects"):
        list(iter_records(str(tmp_path / "object.json")))


def test_webquestions_as_published_read_from_qtext(tmp_path):
    published = json.loads(webquestions_files()[1].read_text())
    result = ingest_source("queries", str(webquestions_files()[1]))
    assert len(published) == len(result.rows) == 755 and not result.rejects
    assert [row["text"] for row in result.rows] == [q["qText"] for q in published]

    # A record without qText is a reject naming every field a query may be in.
    rows = published[:3] + [{"qId": "wqr999999", "answers": ["Rome"]}]
    (tmp_path / "webquestions.json").write_text(json.dumps(rows, indent=1))
    result = ingest_source("queries", str(tmp_path / "webquestions.json"))
    assert [row["text"] for row in result.rows] == [q["qText"] for q in published[:3]]
    assert [(r["line"], r["reason"]) for r in result.rejects] == [(4, "missing_text")]
    assert "'qText'" in result.rejects[0]["detail"]
    assert "'conversations'" in result.rejects[0]["detail"]


def test_a_source_streams_in_batches_of_at_most_max_rows(tmp_path):
    """Eight good rows, a malformed one and, last, a copy of the first, in batches of three:
    every batch but the last is full, the copy is found across batches, and each reject goes
    with the batch being filled when it is read."""
    lines = [json.dumps({"text": f"Document number {i} of the news."}) for i in range(8)]
    lines.insert(4, "{not json")
    lines.append(lines[0])
    path = tmp_path / "news.jsonl"
    path.write_text("\n".join(lines) + "\n")
    batches = list(ingest_batches("documents", str(path), max_rows=3))
    assert [[row["line"] for row in batch.rows] for batch in batches] == [
        [1, 2, 3],
        [4, 6, 7],
        [8, 9],
    ]
    assert [batch.last for batch in batches] == [False, False, True]
    assert [[(r["line"], r["reason"]) for r in batch.rejects] for batch in batches] == [
        [],
        [(5, "malformed_json")],
        [(10, "duplicate")],
    ]
    whole = ingest_source("documents", str(path))
    assert [row["line"] for row in whole.rows] == [1, 2, 3, 4, 6, 7, 8, 9] and whole.last


def test_an_input_over_the_shard_size_is_numbered_shards_and_again_the_same(
    fi_home, tmp_path, monkeypatch
):
    """FI_SHARD_DOCUMENTS=2: five documents are shards news-00000..news-00002, each registered
    as it is written; ingesting the file again gives the same shards with the same rows; a file
    that fits keeps its plain name."""
    monkeypatch.setenv("FI_SHARD_DOCUMENTS", "2")
    get_settings.cache_clear()
    news = tmp_path / "news.jsonl"
    news.write_text(
        "".join(
            json.dumps({"text": f"Report {i}: the river rose overnight."}) + "\n" for i in range(5)
        )
    )
    storage = Storage(home=str(fi_home))
    shards = ["news-00000", "news-00001", "news-00002"]
    tables = []
    for _ in range(2):
        result = CliRunner().invoke(app, ["ingest", "documents", str(news)])
        assert result.exit_code == 0, result.output
        assert [line.split(":")[0] for line in result.output.splitlines()] == [
            f"documents shard {shard}" for shard in shards
        ]
        assert "news-00002: 1 accepted" in result.output
        assert open_instance(fi_home).get_dynamic_partitions("doc_shards") == shards
        tables.append([storage.read_table(INGESTED_DOCUMENTS, shard) for shard in shards])
    assert [t["line"].to_list() for t in tables[0]] == [[1, 2], [3, 4], [5]]
    assert all(a.equals(b) for a, b in zip(*tables, strict=True))
    brief = tmp_path / "brief.jsonl"
    brief.write_text(news.read_text().splitlines()[0] + "\n")
    result = CliRunner().invoke(app, ["ingest", "documents", str(brief)])
    assert result.exit_code == 0 and "documents shard brief: 1 accepted" in result.output
