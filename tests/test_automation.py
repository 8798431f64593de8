"""With FI_AUTOMATION on, the data-version automation condition re-runs exactly what a content
change reaches: nothing when nothing changed, one shard's partitions and retrieval for a new shard."""

import json

import dagster as dg

from fi_assets.definitions import build_definitions
from fi_assets.ingestion import ingest_shards
from fi_method.samples import wikipedia_articles
from fi_resources.settings import get_settings
from fi_resources.storage import Storage


def requested(result) -> set[str]:
    """asset[partition] pairs an automation evaluation asks to run."""
    return {
        f"{r.key.to_user_string()}[{partition}]"
        for r in result.results
        for partition in result.get_requested_partitions(r.key)
    }


def ingest(instance, storage, kind, path, shard):
    [ingested] = ingest_shards(storage, kind, str(path), shard)
    instance.add_dynamic_partitions("query_shards" if kind == "queries" else "doc_shards", [shard])
    instance.report_runless_asset_event(ingested.event)


def test_data_version_automation(fi_home, tmp_path, monkeypatch):
    monkeypatch.setenv("FI_AUTOMATION", "true")
    get_settings.cache_clear()
    defs = build_definitions(get_settings())
    storage = Storage(home=str(fi_home))
    queries = tmp_path / "q.jsonl"
    queries.write_text(
        "".join(
            json.dumps({"query": q}) + "\n"
            for q in [
                "What did Nikola Tesla invent in 1891?",
                "How do tides in the Bay of Fundy work?",
            ]
        )
    )
    docs = tmp_path / "d.jsonl"
    docs.write_text("".join(json.dumps(a) + "\n" for a in wikipedia_articles(limit=1)))

    with dg.instance_for_test() as instance:
        # Automation reacts to changes after it is switched on (earlier gaps are backfilled).
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        ingest(instance, storage, "queries", queries, "q1")
        ingest(instance, storage, "documents", docs, "d1")
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=result.cursor
        )
        # Eager requests a whole chain at once; matched_pairs waits for the index it reads.
        assert requested(result) == {
            "raw_queries[q1]",
            "instruction_templates[q1]",
            "template_index[q1]",
            "documents[d1]",
            "document_chunks[d1]",
            "continuations[d1]",
        }

        for key, group in (
            ("q1", ["raw_queries", "instruction_templates", "template_index"]),
            (
                "d1",
                [
                    "documents",
                    "document_chunks",
                    "continuations",
                    "matched_pairs",
                    "instantiated_pairs",
                    "judged_pairs",
                ],
            ),
        ):
            run = dg.materialize(
                list(defs.assets),
                selection=group,
                partition_key=key,
                instance=instance,
                resources=defs.resources,
            )
            assert run.success
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=result.cursor
        )
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=result.cursor
        )
        assert requested(result) == set()

        # Re-ingesting the same content reports a new event with the same data version: nothing runs.
        ingest(instance, storage, "queries", queries, "q1")
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=result.cursor
        )
        assert requested(result) == set()

        # A new query shard: its own chain runs; the documents are not re-embedded, and retrieval
        # (matched_pairs) re-runs once the new templates are in the index.
        ingest(instance, storage, "queries", queries, "q2")
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=result.cursor
        )
        assert requested(result) == {
            "raw_queries[q2]",
            "instruction_templates[q2]",
            "template_index[q2]",
        }
        group = ["raw_queries", "instruction_templates", "template_index"]
        run = dg.materialize(
            list(defs.assets),
            selection=group,
            partition_key="q2",
            instance=instance,
            resources=defs.resources,
        )
        assert run.success
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=result.cursor
        )
        assert requested(result) == {"matched_pairs[d1]"}


def test_automation_never_starts_training_or_evaluation(fi_home, monkeypatch):
    monkeypatch.setenv("FI_AUTOMATION", "true")
    get_settings.cache_clear()
    graph = build_definitions(get_settings()).resolve_asset_graph()
    conditions = {
        key.to_user_string(): graph.get(key).automation_condition
        for key in graph.get_all_asset_keys()
    }
    assert conditions["judged_pairs"] is not None and conditions["packed_corpus"] is not None
    for name in ("trained_checkpoint", "eval_scores", "eval_report"):
        assert conditions[name] is None
