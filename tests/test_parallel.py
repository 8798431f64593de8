"""Parallel runs on one machine: the Dagster instance on a real PostgreSQL (Debian's, started on
loopback for the test), four document shards materialized by four worker processes at once, and
nothing lost or duplicated."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import dagster as dg
import pytest
from typer.testing import CliRunner

from fi_assets.cli import app
from fi_method.samples import wikipedia_articles, write_sample
from fi_resources.instance import open_instance
from fi_resources.settings import get_settings
from fi_resources.storage import Storage

runner = CliRunner()
PROJECT = Path(__file__).resolve().parents[1]
SHARDS = 4
ASSETS = ("documents", "document_chunks", "matched_pairs", "instantiated_pairs", "judged_pairs")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL cluster on loopback; stopped (by its pid file) afterwards."""
    initdb = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not initdb:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    bin_dir = initdb[-1].parent
    # PostgreSQL refuses to run as root: then the cluster belongs to the `postgres` user.
    as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="fi-pg-"))
    if as_owner:
        shutil.chown(folder, "postgres")
    data, port = folder / "data", _free_port()

    def run(*command: str) -> None:
        subprocess.run([*as_owner, *command], check=True, capture_output=True, timeout=120)

    run(str(bin_dir / "initdb"), "-D", str(data), "-U", "fi", "--auth=trust")
    run(
        str(bin_dir / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(folder / "log"),
        "-o",
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1",
        "-w",
        "start",
    )
    try:
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "fi", "fi")
        yield f"postgresql+psycopg2://fi@127.0.0.1:{port}/fi"
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_parallel_runs_refuse_sqlite(fi_home):
    result = runner.invoke(app, ["materialize", "--workers", "2"])
    assert result.exit_code == 2 and "PostgreSQL" in result.output


def test_four_document_shards_at_once_on_postgres(fi_home, tmp_path, monkeypatch, postgres_url):
    monkeypatch.setenv("FI_DAGSTER_YAML", str(PROJECT / "deploy" / "postgres" / "dagster.yaml"))
    monkeypatch.setenv("FI_POSTGRES_URL", postgres_url)
    get_settings.cache_clear()
    queries = tmp_path / "chat.jsonl"
    lines = write_sample(tmp_path / "sample").queries.read_text().splitlines()[:15]
    queries.write_text("\n".join(lines) + "\n")
    assert runner.invoke(app, ["ingest", "queries", str(queries)]).exit_code == 0
    shards = [f"part{i}" for i in range(SHARDS)]
    for shard, article in zip(shards, wikipedia_articles(limit=SHARDS), strict=True):
        path = tmp_path / f"{shard}.jsonl"
        path.write_text(json.dumps(article) + "\n")
        assert runner.invoke(app, ["ingest", "documents", str(path)]).exit_code == 0

    started = time.perf_counter()
    result = runner.invoke(app, ["materialize", "judged_pairs", "--workers", str(SHARDS)])
    wall = time.perf_counter() - started
    assert result.exit_code == 0, result.output

    # Nothing lost or duplicated: one materialization per asset and shard, one row per document,
    # every grounded pair judged once, no pair id twice.
    instance = open_instance(fi_home)
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    for asset in ASSETS:
        for shard in shards:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[shard]),
                limit=5,
            ).records
            assert len(records) == 1, (asset, shard)
    storage = Storage(home=str(fi_home))
    pairs = storage.read_all("instantiated_pairs")
    judged = storage.read_all("judged_pairs")
    assert storage.read_all("documents").height == SHARDS
    assert pairs["pair_id"].n_unique() == pairs.height == judged.height
    assert set(pairs["pair_id"]) == set(judged["pair_id"])
    cached = storage.connect().execute(
        "select count(*), count(distinct cache_key) from model_calls"
    )
    calls, distinct = cached.fetchone()
    assert calls == distinct
    print(f"\n{SHARDS} shards, {SHARDS} workers on PostgreSQL: {wall:.1f}s, {pairs.height} pairs")

    again = runner.invoke(app, ["materialize", "judged_pairs", "--workers", str(SHARDS)])
    assert "everything is up to date" in again.output
