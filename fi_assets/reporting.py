"""What every table asset reports: row counts, a Markdown preview, and a content-hash DataVersion
so that downstream partitions re-run only when their input really changed."""

from __future__ import annotations

import base64
import io
import time
from collections import Counter
from collections.abc import Callable, Sequence

import dagster as dg
import polars as pl

from fi_assets.checks import failed_checks_tags
from fi_method.text import content_hash
from fi_resources.model_calls import CallResult
from fi_resources.storage import RejectsWriter, Storage, TableWriter
from fi_resources.tables import Table

PREVIEW_ROWS = 5
PREVIEW_CELL_CHARS = 120
# Dagster's UI draws Markdown metadata of fewer than 1,000 characters in place, and longer
# Markdown behind a "[Show Markdown]" link (its MetadataEntry component): what should be seen at a
# glance is cut to fit.
INLINE_MARKDOWN_CHARS = 1000
# Cell widths tried, widest first, for a preview drawn in place; rows are given up before a cell
# is cut under READABLE_CELL_CHARS.
INLINE_CELL_CHARS = (120, 80, 60, 40, 24)
READABLE_CELL_CHARS = 60


def markdown_preview(
    frame: pl.DataFrame,
    columns: list[str],
    rows: int = PREVIEW_ROWS,
    cell_chars: int = PREVIEW_CELL_CHARS,
) -> str:
    """The first rows of `columns` as a Markdown table, cells longer than `cell_chars` cut."""

    def cell(value) -> str:
        text = "" if value is None else str(value)
        # Escape < and > so <fi> tags show as text instead of being swallowed as HTML.
        text = text.replace("\n", " ").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        return text if len(text) <= cell_chars else text[: cell_chars - 1] + "…"

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for record in frame.head(rows).select(columns).iter_rows():
        lines.append("| " + " | ".join(cell(value) for value in record) + " |")
    return "\n".join(lines)


def preview_metadata(frame: pl.DataFrame, columns: list[str]) -> dict[str, dg.MetadataValue]:
    """`preview`: the first rows, cut so that the UI draws the table in place (the most rows
    whose cells can keep READABLE_CELL_CHARS, then narrower cells); and `preview_full`, the
    PREVIEW_ROWS rows at full preview width, when that shows more than `preview`."""
    full = markdown_preview(frame, columns)
    readable = [width for width in INLINE_CELL_CHARS if width >= READABLE_CELL_CHARS]
    narrow = [width for width in INLINE_CELL_CHARS if width < READABLE_CELL_CHARS]
    tries = [
        (rows, width)
        for widths in (readable, narrow)
        for rows in range(PREVIEW_ROWS, 0, -1)
        for width in widths
    ]
    previews = (markdown_preview(frame, columns, rows, width) for rows, width in tries)
    inline = next((md for md in previews if len(md) < INLINE_MARKDOWN_CHARS), None)
    inline = inline or markdown_preview(frame, columns, 1, INLINE_CELL_CHARS[-1])
    metadata = {"preview": dg.MetadataValue.md(inline)}
    if inline != full:
        metadata["preview_full"] = dg.MetadataValue.md(full)
    return metadata


def column_schema(frame: pl.DataFrame) -> dg.TableSchema:
    """The table's columns and types, for the UI's column view (`dagster/column_schema`)."""
    return dg.TableSchema(
        columns=[dg.TableColumn(name, str(dtype)) for name, dtype in frame.schema.items()]
    )


def png_markdown(png: bytes, alt: str) -> dg.MetadataValue:
    """A PNG as Markdown metadata: the UI shows the image inline."""
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def _small_figure():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(4.2, 2.6))


def _figure_markdown(figure, title: str) -> dg.MetadataValue:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return png_markdown(buffer.getvalue(), title)


def distribution_chart(
    values: Sequence[float], title: str, discrete: bool = False
) -> dg.MetadataValue:
    """A small histogram (or, `discrete`, a bar per value) of `values` as inline metadata."""
    figure, axis = _small_figure()
    if discrete:
        counts = sorted(Counter(values).items())
        axis.bar([str(k) for k, _ in counts], [n for _, n in counts], color="#1f77b4")
    else:
        axis.hist(list(values), bins=20, color="#1f77b4")
    axis.set_title(f"{title} (n={len(values)})", fontsize=9)
    axis.tick_params(labelsize=7)
    return _figure_markdown(figure, title)


def bar_chart(labels: Sequence[str], values: Sequence[float], title: str) -> dg.MetadataValue:
    """A small bar chart, one labelled bar per value, as inline metadata."""
    figure, axis = _small_figure()
    bars = axis.bar(list(labels), list(values), color="#1f77b4")
    axis.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=6)
    axis.set_title(title, fontsize=9)
    axis.tick_params(axis="x", labelsize=6, rotation=20)
    axis.tick_params(axis="y", labelsize=7)
    return _figure_markdown(figure, title)


def line_chart(
    xs: Sequence[float], ys: Sequence[float], title: str, xlabel: str
) -> dg.MetadataValue:
    """A small line chart (a training curve) as inline metadata."""
    figure, axis = _small_figure()
    axis.plot(list(xs), list(ys), marker="o", markersize=3)
    axis.set_title(title, fontsize=9)
    axis.set_xlabel(xlabel, fontsize=8)
    axis.tick_params(labelsize=7)
    return _figure_markdown(figure, title)


