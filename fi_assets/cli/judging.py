"""`fi judge FILE`: any file of (instruction, answer) pairs judged by the configured judge role,
through the same call path and call cache as `judged_pairs`, so that a judge can be tried on pairs
whose quality one knows. Rows are read and checked as ingestion reads its files: a bad row is a
reject naming its line and reason, and the good rows beside it are judged."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fi_method.ingest import MAX_DOCUMENT_CHARS, RowError, iter_records
from fi_method.reasons import RejectReason
from fi_method.synthesis.pairs import collect_judgements
from fi_method.templating.templates import TemplateError, slot_descriptions

if TYPE_CHECKING:
    from fi_resources.model_calls import CallResult
    from fi_resources.roles import Judge

REQUIRED_FIELDS = ("instruction", "answer")
OPTIONAL_TEXT_FIELDS = ("template", "document")
# What `--out` adds to each row: a row that has one of them already would lose it.
JUDGE_FIELDS = ("score", "kept", "feedback")
SCORES = (1, 2, 3, 4, 5)
HISTOGRAM_BAR = 40  # characters of the longest bar


@dataclass(frozen=True)
class PairRow:
    """One good row: its line in the file, the record as read and what the judge is given."""

    line: int
    record: dict
    item: dict


@dataclass(frozen=True)
class FileJudgement:
    """A judged file: each good row as read with `score`, `kept` and `feedback` added, in file
    order (`score` is None where the judge's output could not be read); the rows that were not
    judged (bad input) or whose judgement could not be read, with line and reason; the judge's
    calls."""

    source: str
    rows: list[dict]
    rejects: list[dict]
    calls: CallResult

    @property
    def kept(self) -> int:
        return sum(row["kept"] for row in self.rows)

    @property
    def unparsed(self) -> int:
        return sum(row["score"] is None for row in self.rows)

    def histogram(self) -> dict[int, int]:
        """Pairs per score, 1..5, zeros included."""
        return score_histogram([row["score"] for row in self.rows if row["score"] is not None])


def score_histogram(scores: list[int]) -> dict[int, int]:
    """How many of `scores` are each of 1..5 (zeros included)."""
    counts = Counter(scores)
    return {score: counts[score] for score in SCORES}


def _text(record: dict, name: str, required: bool) -> str | None:
    value = record.get(name)
    if value is None:
        if required:
            raise RowError(RejectReason.MISSING_FIELD, f"no {name!r} field")
        return None
    if not isinstance(value, str):
        raise RowError(RejectReason.NOT_A_STRING, f"{name!r} is a {type(value).__name__}")
    if not value.strip():
        raise RowError("empty_text", f"{name!r} is empty")
    if len(value) > MAX_DOCUMENT_CHARS:
        raise RowError("too_long", f"{name!r} has {len(value)} characters > {MAX_DOCUMENT_CHARS}")
    return value


def judge_item(record: dict) -> dict:
    """What the judge role is given for one record: `instruction`, `answer`, `document` (the
    answer itself when the record has none, so that grounding holds and does not count),
    `template` when given. Raises RowError for a missing, non-string, empty or
    too long instruction or answer, an optional field of the wrong type, a template that breaks
    the `<fi>` grammar, or a field that `--out` would overwrite."""
    for name in JUDGE_FIELDS:
        if name in record:
            raise RowError(
                "reserved_field", f"{name!r} is written by fi judge: rename it (e.g. 'label')"
            )
    instruction, answer = (_text(record, name, required=True) for name in REQUIRED_FIELDS)
    template, document = (_text(record, name, required=False) for name in OPTIONAL_TEXT_FIELDS)
    source_id = record.get("id")
    if source_id is not None and (
        isinstance(source_id, bool) or not isinstance(source_id, str | int)
    ):
        raise RowError("bad_id", f"'id' is a {type(source_id).__name__}, not a string or integer")
    if template is not None:
        try:
            slot_descriptions(template)
        except TemplateError as error:
            raise RowError(error.reason, f"'template': {error}") from error
    document = answer if document is None else document
    # The judge's cache key is what it reads: instruction, answer, document and template.
    item = {"instruction": instruction, "answer": answer, "document": document}
    if template is not None:
        item["template"] = template
    return item


def read_pairs(source: str) -> tuple[list[PairRow], list[dict]]:
    """The good rows of `source` (JSONL; JSON, Parquet and CSV are read as `fi ingest` reads
    them) and a reject (`source`, `line`, `item_id`, `reason`, `detail`) for each bad one.
    Raises FileNotFoundError or ValueError when the file itself cannot be read."""
    rows: list[PairRow] = []
    rejects: list[dict] = []
    for line, record in iter_records(source):
        try:
            if isinstance(record, RowError):
                raise record
            rows.append(PairRow(line, record, judge_item(record)))
        except RowError as error:
            item_id = record.get("id") if isinstance(record, dict) else None
            rejects.append(_reject(source, line, item_id, error.reason, error.detail))
    return rows, rejects


def _reject(source: str, line: int, item_id, reason: str, detail: str) -> dict:
    return {
        "source": source,
        "line": line,
        "item_id": None if item_id is None else str(item_id),
        "reason": reason,
        "detail": detail,
    }


def judge_pairs(
    judge: Judge,
    source: str,
    rows: list[PairRow],
    progress: Callable[[int, int, int], None] | None = None,
) -> FileJudgement:
    """Judge the good `rows` of `source` with `judge` (through its call cache) and read each
    output as `judged_pairs` does; `kept` = score >= the judge's min_score."""
    calls = judge.call([row.item for row in rows], progress=progress)
    # collect_judgements names each pair by its pair_id: here its position in `rows`.
    pairs = [{**row.item, "pair_id": str(index)} for index, row in enumerate(rows)]
    judged, unread = collect_judgements(
        pairs, calls.outputs, judge.min_score, judge.engine, judge.model_name
    )
    verdicts = {int(found["pair_id"]): found for found in judged}
    out = []
    for index, row in enumerate(rows):
        found = verdicts.get(index)
        out.append(
            {
                **row.record,
                "score": found["score"] if found else None,
                "kept": bool(found and found["kept"]),
                "feedback": found["feedback"] if found else None,
            }
        )
    rejects = [
        _reject(
            source,
            rows[int(failure["item_id"])].line,
            rows[int(failure["item_id"])].record.get("id"),
            failure["reason"],
            f"the judge's output: {failure['detail']}",
        )
        for failure in unread
        if failure["reason"] != RejectReason.LOW_JUDGE_SCORE
    ]
    return FileJudgement(source, out, rejects, calls)


def write_jsonl(rows: list[dict], path: Path) -> None:
    """Write `rows` as JSON lines (UTF-8, one object per line; values JSON lacks, such as a
    Parquet timestamp, as text), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def render_summary(result: FileJudgement, min_score: int, judge_label: str) -> str:
    """The keep rate, the score histogram (with unparsed outputs, if any) and the call count."""
    total = len(result.rows)
    histogram = result.histogram()
    widest = max([*histogram.values(), result.unparsed, 1])
    lines = [
        f"{result.source}: {total} pairs judged by {judge_label}",
        f"kept (score >= {min_score}): {result.kept} of {total} ({result.kept / total:.1%})",
        "   score  pairs   share",
    ]
    for label, count in [*histogram.items(), ("unparsed", result.unparsed)]:
        if label == "unparsed" and not count:
            continue
        bar = "#" * round(HISTOGRAM_BAR * count / widest)
        lines.append(f"{label!s:>8}  {count:>5}  {count / total:>6.1%}  {bar}".rstrip())
    lines.append(
        f"judge calls: {result.calls.made} made, {result.calls.cached} from the call cache"
    )
    return "\n".join(lines)


def render_rejects(source: str, rejects: list[dict], limit: int) -> list[str]:
    """`FILE:LINE: reason: detail` for the first `limit` rejects by line, and how many more."""
    shown = sorted(rejects, key=lambda reject: reject["line"])[:limit]
    lines = [
        f"{source}:{r['line']}: {r['reason']}" + (f": {r['detail']}" if r["detail"] else "")
        for r in shown
    ]
    if len(rejects) > limit:
        lines.append(f"... and {len(rejects) - limit} more")
    return lines
