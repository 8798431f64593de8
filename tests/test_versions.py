"""Code versions follow the method: a new judge rubric (its prompt version) or a new minimum
judge score makes judged_pairs and what it feeds stale, and nothing upstream, both for
`fi materialize`'s plan and for declarative automation."""

import dataclasses
import json

import dagster as dg
import pytest
from typer.testing import CliRunner

from fi_assets.cli import app
from fi_assets.definitions import build_definitions
from fi_method.samples import wikipedia_articles
from fi_method.synthesis import judge
from fi_method.text import content_hash
from fi_resources.instance import open_instance
from fi_resources.settings import get_settings

runner = CliRunner()
PACKING = [
    f"doc_shard x recipe=wiki|{recipe}: packed_corpus"
    for recipe in ("standard", "fineinstructions", "non_instructional")
]


@pytest.fixture
def materialized(fi_home, tmp_path):
    """One query shard and one document shard, materialized up to packed_corpus."""
    queries = tmp_path / "chat.jsonl"
    queries.write_text(
        "".join(
            json.dumps({"query": q}) + "\n"
            # Questions the articles (Anarchism, Autism) answer in part, so that the judge keeps
            # most pairs and refuses a few, and three they do not answer.
            for q in (
                "What did Nikola Tesla invent in 1891?",
                "How does photosynthesis work in C4 plants like maize?",
                "Why did the Roman Empire fall in the 5th century?",
                "what is anarcho-syndicalism?",
                "who is the voice of anarcho-primitivism?",
                "what is the Mexican Anarchist Federation?",
                "who founded the Anarchist Federation of Britain?",
                "what causes autism in children?",
            )
        )
    )
    docs = tmp_path / "wiki.jsonl"
    docs.write_text("".join(json.dumps(a) + "\n" for a in wikipedia_articles(limit=2)))
    assert runner.invoke(app, ["ingest", "queries", str(queries)]).exit_code == 0
    assert runner.invoke(app, ["ingest", "documents", str(docs)]).exit_code == 0
    result = runner.invoke(app, ["materialize", "packed_corpus"])
    assert result.exit_code == 0, result.output
    return fi_home


def planned_steps() -> list[str]:
    result = runner.invoke(app, ["materialize", "packed_corpus"])
    assert result.exit_code == 0, result.output
    return [line.split("] ")[1] for line in result.output.splitlines() if line.startswith("[")]


def new_rubric(monkeypatch) -> None:
    monkeypatch.setattr(judge, "ROLE", dataclasses.replace(judge.ROLE, prompt_version="2"))


def requested(result) -> set[str]:
    return {
        f"{r.key.to_user_string()}[{partition}]"
        for r in result.results
        for partition in result.get_requested_partitions(r.key)
    }


def test_a_new_rubric_or_minimum_score_makes_judging_and_downstream_stale_only(
    materialized, monkeypatch
):
    """For automation (what the daemon would request) and for `fi materialize`'s plan."""
    monkeypatch.setenv("FI_AUTOMATION", "true")
    get_settings.cache_clear()
    instance = open_instance(materialized)
    result = dg.evaluate_automation_conditions(
        defs=build_definitions(get_settings()), instance=instance
    )
    assert requested(result) == set()

    new_rubric(monkeypatch)
    defs = build_definitions(get_settings())
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    assert requested(result) == {"judged_pairs[wiki]"}
    # fi materialize runs the same. The rules judge's scores did not change, so packing, planned
    # again once judging ran, is up to date, and automation finds nothing new downstream.
    assert planned_steps() == ["doc_shards=wiki: judged_pairs"]
    assert planned_steps() == []
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    assert requested(result) == set()

    # Another minimum makes judging stale, and nothing upstream.
    monkeypatch.setenv("FI_MIN_JUDGE_SCORE", "5")
    get_settings.cache_clear()
    defs = build_definitions(get_settings())
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    assert requested(result) == {"judged_pairs[wiki]"}


LETTERS = dg.DynamicPartitionsDefinition(name="letters")


