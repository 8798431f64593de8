"""Tables are replaced whole or not at all, and DuckDB sees one view per table plus rejects."""

import polars as pl
import pytest

from fi_resources.storage import Storage, StorageLayoutError


def test_a_crash_mid_write_keeps_the_previous_partition_and_leaves_no_temporary(
    tmp_path, monkeypatch
):
    storage = Storage(home=str(tmp_path))
    path = storage.write_table("raw_queries", "s1", pl.DataFrame({"query": ["old"]}))

    def crash(self, file, *args, **kwargs):
        with open(file, "wb") as handle:
            handle.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", crash)
    with pytest.raises(OSError, match="disk full"):
        storage.write_table("raw_queries", "s1", pl.DataFrame({"query": ["new"]}))
    monkeypatch.undo()
    assert pl.read_parquet(path)["query"].to_list() == ["old"]
    assert [p.name for p in path.parent.iterdir()] == ["s1.parquet"]


def test_sql_views_and_rejects(tmp_path):
    storage = Storage(home=str(tmp_path))
    storage.write_table("raw_queries", "a", pl.DataFrame({"query_id": ["1", "2"]}))
    storage.write_table("raw_queries", "b", pl.DataFrame({"query_id": ["3"]}))
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
        Storage(home=str(tmp_path)).table_path("raw_queries", name)
