"""The layout of the data root (FI_HOME) and the only code that writes tables into it.

FI_HOME/
  inbox/{queries,documents}/     files dropped here are ingested by the inbox sensor
  tables/<asset>/<partition>.parquet
  tables/rejects/<stage>/<partition>.parquet
  lancedb/                       template vectors
  model_calls.sqlite             every role call, cached (fi_resources.model_calls)
  models/                        converted or downloaded model weights
  checkpoints/                   training checkpoints
  dagster/                       Dagster instance storage (runs, events, logs)
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.parquet as pq
from dagster import ConfigurableResource
from pydantic import Field

from fi_resources.model_calls import ModelCallCache, open_model_call_cache
from fi_resources.table_views import TABLES_DIR, connect_views
from fi_resources.tables import REJECTS, Table

_PARTITION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class StorageLayoutError(ValueError):
    """A name that cannot safely become a file name under FI_HOME."""


def check_partition_name(name: str) -> str:
    """Shard names become file names and SQL literals: letters, digits, `.`, `_`, `-` only."""
    if not _PARTITION_NAME.match(name):
        raise StorageLayoutError(
            f"invalid shard name {name!r}: use 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def rejects_frame(rows: list[dict]) -> pl.DataFrame:
    """Rows of the rejects table, typed, even when there are none."""
    return REJECTS.frame({key: row.get(key) for key in REJECTS.schema} for row in rows)


def frame_version(*frames: pl.DataFrame) -> str:
    """A hash of a table's content (column names, types and values, in order), given whole or
    as the batches it was written in."""
    digest = hashlib.sha256()
    for frame in frames:
        _update(digest, frame)
    return digest.hexdigest()[:16]


def _update(digest, frame: pl.DataFrame) -> None:
    buffer = io.BytesIO()
    frame.write_ipc_stream(buffer, compression="uncompressed")
    digest.update(buffer.getvalue())


# Rows a TableWriter keeps of what it wrote first: enough for a preview of the partition.
FIRST_ROWS_KEPT = 20


class TableWriter:
    """One partition of a table, written a batch at a time, so that memory follows the batch and
    not the partition (Storage.table_writer)."""

    def __init__(self, table: Table, temporary: Path, path: Path):
        self.table = table
        self.path = path  # where the partition appears when the writer's block ends
        self._temporary = temporary
        self.rows = 0
        self._first_rows: pl.DataFrame | None = None
        self._digest = hashlib.sha256()
        self._parquet: pq.ParquetWriter | None = None

    def write(self, frame: pl.DataFrame) -> None:
        """Append `frame`, which must have the table's declared columns (fi_resources.tables)."""
        arrow = self.table.check(frame).to_arrow()
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self._temporary, arrow.schema, compression="zstd")
        self._parquet.write_table(arrow)
        if self._first_rows is None:
            self._first_rows = frame.head(FIRST_ROWS_KEPT)
        elif self._first_rows.height < FIRST_ROWS_KEPT:
            self._first_rows = pl.concat([self._first_rows, frame]).head(FIRST_ROWS_KEPT)
        self.rows += frame.height
        _update(self._digest, frame)

    @property
    def first_rows(self) -> pl.DataFrame:
        """The partition's first FIRST_ROWS_KEPT rows, for its preview."""
        return self.table.frame([]) if self._first_rows is None else self._first_rows

    @property
    def version(self) -> str:
        """frame_version of what was written: the same as of the whole table in one batch."""
        return self._digest.hexdigest()[:16]

    def close(self) -> None:
        if self._parquet is None:
            self.write(self.table.frame([]))
        self._parquet.close()


class RejectsWriter(TableWriter):
    """The rejects a stage records for one partition, written a batch at a time, with a count of
    their reasons."""

    def __init__(self, temporary: Path, path: Path, stage: str, partition: str):
        super().__init__(REJECTS, temporary, path)
        self.stamp = {"stage": stage, "shard": partition}
        self.reasons: Counter[str] = Counter()

    def add(self, rows: list[dict]) -> None:
        """Record rejects (dicts with the rejects table's fields; `stage` and `shard` are set)."""
        if rows:
            self.write(rejects_frame([{**row, **self.stamp} for row in rows]))
            self.reasons.update(row["reason"] for row in rows)


