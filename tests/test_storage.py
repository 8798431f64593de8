"""Tables are replaced whole or not at all, and DuckDB sees one view per table plus rejects."""

import os
import subprocess
import sys

import polars as pl
import pytest

from fi_resources.engines import Generation
from fi_resources.model_calls import CallSpec
from fi_resources.storage import Storage, StorageLayoutError
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
