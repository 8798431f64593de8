"""What every table asset reports: row counts, a Markdown preview, and a content-hash DataVersion
so that downstream partitions re-run only when their input really changed."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable

import dagster as dg
import polars as pl

from fi_method.text import content_hash
from fi_resources.model_calls import CallResult
from fi_resources.storage import Storage

PREVIEW_ROWS = 5
PREVIEW_CELL_CHARS = 120


def frame_version(frame: pl.DataFrame) -> str:
    """A hash of the table's content (column names, types and values, in order)."""
    buffer = io.BytesIO()
    frame.write_ipc_stream(buffer, compression="uncompressed")
    return hashlib.sha256(buffer.getvalue()).hexdigest()[:16]


def markdown_preview(frame: pl.DataFrame, columns: list[str], rows: int = PREVIEW_ROWS) -> str:
    """The first rows of `columns` as a Markdown table, long cells shortened."""

    def cell(value) -> str:
        text = "" if value is None else str(value)
        # Escape < and > so <fi> tags show as text instead of being swallowed as HTML.
        text = text.replace("\n", " ").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        return text if len(text) <= PREVIEW_CELL_CHARS else text[: PREVIEW_CELL_CHARS - 1] + "…"

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for record in frame.head(rows).select(columns).iter_rows():
        lines.append("| " + " | ".join(cell(value) for value in record) + " |")
    return "\n".join(lines)


def write_stage(
    storage: Storage,
    table: str,
    partition: str,
    frame: pl.DataFrame,
    rejects: list[dict],
    preview_columns: list[str],
    metadata: dict | None = None,
    tags: dict[str, str] | None = None,
) -> dg.MaterializeResult:
    """Write one partition of a table asset and its rejects, and report them."""
    path = storage.write_table(table, partition, frame)
    storage.write_rejects(
        table, partition, [{**r, "stage": table, "shard": partition} for r in rejects]
    )
    reasons: dict[str, int] = {}
    for reject in rejects:
        reasons[reject["reason"]] = reasons.get(reject["reason"], 0) + 1
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": frame.height,
            "rejected": len(rejects),
            "rejected_by_reason": reasons,
            "path": dg.MetadataValue.path(str(path)),
            "preview": dg.MetadataValue.md(markdown_preview(frame, preview_columns)),
            **(metadata or {}),
        },
        data_version=dg.DataVersion(frame_version(frame)),
        tags=tags,
    )


def each_partition(
    context: dg.AssetExecutionContext, materialize_one: Callable[[str], dg.MaterializeResult]
) -> dg.MaterializeResult:
    """Materialize the run's partition, or every partition of a single-run backfill within one
    step (models load once), and report them together: summed rows and a combined DataVersion."""
    results = {key: materialize_one(key) for key in context.partition_keys}
    if len(results) == 1:
        return next(iter(results.values()))
    rows = {key: r.metadata.get("dagster/row_count", 0) for key, r in results.items()}
    return dg.MaterializeResult(
        metadata={
            "partitions": len(results),
            "dagster/row_count": sum(rows.values()),
            "rows_by_partition": rows,
        },
        data_version=dg.DataVersion(
            content_hash(*(r.data_version.value for r in results.values()))
        ),
        tags=next(iter(results.values())).tags,
    )


def log_progress(context: dg.AssetExecutionContext, verb: str):
    """A progress callback for role calls that logs each batch to the run's log."""

    def progress(done: int, total: int, cached: int) -> None:
        context.log.info(f"{verb} {done}/{total} ({cached} from the call cache)")

    return progress


def call_metadata(calls: CallResult) -> dict:
    """What a step's model calls cost: made, answered by the cache, and the rate of new calls."""
    return {
        "model_calls_made": calls.made,
        "model_calls_cached": calls.cached,
        "model_call_seconds": round(calls.seconds, 2),
        "model_calls_per_second": round(calls.made / calls.seconds, 2) if calls.made else 0.0,
    }
