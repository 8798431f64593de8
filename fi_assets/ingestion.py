"""Getting shards in: `fi ingest` and the inbox sensor share `ingest_shards`, which snapshots the
source as an `ingested_*` table, records its rejects, and emits the materialization (with a content
DataVersion) that registers the shard for the UI and marks downstream partitions stale."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from fi_assets.command import fi_command
from fi_assets.partitions import doc_shards, query_shards
from fi_assets.reporting import column_schema, preview_metadata
from fi_assets.versions import DATA_VERSION_TAG
from fi_method.ingest import HF_PREFIX, IngestResult, Kind, ingest_batches
from fi_resources.settings import Settings
from fi_resources.storage import Storage, check_partition_name, frame_version
from fi_resources.tables import INGESTED_DOCUMENTS, INGESTED_QUERIES

INGESTED = {"queries": INGESTED_QUERIES, "documents": INGESTED_DOCUMENTS}
PARTITIONS = {"queries": query_shards, "documents": doc_shards}
INBOX_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv", ".tsv")

ingested_queries = dg.AssetSpec(
    INGESTED_QUERIES.key,
    partitions_def=query_shards,
    group_name="inbox",
    kinds={"parquet"},
    description="User queries as ingested from one file or dataset (a shard), before any filter. "
    "Written by `fi ingest queries` or the inbox sensor.",
)
ingested_documents = dg.AssetSpec(
    INGESTED_DOCUMENTS.key,
    partitions_def=doc_shards,
    group_name="inbox",
    kinds={"parquet"},
    description="Documents as ingested from one file or dataset (a shard). Written by "
    "`fi ingest documents` or the inbox sensor.",
)


# Reasons a file with no good row names in its error; the rejects table holds every row.
MAX_REASONS_SHOWN = 5


class NoGoodRowsError(ValueError):
    """A source none of whose rows could be ingested."""


@dataclass
class IngestedShard:
    kind: Kind
    shard: str
    accepted: int
    rejected: int
    event: dg.AssetMaterialization


def shard_sizes(settings: Settings) -> dict[str, int]:
    """The most rows one shard of each kind holds (FI_SHARD_QUERIES, FI_SHARD_DOCUMENTS)."""
    return {"queries": settings.shard_queries, "documents": settings.shard_documents}


def default_shard_name(source: str) -> str:
    """The file's stem, or the dataset's name, made safe for a partition key."""
    name = (
        source[len(HF_PREFIX) :]
        if source.startswith(HF_PREFIX)
        else Path(source).name.split(".")[0]
    )
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:100] or "shard"


def ingest_shards(
    storage: Storage,
    kind: Kind,
    source: str,
    shard: str | None = None,
    max_rows: int | None = None,
) -> Iterator[IngestedShard]:
    """Snapshot `source`, read as a stream, as shards of at most `max_rows` rows (None: one),
    each written as it fills and yielded for the caller to register: one shard `shard` (default:
    from the file name) when the source fits, else `shard-00000`, `shard-00001`, ... in the
    source's order, so the same source gives the same shards. Bad rows go to the rejects table
    of the shard being filled; raises NoGoodRowsError when no row is good (nothing is then
    written or registered)."""
    name = check_partition_name(shard or default_shard_name(source))
    for index, batch in enumerate(ingest_batches(kind, source, max_rows)):
        single = index == 0 and batch.last
        if single and not batch.rows:
            storage.write_rejects(f"ingest_{kind}", name, _rejects(kind, name, batch.rejects))
            raise NoGoodRowsError(_no_good_rows(source, name, batch.rejects))
        yield _write_shard(storage, kind, source, name if single else f"{name}-{index:05d}", batch)


def _write_shard(
    storage: Storage, kind: Kind, source: str, shard: str, batch: IngestResult
) -> IngestedShard:
    """One shard's table and rejects, and the materialization that registers it."""
    storage.write_rejects(f"ingest_{kind}", shard, _rejects(kind, shard, batch.rejects))
    frame = INGESTED[kind].frame(batch.rows)
    path = storage.write_table(INGESTED[kind], shard, frame)
    event = dg.AssetMaterialization(
        asset_key=INGESTED[kind].key,
        partition=shard,
        metadata={
            "partition": shard,
            "source": source,
            "dagster/row_count": frame.height,
            "dagster/column_schema": column_schema(frame),
            "rejected": len(batch.rejects),
            "path": dg.MetadataValue.path(str(path)),
            **preview_metadata(frame, ["line", "text"]),
        },
        tags={DATA_VERSION_TAG: frame_version(frame)},
    )
    return IngestedShard(kind, shard, frame.height, len(batch.rejects), event)


