"""Reading user files into rows, row by row, so one bad row never costs the good rows beside it.

A source is a local JSONL, JSON, Parquet or CSV file, or `hf:NAME[@SPLIT]` for a Hugging Face
dataset (NAME may also be a local dataset folder). Each record yields accepted rows or one reject
naming the source, the line (1-based; the element number in a JSON array, the row number for
Parquet and datasets) and the reason.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import re
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
# The most rows one ingested shard (one partition) holds by default. A shard's heaviest step,
# judged_pairs with the rules engines, held 2.6 GB at its peak for 1,735 documents of ShareGPT
# answers (21,379 matched pairs) on CPU: 10,000 such documents stay within a 24 GiB machine, and
# at ~2 documents/s on 2 cores a partition takes about an hour and a half, a unit a backfill
# retries whole. Queries are short and each makes one template: 100,000 of them are a few hundred
# megabytes.
SHARD_DOCUMENTS = 10_000
SHARD_QUERIES = 100_000


class RowError(ValueError):
    """Why one record was rejected; `reason` is a short code, the message a readable detail."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class IngestResult:
    """Accepted rows and rejects of one source, or of one batch of it (`last`: no row follows)."""

    source: str
    rows: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    last: bool = True


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
    """Each element of a JSON array, decoded one at a time from the file read in chunks, so a file
    of any size streams. A file cut short keeps every complete element, and the one it ends inside
    is a `truncated` reject; reading stops at a malformed element (where the next one starts cannot
    be known), which is a `malformed_json` reject."""
    with path.open("rb") as handle:
        stream = _JsonTextStream(handle)
        if stream.next_char() != "[":
            problem = stream.broken.detail if stream.broken else "not a JSON array"
            raise ValueError(f"{path}: a .json file must hold a list of objects ({problem})")
        stream.pos += 1
        if stream.next_char() == "]":
            return
        index = 0
        while True:
            index += 1
            try:
                value = stream.decode_value()
            except RowError as error:
                yield index, error
                return
            yield index, _as_record(value)
            separator = stream.next_char()
            if separator not in (",", "]"):
                yield index + 1, stream.unexpected(separator, f"after element {index}")
                return
            stream.pos += 1
            if separator == "]":
                break
        if stream.next_char():
            detail = f"more data after the array's closing ] at byte {stream.byte_offset()}"
            yield index + 1, RowError("malformed_json", detail)


JSON_CHUNK_BYTES = 1 << 20
_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")
# A decoding error this close to the end of the text read so far may only mean that the value
# goes on in the next chunk (a cut literal, number or escape is a few characters long).
_JSON_TAIL_CHARS = 64
_JSON_PUNCTUATION = re.compile(r'[{}\[\],:"]')