class Storage(ConfigurableResource):
    """Paths under one data root, atomic Parquet writes and DuckDB views over every table."""

    home: str = Field(description="the data root, FI_HOME")
    model_calls_url: str | None = Field(
        None, description="PostgreSQL URL of the model-call cache; default: SQLite in FI_HOME"
    )

    @classmethod
    def from_settings(cls, settings) -> Storage:
        """The storage `settings` (fi_resources.settings.Settings) describe."""
        return cls(home=str(settings.home), model_calls_url=settings.model_calls_url)

    @property
    def model_calls(self) -> ModelCallCache:
        return open_model_call_cache(self.root, self.model_calls_url)

    @property
    def root(self) -> Path:
        return Path(self.home).expanduser().resolve()

    @property
    def tables_dir(self) -> Path:
        return self.root / TABLES_DIR

    @property
    def lancedb_dir(self) -> Path:
        return self.root / "lancedb"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def dagster_dir(self) -> Path:
        return self.root / "dagster"

    def inbox_dir(self, kind: str) -> Path:
        return self.root / "inbox" / kind

    def table_path(self, table: Table, partition: str) -> Path:
        return self.tables_dir / table.name / f"{check_partition_name(partition)}.parquet"

    def rejects_path(self, stage: str, partition: str) -> Path:
        return self.tables_dir / REJECTS.name / stage / f"{check_partition_name(partition)}.parquet"

    def write_table(self, table: Table, partition: str, frame: pl.DataFrame) -> Path:
        """Replace one partition of a table with `frame`, which must have the table's declared
        columns (fi_resources.tables). The file appears whole or not at all: it is written under a
        temporary name beside its destination and renamed over it."""
        return _write_atomically(table.check(frame), self.table_path(table, partition))

    @contextmanager
    def table_writer(self, table: Table, partition: str) -> Iterator[TableWriter]:
        """A TableWriter that replaces one partition of a table. The file appears whole or not
        at all: its batches go to a temporary file beside the destination, which is renamed over
        it when the block ends and removed when the block raises."""
        path = self.table_path(table, partition)
        with _temporary_beside(path) as temporary:
            writer = TableWriter(table, temporary, path)
            yield writer
            writer.close()

    @contextmanager
    def rejects_writer(self, stage: str, partition: str) -> Iterator[RejectsWriter]:
        """A RejectsWriter that replaces what a stage rejected of one partition, whole or not at
        all (an empty file when none, as write_rejects)."""
        path = self.rejects_path(stage, partition)
        with _temporary_beside(path) as temporary:
            writer = RejectsWriter(temporary, path, stage, partition)
            yield writer
            writer.close()

    def scan_table(self, table: Table, partition: str) -> pl.LazyFrame:
        """One partition of a table as a lazy scan, which reads only the columns and rows a
        query over it keeps; raises FileNotFoundError naming the asset to materialize."""
        return pl.scan_parquet(self._existing(table, partition))

    def write_rejects(self, stage: str, partition: str, rows: list[dict]) -> Path:
        """Replace the rejects a stage recorded for one partition (an empty file when none, so a
        rerun that rejects nothing clears the previous run's rejects)."""
        return _write_atomically(rejects_frame(rows), self.rejects_path(stage, partition))

    def delete_partition(self, tables: list[Table], partition: str) -> int:
        """Delete one partition of `tables` and the rejects their stages recorded for it; returns
        how many files were removed."""
        paths = [self.table_path(t, partition) for t in tables]
        paths += [self.rejects_path(t.name, partition) for t in tables]
        return _delete_existing(paths)

    def delete_rejects(self, stage: str, partition: str) -> int:
        """Delete the rejects `stage` recorded for one partition; returns 1 if there were some."""
        return _delete_existing([self.rejects_path(stage, partition)])

    def read_table(self, table: Table, partition: str) -> pl.DataFrame:
        """One partition of a table; raises FileNotFoundError naming the asset to materialize."""
        return pl.read_parquet(self._existing(table, partition))

    def _existing(self, table: Table, partition: str) -> Path:
        path = self.table_path(table, partition)
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist: materialize {table.key.to_user_string()}[{partition}] "
                "first"
            )
        return path

    def read_rejects(
        self, stage: str, partition: str, columns: list[str] | None = None
    ) -> pl.DataFrame:
        """The rejects a stage recorded for one partition (none when it never ran), all their
        columns or those named."""
        path = self.rejects_path(stage, partition)
        if path.exists():
            return pl.read_parquet(path, columns=columns)
        return rejects_frame([]).select(columns or REJECTS.columns)

    def partition_files(self, table: Table) -> list[Path]:
        """The file of every partition of a table written so far, by name."""
        return sorted((self.tables_dir / table.name).glob("*.parquet"))

    def read_all(self, table: Table) -> pl.DataFrame | None:
        """Every partition of a table, or None when none is written yet."""
        scan = self.scan_all(table)
        return None if scan is None else scan.collect()

    def scan_all(self, table: Table) -> pl.LazyFrame | None:
        """Every partition of a table as one lazy scan, which reads only the columns and rows a
        query over it keeps; None when none is written yet."""
        files = self.partition_files(table)
        return (
            pl.concat([pl.scan_parquet(f) for f in files], how="diagonal_relaxed")
            if files
            else None
        )

    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB with one view per table (fi_resources.table_views)."""
        return connect_views(self.root, self.model_calls_url)


def _delete_existing(paths: list[Path]) -> int:
    removed = [path for path in paths if path.exists()]
    for path in removed:
        path.unlink()
    return len(removed)


def _write_atomically(frame: pl.DataFrame, path: Path) -> Path:
    with _temporary_beside(path) as temporary:
        frame.write_parquet(temporary)
    return path


@contextmanager
def _temporary_beside(path: Path) -> Iterator[Path]:
    """A temporary file beside `path`, renamed over it when the block ends and removed when the
    block raises (a rename within a folder is atomic: readers see the old file or the new). Its
    name holds the writing process's id: the temporaries a killed process left for `path` are
    removed here."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp's random part has no dot: "wiki.5"'s temporaries are not "wiki"'s.
    left_by = re.compile(rf"^\.{re.escape(path.stem)}\.(\d+)\.[^.]+\.tmp$")
    for left in path.parent.glob(f".{path.stem}.*.tmp"):
        writer = left_by.match(left.name)
        if writer and not _running(int(writer.group(1))):
            left.unlink(missing_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{path.stem}.{os.getpid()}.", suffix=".tmp", dir=path.parent
    )
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