def write_stage(
    storage: Storage,
    table: Table,
    partition: str,
    frame: pl.DataFrame,
    rejects: list[dict],
    preview_columns: list[str],
    metadata: dict | None = None,
    tags: dict[str, str] | None = None,
    checks: list[dg.AssetCheckResult] | None = None,
) -> dg.MaterializeResult:
    """Write one partition of a table asset and its rejects in one batch, and report them
    (report_stage)."""
    with storage.table_writer(table, partition) as written:
        written.write(frame)
    with storage.rejects_writer(table.name, partition) as rejected:
        rejected.add(rejects)
    return report_stage(written, rejected, partition, preview_columns, metadata, tags, checks)


def report_stage(
    written: TableWriter,
    rejected: RejectsWriter,
    partition: str,
    preview_columns: list[str],
    metadata: dict | None = None,
    tags: dict[str, str] | None = None,
    checks: list[dg.AssetCheckResult] | None = None,
) -> dg.MaterializeResult:
    """Report one written partition of a table asset and its rejects (Storage.table_writer and
    rejects_writer, closed), with a preview of its first rows' `preview_columns`
    (preview_metadata; a `preview` in `metadata` replaces it) and the results of the asset's checks
    on that partition. The metadata starts with the partition its figures cover:
    an asset's page in the UI shows one partition's latest materialization."""
    return dg.MaterializeResult(
        metadata={
            "partition": partition,
            "dagster/row_count": written.rows,
            "dagster/column_schema": column_schema(written.table.frame([])),
            "rejected": rejected.rows,
            "rejected_by_reason": dict(rejected.reasons),
            "path": dg.MetadataValue.path(str(written.path)),
            **(
                {}
                if "preview" in (metadata or {})
                else preview_metadata(written.first_rows, preview_columns)
            ),
            **(metadata or {}),
        },
        data_version=dg.DataVersion(written.version),
        tags={**(tags or {}), **failed_checks_tags(checks or [])} or None,
        check_results=checks,
    )


def _combined_checks(results: dict[str, dg.MaterializeResult]) -> list[dg.AssetCheckResult]:
    """One result per check over every partition of the step: passed when every partition
    passed, the failures prefixed with their partition."""
    by_name: dict[str, list[tuple[str, dg.AssetCheckResult]]] = {}
    for key, result in results.items():
        for check in result.check_results or []:
            by_name.setdefault(check.check_name, []).append((key, check))
    combined = []
    for name, checks in by_name.items():
        failed = [(key, c) for key, c in checks if not c.passed]
        lines = [f"- {key}: {c.metadata['failures'].value}" for key, c in failed]
        combined.append(
            dg.AssetCheckResult(
                check_name=name,
                asset_key=checks[0][1].asset_key,
                passed=not failed,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={
                    key: sum(c.metadata[key].value for _, c in checks)
                    for key in ("checked_rows", "failed_rows", "noted_rows")
                }
                | {"failures": dg.MetadataValue.md("\n".join(lines) or "none")},
            )
        )
    return combined


def each_partition(
    context: dg.AssetExecutionContext, materialize_one: Callable[[str], dg.MaterializeResult]
) -> dg.MaterializeResult:
    """Materialize the run's partition, or every partition of a single-run backfill within one
    step (models load once), and report them together: summed rows and a combined DataVersion."""
    results = {key: materialize_one(key) for key in context.partition_keys}
    if len(results) == 1:
        return next(iter(results.values()))
    rows = {key: r.metadata.get("dagster/row_count", 0) for key, r in results.items()}
    checks = _combined_checks(results)
    return dg.MaterializeResult(
        metadata={
            "partitions": len(results),
            "dagster/row_count": sum(rows.values()),
            "rows_by_partition": rows,
        },
        data_version=dg.DataVersion(
            content_hash(*(r.data_version.value for r in results.values()))
        ),
        tags={**(next(iter(results.values())).tags or {}), **failed_checks_tags(checks)} or None,
        check_results=checks,
    )


def log_progress(context: dg.AssetExecutionContext, verb: str):
    """A progress callback for role calls that logs each batch to the run's log: done/total,
    how many the cache answered, the rate of new calls and the time left at that rate."""
    started = time.perf_counter()

    def progress(done: int, total: int, cached: int) -> None:
        elapsed = time.perf_counter() - started
        made = done - cached
        rate = made / elapsed if made and elapsed > 0 else 0.0
        left = f", ~{(total - done) / rate:.0f}s left" if rate else ""
        context.log.info(
            f"{verb} {done}/{total} ({cached} from the call cache; {rate:.2f}/s{left})"
        )

    return progress


def call_metadata(calls: CallResult) -> dict:
    """What a step's model calls cost: made, answered by the cache, refused as too long for the
    model's window, the rate of new calls, and the tokens the new calls used where the engine
    counts them."""
    tokens = {
        f"model_{kind}_tokens": count
        for kind, count in (
            ("prompt", calls.prompt_tokens),
            ("completion", calls.completion_tokens),
        )
        if count is not None
    }
    return {
        "model_calls_made": calls.made,
        "model_calls_cached": calls.cached,
        "model_calls_too_long": calls.refused,
        "model_call_seconds": round(calls.seconds, 2),
        "model_calls_per_second": round(calls.made / calls.seconds, 2) if calls.made else 0.0,
        **tokens,
    }