class _JsonTextStream:
    """A file's text, decoded from UTF-8 a chunk at a time: `text[pos:]` is read and not yet
    consumed. Undecodable bytes end the text where they start, and `broken` says where."""

    def __init__(self, handle: io.BufferedIOBase):
        self._handle = handle
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._json = json.JSONDecoder()
        self._bytes_read = 0
        self._decoded_any = False
        self._bytes_before_text = 0
        self.text = ""
        self.pos = 0
        self.at_end = False
        self.broken: RowError | None = None

    def _read_more(self) -> bool:
        """Drop the consumed text, append the next chunk's (at least one character); False at the
        end of the file or of its decodable part."""
        self._bytes_before_text += len(self.text[: self.pos].encode("utf-8"))
        self.text, self.pos = self.text[self.pos :], 0
        while not self.at_end:
            pending = len(self._decoder.getstate()[0])
            raw = self._handle.read(JSON_CHUNK_BYTES)
            try:
                decoded = self._decoder.decode(raw, final=not raw)
                self.at_end = not raw
            except UnicodeDecodeError as error:
                decoded = error.object[: error.start].decode("utf-8")
                self.at_end = True
                if raw:  # else the file stops inside a character: it is cut, not undecodable
                    bad_byte = self._bytes_read - pending + error.start
                    self.broken = RowError("undecodable_bytes", f"not UTF-8 at byte {bad_byte}")
            if not self._decoded_any and decoded.startswith("\ufeff"):
                decoded = decoded[1:]
                self._bytes_before_text = len(codecs.BOM_UTF8)
            self._decoded_any = self._decoded_any or bool(decoded)
            self._bytes_read += len(raw)
            self.text += decoded
            if decoded:
                return True
        return False

    def byte_offset(self, pos: int | None = None) -> int:
        """Where `text[pos]` (default: the current position) starts in the file, in bytes."""
        before = self.text[: self.pos if pos is None else pos]
        return self._bytes_before_text + len(before.encode("utf-8"))

    def next_char(self) -> str:
        """The next character that is not whitespace, with `pos` on it; "" at the end."""
        while True:
            self.pos = _JSON_WHITESPACE.match(self.text, self.pos).end()
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self._read_more():
                return ""

    def unexpected(self, found: str, where: str) -> RowError:
        """The reject where `,` or `]` should follow an element and `found` does."""
        while not self.at_end and len(self.text) - self.pos <= _JSON_TAIL_CHARS:
            self._read_more()
        if not found or (self.at_end and not _JSON_PUNCTUATION.search(self.text, self.pos)):
            return self.broken or RowError(
                "truncated", f"the file ends {where}, before the array's closing ]"
            )
        return RowError(
            "malformed_json",
            f"expected ',' or ']' {where}, found {found!r} at byte {self.byte_offset()}",
        )

    def decode_value(self) -> Any:
        """The JSON value at `pos`, reading on until it is complete; raises RowError
        (`truncated`, `undecodable_bytes` or `malformed_json`) when it cannot be."""
        self.next_char()
        while True:
            try:
                value, end = self._json.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as error:
                unfinished = error.msg.startswith("Unterminated string")
                near_end = len(self.text) - error.pos <= _JSON_TAIL_CHARS
                if (unfinished or near_end) and not self.at_end:
                    self._read_more()
                    continue
                raise self._decode_error(error) from None
            if len(self.text) - end <= _JSON_TAIL_CHARS and not self.at_end:
                self._read_more()  # a number near the end of a chunk may go on in the next one
                continue
            self.pos = end
            return value

    def _decode_error(self, error: json.JSONDecodeError) -> RowError:
        # At the end of what can be read, an error with no JSON punctuation after it (or an
        # unterminated string) is where the text stops, not a mistake in the element.
        stops_here = error.msg.startswith("Unterminated string") or not _JSON_PUNCTUATION.search(
            self.text, error.pos
        )
        if self.at_end and stops_here:
            return self.broken or RowError(
                "truncated",
                f"the file ends inside this element, which starts at byte {self.byte_offset()}",
            )
        return RowError("malformed_json", f"{error.msg} at byte {self.byte_offset(error.pos)}")


def _iter_parquet(path: Path) -> Iterator[tuple[int, dict | RowError]]:
    import pyarrow.parquet as pq

    row_number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        for record in batch.to_pylist():
            row_number += 1
            yield row_number, record


def _iter_csv(path: Path, delimiter: str) -> Iterator[tuple[int, dict | RowError]]:
    # Read as a stream. Undecodable bytes become U+FFFD, and those rows are rejected.
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        for record in reader:
            line_number = reader.line_num
            values = [value for value in record.values() if isinstance(value, str)]
            if any("\ufffd" in value for value in values):
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