def small_definitions(folder, version: str, text: str) -> dg.Definitions:
    """`source` (code version `version`) writes `text` (fails on none); `reader`, per letter, and `summary`, of
    every letter, read it in turn. Partitioned otherwise, each is a run of its own."""

    @dg.asset(code_version=version)
    def source() -> dg.MaterializeResult:
        if not text:
            raise ValueError("no rows")
        (folder / "source.txt").write_text(text)
        return dg.MaterializeResult(data_version=dg.DataVersion(content_hash(text)))

    @dg.asset(deps=[source], partitions_def=LETTERS)
    def reader(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        read = (folder / "source.txt").read_text()
        return dg.MaterializeResult(
            data_version=dg.DataVersion(content_hash(context.partition_key, read))
        )

    @dg.asset(deps=[reader])
    def summary() -> dg.MaterializeResult:
        return dg.MaterializeResult(data_version=dg.DataVersion(content_hash("summary")))

    return dg.Definitions(assets=[source, reader, summary])


def materialized_times(instance, asset: str, partition: str | None = None) -> int:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(asset),
            asset_partitions=None if partition is None else [partition],
        ),
        limit=10,
    ).records
    return len(records)


def materialize_small(monkeypatch, folder, version: str, text: str, exit_code: int = 0) -> str:
    """`fi materialize` over `small_definitions`: its output."""
    defs = small_definitions(folder, version, text)
    monkeypatch.setattr("fi_assets.definitions.build_definitions", lambda settings: defs)
    result = runner.invoke(app, ["materialize"])
    assert result.exit_code == exit_code, result.output
    return result.output


def test_what_reads_an_upstream_that_ran_again_runs_only_when_its_data_changed(
    fi_home, tmp_path, monkeypatch
):
    instance = open_instance(fi_home)
    instance.add_dynamic_partitions(LETTERS.name, ["a", "b"])
    first = materialize_small(monkeypatch, tmp_path, "1", "rows")

    # A new code version that writes the same rows: source runs again, and what reads it is
    # planned again after it and found up to date.
    same = materialize_small(monkeypatch, tmp_path, "2", "rows")
    assert materialized_times(instance, "source") == 2
    assert [materialized_times(instance, "reader", p) for p in "ab"] == [1, 1]
    assert materialized_times(instance, "summary") == 1
    assert "[1/4]: source\n    why: source: code version 1 -> 2" in same
    assert "wave 1: 1 run(s); 3 more planned, to be planned again after them" in same
    assert "wave 2" not in same
    assert "3 planned run(s) found up to date once their upstream ran" in same
    assert "not run: reader, summary" in same

    # Other rows: every reader runs again, and so does summary, whose upstream changed.
    changed = materialize_small(monkeypatch, tmp_path, "3", "other rows")
    assert [materialized_times(instance, "reader", p) for p in "ab"] == [2, 2]
    assert materialized_times(instance, "summary") == 2
    assert "[2/4] letters=a: reader\n    why: reader: upstream source changed" in changed
    assert "wave 3: 1 run(s)\n[4/4]: summary" in changed
    # The first time, the same three waves.
    assert "wave 3: 1 run(s)\n[4/4]: summary" in first
    assert "up to date" not in first + changed
    assert "everything is up to date" in materialize_small(monkeypatch, tmp_path, "3", "other rows")


def test_a_failed_run_is_not_retried_and_what_reads_it_is_skipped(fi_home, tmp_path, monkeypatch):
    open_instance(fi_home).add_dynamic_partitions(LETTERS.name, ["a", "b"])
    output = materialize_small(monkeypatch, tmp_path, "1", "", exit_code=1)
    # Planned again after the failure, source is not run a second time.
    assert output.count("source: missing") == 1 and "wave 2" not in output
    assert "    FAILED in" in output[output.index("[1/4]: source") : output.index("[2/4]")]
    for line in ("[2/4] letters=a: reader", "[3/4] letters=b: reader", "[4/4]: summary"):
        section = output[output.index(line) :].split("\n[")[0]
        assert "SKIPPED: it reads from failed run(s) 1" in section
    assert "4 run(s) failed or skipped" in output


