"""Tables are replaced whole or not at all, and DuckDB sees one view per table plus rejects."""

import os
import subprocess
import sys

import polars as pl
import pytest

from fi_resources.engines import Generation
from fi_resources.model_calls import CallSpec
from fi_resources.storage import Storage, StorageLayoutError, frame_version
from fi_resources.table_views import connect_views, has_model_calls
from fi_resources.tables import RAW_QUERIES, TableSchemaError


def _queries(*texts: str) -> pl.DataFrame:
    return RAW_QUERIES.frame(
        {"query_id": str(i), "query": text, "n_words": len(text.split())}
        for i, text in enumerate(texts)
    )


def test_a_crash_mid_write_keeps_the_previous_partition_and_leaves_no_temporary(
    tmp_path, monkeypatch
):
    storage = Storage(home=str(tmp_path))
    path = storage.write_table(RAW_QUERIES, "s1", _queries("old"))

    def crash(self, file, *args, **kwargs):
        with open(file, "wb") as handle:
            handle.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", crash)
    with pytest.raises(OSError, match="disk full"):
        storage.write_table(RAW_QUERIES, "s1", _queries("new"))
    monkeypatch.undo()
    assert pl.read_parquet(path)["query"].to_list() == ["old"]
    assert [p.name for p in path.parent.iterdir()] == ["s1.parquet"]


def test_sql_views_and_rejects(tmp_path):
    storage = Storage(home=str(tmp_path))
    storage.write_table(RAW_QUERIES, "a", _queries("one", "two"))
    storage.write_table(RAW_QUERIES, "b", _queries("three"))
    storage.write_rejects(
        "raw_queries",
        "a",
        [{"stage": "raw_queries", "shard": "a", "reason": "too_short", "line": 4}],
    )
    storage.write_rejects("documents", "d", [])
    connection = storage.connect()
    assert connection.execute("select count(*) from raw_queries").fetchone() == (3,)
    assert connection.execute("select stage, shard, line, reason from rejects").fetchall() == [
        ("raw_queries", "a", 4, "too_short")
    ]


@pytest.mark.parametrize("name", ["../escape", "a b", "", "-leading", "x" * 101])
def test_unsafe_shard_names_are_refused(tmp_path, name):
    with pytest.raises(StorageLayoutError, match="invalid shard name"):
        Storage(home=str(tmp_path)).table_path(RAW_QUERIES, name)


def test_a_frame_unlike_its_declaration_is_not_written(tmp_path):
    """A stage that renamed a column, dropped one, or changed a type fails at its write, naming
    each difference, and the partition on disk stays as it was."""
    storage = Storage(home=str(tmp_path))
    path = storage.write_table(RAW_QUERIES, "s1", _queries("kept"))
    renamed = _queries("new").rename({"query": "text"})
    with pytest.raises(TableSchemaError) as error:
        storage.write_table(RAW_QUERIES, "s1", renamed)
    assert "missing column 'query'" in str(error.value)
    assert "undeclared column 'text'" in str(error.value)
    retyped = _queries("new").with_columns(pl.col("n_words").cast(pl.Float64))
    with pytest.raises(TableSchemaError, match="'n_words' is Float64, declared Int64"):
        storage.write_table(RAW_QUERIES, "s1", retyped)
    assert pl.read_parquet(path)["query"].to_list() == ["kept"]


def test_reading_a_partition_never_written_names_the_asset_to_materialize(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"materialize raw_queries\[s9\] first"):
        Storage(home=str(tmp_path)).read_table(RAW_QUERIES, "s9")


def test_fi_sql_starts_without_dagster_spacy_or_torch(tmp_path):
    """`fi sql` and `fi lineage` read settings and Parquet only: none of the libraries that take
    seconds to import (Dagster, spaCy, torch) may be loaded on their way, as the role modules'
    defaults once pulled in spaCy through their rules engines."""
    Storage(home=str(tmp_path)).write_table(RAW_QUERIES, "a", _queries("one"))
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from fi_assets.cli import app\n"
        "runner = CliRunner()\n"
        "assert runner.invoke(app, ['sql', 'select count(*) from raw_queries']).exit_code == 0\n"
        "assert runner.invoke(app, ['lineage', 'ab']).exit_code == 1\n"
        "print(sorted(m for m in ('dagster', 'spacy', 'torch', 'wordfreq') if m in sys.modules))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        env=os.environ | {"FI_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout.strip() == "[]"