def _either(names: tuple[str, ...]) -> str:
    quoted = [repr(name) for name in names]
    return " or ".join([", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)


def _text_field(record: dict, names: tuple[str, ...], max_chars: int) -> str:
    present = [name for name in names if name in record and record[name] is not None]
    if not present:
        raise RowError("missing_text", f"no {_either(names)} field")
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
# Dolly `instruction`, HelpSteer `prompt`, WebQuestions `qText`; `query` and `text` for everything
# else. The first present wins: a Dolly record's `context` and `response` are not queries.
QUERY_FIELDS = ("query", "text", "question", "instruction", "prompt", "qText")
# Chats: `messages` of `role`/`content` turns (OpenAI style), WildChat's `conversation`, and
# ShareGPT's `conversations` of `from`/`value` turns.
CHAT_FIELDS = ("messages", "conversation", "conversations")


def query_texts(record: dict, max_chars: int = MAX_QUERY_CHARS) -> list[str | RowError]:
    """The user queries in one record: the first of its QUERY_FIELDS present, or every user turn of
    its chat list (the first of CHAT_FIELDS; assistant and system turns are never queries). A user
    turn that is no usable query is a RowError in its place, so the turns beside it are kept; a
    record without any query raises RowError."""
    for name in CHAT_FIELDS:
        if isinstance(record.get(name), list):
            turns = [_user_turn(turn, max_chars) for turn in record[name] if is_user_turn(turn)]
            if not turns:
                raise RowError("no_user_turn", f"{name!r} has no user turn")
            return turns
    if all(record.get(name) is None for name in QUERY_FIELDS):
        raise RowError(
            "missing_text", f"no {_either(QUERY_FIELDS)} field, nor a {_either(CHAT_FIELDS)} list"
        )
    return [_text_field(record, QUERY_FIELDS, max_chars)]


def is_user_turn(turn: Any) -> bool:
    """Whether a chat turn is the user's: its `role` (or ShareGPT's `from`) is user or human."""
    return isinstance(turn, dict) and (
        str(turn.get("role", turn.get("from", ""))).lower() in USER_ROLES
    )


def _user_turn(turn: dict, max_chars: int) -> str | RowError:
    text = turn.get("content", turn.get("value"))
    if text is None:
        return RowError("missing_text", "a user turn without 'content' or 'value'")
    if not isinstance(text, str):
        return RowError("text_not_a_string", f"a user turn's text is a {type(text).__name__}")
    try:
        return _checked_text(text, max_chars)
    except RowError as error:
        return error


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
    """Every record of `source` as rows and rejects, in one batch (see `ingest_batches`)."""
    return next(ingest_batches(kind, source))


def ingest_batches(kind: Kind, source: str, max_rows: int | None = None) -> Iterator[IngestResult]:
    """Read `source` as a stream into rows (`source`, `line`, `turn`, `text`, and for documents
    `source_id`, `url`) and rejects, in batches of at most `max_rows` rows (None: one batch).
    Every batch but the last is full and has `last` False; a reject goes with the batch being
    filled when it is read. Exact duplicates of an earlier row of the whole source are rejected:
    rows are remembered by a 16-byte hash, so memory holds one batch and the hashes."""
    batch = IngestResult(source=source)
    seen: set[bytes] = set()
    for line, record in iter_records(source):
        try:
            if isinstance(record, RowError):
                raise record
            if kind == "queries":
                items = [
                    text if isinstance(text, RowError) else {"text": text}
                    for text in query_texts(record)
                ]
            else:
                items = [document_fields(record)]
        except RowError as error:
            batch.rejects.append(_reject(source, line, error.reason, error.detail))
            continue
        for turn, item in enumerate(items):
            if isinstance(item, RowError):
                detail = f"user turn {turn}" + (f": {item.detail}" if item.detail else "")
                batch.rejects.append(_reject(source, line, item.reason, detail))
                continue
            digest = hashlib.blake2b(item["text"].encode("utf-8"), digest_size=16).digest()
            if digest in seen:
                batch.rejects.append(_reject(source, line, "duplicate", item["text"][:200]))
                continue
            seen.add(digest)
            if max_rows is not None and len(batch.rows) == max_rows:
                batch.last = False
                yield batch
                batch = IngestResult(source=source)
            batch.rows.append({"source": source, "line": line, "turn": turn, **item})
    yield batch


def _reject(source: str, line: int, reason: str, detail: str) -> dict:
    return {"source": source, "line": line, "reason": reason, "detail": detail}