def _rejects(kind: Kind, shard: str, rejects: list[dict]) -> list[dict]:
    return [{**r, "stage": f"ingest_{kind}", "shard": shard} for r in rejects]


def _no_good_rows(source: str, shard: str, rejects: list[dict]) -> str:
    """What a source none of whose rows is good says: its commonest reasons and where to look."""
    reasons = Counter(str(r.get("detail") or r.get("reason")) for r in rejects)
    common = "; ".join(
        f"{detail} ({n} row{'s' if n > 1 else ''})"
        for detail, n in reasons.most_common(MAX_REASONS_SHOWN)
    )
    more = len(reasons) - MAX_REASONS_SHOWN
    return (
        f"{source}: no row could be ingested ({len(rejects)} rejected: {common}"
        + (f"; and {more} other reason{'s' if more > 1 else ''}" if more > 0 else "")
        + f'). Each row with its line: {fi_command()} sql "select * from rejects where '
        f"shard = '{shard}'\"; fix the file and run {fi_command()} ingest again"
    )


def _inbox_files(storage: Storage, kind: Kind) -> list[Path]:
    inbox = storage.inbox_dir(kind)
    inbox.mkdir(parents=True, exist_ok=True)
    return sorted(
        p for p in inbox.iterdir() if p.is_file() and p.name.lower().endswith(INBOX_SUFFIXES)
    )


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Ingests files dropped into FI_HOME/inbox/queries and FI_HOME/inbox/documents "
    "(JSONL, JSON, Parquet, CSV), exactly as `fi ingest` does: one shard per file, several for a "
    "file over FI_SHARD_DOCUMENTS documents or FI_SHARD_QUERIES queries. A file is "
    "ingested again when its size or modification time changes.",
)
def inbox_sensor(
    context: dg.SensorEvaluationContext, storage: Storage, settings: dg.ResourceParam[Settings]
) -> dg.SensorResult:
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    max_rows = shard_sizes(settings)
    requests, events = [], []
    for kind in ("queries", "documents"):
        new_keys = []
        for path in _inbox_files(storage, kind):
            stat = path.stat()
            signature = f"{stat.st_size}:{stat.st_mtime_ns}"
            if seen.get(str(path)) == signature:
                continue
            seen[str(path)] = signature
            try:
                for ingested in ingest_shards(storage, kind, str(path), max_rows=max_rows[kind]):
                    context.log.info(
                        f"inbox: {path.name} -> {kind} shard {ingested.shard}: "
                        f"{ingested.accepted} accepted, {ingested.rejected} rejected"
                    )
                    new_keys.append(ingested.shard)
                    events.append(ingested.event)
            except (NoGoodRowsError, ValueError) as error:
                context.log.error(f"inbox: {error}")
        if new_keys:
            requests.append(PARTITIONS[kind].build_add_request(new_keys))
    if not events:
        return dg.SensorResult(
            skip_reason="no new or changed file in the inbox", cursor=json.dumps(seen)
        )
    return dg.SensorResult(
        dynamic_partitions_requests=requests, asset_events=events, cursor=json.dumps(seen)
    )