def test_the_call_cache_is_a_table_only_for_queries_that_name_it(tmp_path):
    storage = Storage(home=str(tmp_path))
    storage.write_table(RAW_QUERIES, "a", _queries("one"))
    spec = CallSpec("judge", "rules", "rules-6", "1", {})
    storage.model_calls.call(
        spec,
        [spec.key("a pair")],
        ["a pair"],
        lambda batch: iter([[(0, Generation("<score>5</score>"))]]),
        batch_size=1,
    )
    without = connect_views(tmp_path, model_calls=False)
    tables = {name for (name,) in without.execute("show tables").fetchall()}
    assert tables == {"raw_queries"}
    assert has_model_calls(tmp_path)
    with_calls = connect_views(tmp_path)
    assert with_calls.execute("select count(*) from model_calls").fetchone() == (1,)


def test_a_partition_written_in_batches_reads_back_as_one_frame_with_its_version(tmp_path):
    storage = Storage(home=str(tmp_path))
    whole = _queries("one", "two", "three")
    with storage.table_writer(RAW_QUERIES, "s1") as written:
        for start in range(whole.height):
            written.write(whole.slice(start, 1))
        # Nothing appears before the block ends: readers see the partition whole or not at all.
        assert not storage.table_path(RAW_QUERIES, "s1").exists()
    back = storage.read_table(RAW_QUERIES, "s1")
    assert back.equals(whole) and written.rows == 3
    assert RAW_QUERIES.check(back) is back
    # The version follows the batches; one batch gives the whole frame's.
    assert written.version == frame_version(*(whole.slice(i, 1) for i in range(3)))
    with storage.table_writer(RAW_QUERIES, "s2") as single:
        single.write(whole)
    assert single.version == frame_version(whole) != written.version
    # A writer given nothing writes an empty partition (a rerun that keeps nothing clears it).
    with storage.table_writer(RAW_QUERIES, "s1") as empty:
        pass
    assert storage.read_table(RAW_QUERIES, "s1").equals(RAW_QUERIES.frame([]))
    assert empty.rows == 0


def test_a_crash_between_batches_keeps_the_previous_partition_and_its_rejects(tmp_path):
    storage = Storage(home=str(tmp_path))
    path = storage.write_table(RAW_QUERIES, "s1", _queries("old"))
    storage.write_rejects("raw_queries", "s1", [{"reason": "too_short", "line": 1}])
    with (
        pytest.raises(RuntimeError, match="killed"),
        storage.table_writer(RAW_QUERIES, "s1") as written,
        storage.rejects_writer("raw_queries", "s1") as rejected,
    ):
        written.write(_queries("new"))
        rejected.add([{"reason": "too_long", "line": 2}])
        raise RuntimeError("killed")
    assert pl.read_parquet(path)["query"].to_list() == ["old"]
    assert storage.read_rejects("raw_queries", "s1")["reason"].to_list() == ["too_short"]
    leftovers = [p.name for p in path.parent.iterdir()]
    leftovers += [p.name for p in storage.rejects_path("raw_queries", "s1").parent.iterdir()]
    assert sorted(leftovers) == ["s1.parquet", "s1.parquet"]


def test_rejects_written_in_batches_are_stamped_and_counted(tmp_path):
    storage = Storage(home=str(tmp_path))
    with storage.rejects_writer("documents", "d1") as rejected:
        rejected.add([{"reason": "too_short", "line": 1}, {"reason": "duplicate", "line": 2}])
        rejected.add([])
        rejected.add([{"reason": "too_short", "line": 7}])
    back = storage.read_rejects("documents", "d1")
    assert back.select("stage", "shard", "line").rows() == [
        ("documents", "d1", 1),
        ("documents", "d1", 2),
        ("documents", "d1", 7),
    ]
    assert rejected.reasons == {"too_short": 2, "duplicate": 1} and rejected.rows == 3


def test_a_killed_writers_temporary_is_removed_by_the_next_write_and_a_live_ones_kept(tmp_path):
    storage = Storage(home=str(tmp_path))
    path = storage.table_path(RAW_QUERIES, "wiki")
    path.parent.mkdir(parents=True)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    ).stdout.strip()
    dead = path.parent / f".wiki.{gone}.abc123.tmp"
    live = path.parent / f".wiki.{os.getpid()}.def456.tmp"
    other = path.parent / f".wiki.5.{gone}.ghi789.tmp"  # partition "wiki.5"'s, not wiki's
    for left in (dead, live, other):
        left.write_bytes(b"PAR1 half a file")
    storage.write_table(RAW_QUERIES, "wiki", _queries("one"))
    assert not dead.exists() and live.exists() and other.exists()
    assert storage.read_table(RAW_QUERIES, "wiki")["query"].to_list() == ["one"]
