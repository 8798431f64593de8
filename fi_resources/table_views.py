"""DuckDB views over a data root's tables: one view per table over all its partitions, with a
`shard` column, `rejects` over every stage's rejects, and `model_calls` over the call cache.
Free of Dagster, so that `fi sql` and `fi lineage` start in a fraction of a second."""

from __future__ import annotations

from pathlib import Path

import duckdb

from fi_resources.model_calls import CACHE_FILE, open_model_call_cache
from fi_resources.tables import REJECTS

TABLES_DIR = "tables"


def table_names(root: Path) -> list[str]:
    """Tables of the data root `root` that have at least one partition written (rejects
    included)."""
    tables_dir = root / TABLES_DIR
    if not tables_dir.exists():
        return []
    return sorted(p.name for p in tables_dir.iterdir() if p.is_dir() and any(p.rglob("*.parquet")))


def has_model_calls(root: Path, model_calls_url: str | None = None) -> bool:
    """Whether the data root `root` has a call cache to query (PostgreSQL at `model_calls_url`
    when given, else the root's SQLite file)."""
    return bool(model_calls_url) or (Path(root).expanduser().resolve() / CACHE_FILE).exists()


def connect_views(
    root: Path, model_calls_url: str | None = None, *, model_calls: bool = True
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with one view per table of the data root `root` (named after the
    asset) over all its partitions, with a `shard` column naming each row's partition, plus
    `rejects` over every stage's rejects and, with `model_calls`, a `model_calls` table of the
    call cache (see `has_model_calls`). The call cache is copied in whole, so a query that does
    not read it should leave it out."""
    root = Path(root).expanduser().resolve()
    connection = duckdb.connect()
    if model_calls and has_model_calls(root, model_calls_url):
        cache = open_model_call_cache(root, model_calls_url)
        connection.register("model_calls", cache.frame().to_arrow())
    for table in table_names(root):
        # Rejects have one folder per stage: tables/rejects/<stage>/<partition>.parquet.
        if table == REJECTS.name:
            files = (root / TABLES_DIR / table / "*/*.parquet").as_posix().replace("'", "''")
            source = f"read_parquet('{files}', union_by_name = true)"
            connection.execute(f'CREATE VIEW "{table}" AS SELECT * FROM {source}')
            continue
        # Every table view gets a `shard` column: the partition its row was written by.
        files = (root / TABLES_DIR / table / "*.parquet").as_posix().replace("'", "''")
        source = f"read_parquet('{files}', union_by_name = true, filename = true)"
        connection.execute(
            f'CREATE VIEW "{table}" AS SELECT * EXCLUDE (filename), '
            f"regexp_extract(filename, '([^/]+)[.]parquet$', 1) AS shard FROM {source}"
        )
    return connection
