"""Reading user files into rows, row by row, so one bad row never costs the good rows beside it.

A source is a local JSONL, JSON, Parquet or CSV file, or `hf:NAME[@SPLIT]` for a Hugging Face
dataset (NAME may also be a local dataset folder). Each record yields accepted rows or one reject
naming the source, the line (1-based; the row number for Parquet and datasets) and the reason.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Kind = Literal["queries", "documents"]

HF_PREFIX = "hf:"
# A megabyte-long "query" is a paste of a document or junk; documents get a wider bound.
MAX_QUERY_CHARS = 20_000
MAX_DOCUMENT_CHARS = 500_000
USER_ROLES = {"user", "human"}


class RowError(ValueError):
    """Why one record was rejected; `reason` is a short code, the message a readable detail."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class IngestResult:
    """Accepted rows and rejects of one source."""

    source: str
    rows: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)


def iter_records(source: str) -> Iterator[tuple[int, dict | RowError]]:
    """Yield (line, record) for each record of `source`, or (line, RowError) where a record
    cannot be read (undecodable bytes, malformed JSON, a value that is not an object)."""
    if source.startswith(HF_PREFIX):
        yield from _iter_hf_dataset(source[len(HF_PREFIX) :])
        return
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no such file (for a Hugging Face dataset use hf:NAME)")
    suffixes = "".join(path.suffixes[-2:]).lower()
    if suffixes.endswith((".jsonl", ".ndjson")):
        yield from _iter_jsonl(path)
    elif suffixes.endswith(".json"):
        yield from _iter_json_array(path)
    elif suffixes.endswith(".parquet"):
        yield from _iter_parquet(path)
    elif suffixes.endswith((".csv", ".tsv")):
        yield from _iter_csv(path, delimiter="\t" if suffixes.endswith(".tsv") else ",")
    else:
        raise ValueError(f"{source}: unsupported file type (use .jsonl, .json, .parquet or .csv)")


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict | RowError]]:
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield line_number, RowError("undecodable_bytes", f"not UTF-8 at byte {error.start}")
                continue
            if not text.strip():
                yield line_number, RowError("empty_row")
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                yield line_number, RowError("malformed_json", error.msg)
                continue
            yield line_number, _as_record(record)


def _iter_json_array(path: Path) -> Iterator[tuple[int, dict | RowError]]:
    try:
        records = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a JSON array of objects ({error}); use JSONL") from error
    if not isinstance(records, list):
        raise ValueError(f"{path}: a .json file must hold a list of objects")  # noqa: TRY004 (a file error, reported like the others)
    for index, record in enumerate(records, start=1):
        yield index, _as_record(record)


def _iter_parquet(path: Path) -> Iterator[tuple[int, dict | RowError]]:
    import pyarrow.parquet as pq

    row_number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        for record in batch.to_pylist():
            row_number += 1
            yield row_number, record


def _iter_csv(path: Path, delimiter: str) -> Iterator[tuple[int, dict | RowError]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Keep every decodable row: undecodable bytes become U+FFFD and those rows are rejected.
        text = raw.decode("utf-8-sig", errors="replace")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    for record in reader:
        line_number = reader.line_num
        if any("\ufffd" in (value or "") for value in record.values() if isinstance(value, str)):
            yield line_number, RowError("undecodable_bytes", "not UTF-8")
            continue
        yield line_number, record


def _iter_hf_dataset(spec: str) -> Iterator[tuple[int, dict | RowError]]:
    import datasets

    name, _, split = spec.partition("@")
    dataset = datasets.load_dataset(name, split=split or "train", streaming=True)
    yield from enumerate(dataset, start=1)


def _as_record(value: Any) -> dict | RowError:
    if isinstance(value, dict):
        return value
    return RowError("not_an_object", f"expected a JSON object, got {type(value).__name__}")


def _text_field(record: dict, names: tuple[str, ...], max_chars: int) -> str:
    present = [name for name in names if name in record and record[name] is not None]
    if not present:
        quoted = [repr(name) for name in names]
        listed = " or ".join([", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)
        raise RowError("missing_text", f"no {listed} field")
    value = record[present[0]]
    if not isinstance(value, str):
        raise RowError("text_not_a_string", f"{present[0]!r} is a {type(value).__name__}")
    return _checked_text(value, max_chars)


def _checked_text(value: str, max_chars: int) -> str:
    if not value.strip():
        raise RowError("empty_text")
    if len(value) > max_chars:
        raise RowError("too_long", f"{len(value)} characters > {max_chars}")
    return value


# Where the paper's query sources keep the user's words: GooAQ and Natural Questions `question`,
# Dolly `instruction`, HelpSteer `prompt`; `query` and `text` for everything else. The first
# present wins: a Dolly record's `context` and `response` are not queries.
QUERY_FIELDS = ("query", "text", "question", "instruction", "prompt")


def query_texts(record: dict, max_chars: int = MAX_QUERY_CHARS) -> list[str]:
    """The user queries in one record: the first of its QUERY_FIELDS present, or every user turn of
    its chat `messages` / `conversation` (assistant and system turns are never queries)."""
    for name in ("messages", "conversation"):
        if isinstance(record.get(name), list):
            turns = [
                turn.get("content", turn.get("value"))
                for turn in record[name]
                if isinstance(turn, dict)
                and str(turn.get("role", turn.get("from", ""))).lower() in USER_ROLES
            ]
            texts = [t for t in turns if isinstance(t, str)]
            if not texts:
                raise RowError("no_user_turn", f"{name!r} has no user turn with text")
            return [_checked_text(t, max_chars) for t in texts]
    return [_text_field(record, QUERY_FIELDS, max_chars)]


def document_fields(record: dict, max_chars: int = MAX_DOCUMENT_CHARS) -> dict:
    """`text` (required), `id` and `url` (optional) of one document record."""
    text = _text_field(record, ("text",), max_chars)
    source_id = record.get("id")
    url = record.get("url")
    return {
        "source_id": None if source_id is None else str(source_id),
        "url": url if isinstance(url, str) else None,
        "text": text,
    }


def ingest_source(kind: Kind, source: str) -> IngestResult:
    """Read every record of `source` into rows (`source`, `line`, `turn`, `text`, and for
    documents `source_id`, `url`) and rejects. Exact duplicates of an earlier row are rejected."""
    result = IngestResult(source=source)
    seen: set[str] = set()
    for line, record in iter_records(source):
        try:
            if isinstance(record, RowError):
                raise record
            if kind == "queries":
                items = [{"text": text} for text in query_texts(record)]
            else:
                items = [document_fields(record)]
        except RowError as error:
            result.rejects.append(_reject(source, line, error.reason, error.detail))
            continue
        for turn, item in enumerate(items):
            if item["text"] in seen:
                result.rejects.append(_reject(source, line, "duplicate", item["text"][:200]))
                continue
            seen.add(item["text"])
            result.rows.append({"source": source, "line": line, "turn": turn, **item})
    return result


def _reject(source: str, line: int, reason: str, detail: str) -> dict:
    return {"source": source, "line": line, "reason": reason, "detail": detail}