def run_judging(defs, instance) -> None:
    run = dg.materialize(
        list(defs.assets),
        selection=["judged_pairs"],
        partition_key="wiki",
        instance=instance,
        resources=defs.resources,
    )
    assert run.success


def test_the_version_tags_read_are_the_ones_dagster_writes():
    from fi_assets.versions import CODE_VERSION_TAG, DATA_VERSION_TAG

    @dg.asset(code_version="7")
    def versioned() -> dg.MaterializeResult:
        return dg.MaterializeResult(data_version=dg.DataVersion("abc"))

    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([versioned], instance=instance).success
    event = instance.get_latest_materialization_event(versioned.key)
    tags = event.asset_materialization.tags
    assert (tags[DATA_VERSION_TAG], tags[CODE_VERSION_TAG]) == ("abc", "7")


# Tables an asset reads without depending on them, and why.
READ_WITHOUT_DEPENDING = {
    # Templates are read by id, a content hash: an id always names the same text, so new or
    # removed templates reach instantiated_pairs through matched_pairs, and judged_pairs through
    # instantiated_pairs.
    ("instantiated_pairs", "instruction_templates"),
    ("judged_pairs", "instruction_templates"),
}
TABLE_READERS = {"read_table", "scan_table", "read_all", "scan_all", "table_path", "read_rejects"}


def tables_read_by_function() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """For every function in fi_assets (nested ones too): the assets whose tables it names in a
    Storage read (`read_table(DOCUMENTS, ...)`, `read_rejects(INSTANTIATED_PAIRS.name, ...)`),
    and the names of the functions it calls or passes on."""
    import ast
    from pathlib import Path

    import fi_assets
    from fi_resources import tables

    reads: dict[str, set[str]] = {}
    calls: dict[str, set[str]] = {}
    for path in Path(fi_assets.__file__).parent.rglob("*.py"):
        for function in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(function, ast.FunctionDef):
                continue
            for node in ast.walk(function):
                if not isinstance(node, ast.Call):
                    continue
                named = node.func
                first = node.args[0] if node.args else None
                reads_a_table = isinstance(named, ast.Attribute) and named.attr in TABLE_READERS
                if isinstance(first, ast.Attribute):
                    first = first.value
                if reads_a_table and isinstance(first, ast.Name):
                    table = getattr(tables, first.id)
                    reads.setdefault(function.name, set()).add(table.key.to_user_string())
                for called in [named, *node.args]:
                    if isinstance(called, ast.Name):
                        calls.setdefault(function.name, set()).add(called.id)
    return reads, calls


def test_every_table_an_asset_reads_is_a_dependency_of_it():
    """A read of a table the asset does not declare in its deps would leave it fresh in the UI
    and in `fi materialize`'s plan while its input changed."""
    reads, calls = tables_read_by_function()

    def read_by(name: str, seen: set[str]) -> set[str]:
        if name in seen:
            return set()
        seen.add(name)
        found = set(reads.get(name, ()))
        for called in calls.get(name, ()):
            found |= read_by(called, seen)
        return found

    graph = build_definitions(get_settings()).resolve_asset_graph()
    undeclared = {}
    checked = 0
    for key in graph.get_all_asset_keys():
        asset = key.to_user_string()
        parents = {parent.to_user_string() for parent in graph.get(key).parent_keys}
        tables = read_by(asset, set())
        checked += bool(tables)
        missing = {
            table
            for table in tables - parents - {asset}
            if (asset, table) not in READ_WITHOUT_DEPENDING
        }
        if missing:
            undeclared[asset] = sorted(missing)
    assert undeclared == {}
    assert checked >= 10, "the scan found the assets' reads"


def test_every_declared_table_is_written_by_an_asset_of_the_graph():
    from fi_resources.tables import REJECTS, TABLES

    graph = build_definitions(get_settings()).resolve_asset_graph()
    assets = {key.to_user_string() for key in graph.get_all_asset_keys()}
    writers = {table.name: table.key.to_user_string() for table in TABLES if table is not REJECTS}
    assert {name: writer for name, writer in writers.items() if writer not in assets} == {}
