"""Blocking checks end to end: a document that quotes a benchmark question fails packed_corpus's
leak check; the rows stay written for audit, `fi materialize` skips the training that would read
them, and plans the failed partition again instead of building on it. A training budget that a
recipe could reach only by repeating data fails training_budget's check, and no model trains;
the default budget trains every recipe on the same tokens."""

import json

import dagster as dg
from typer.testing import CliRunner

from fi_assets.cli import app
from fi_assets.definitions import build_definitions
from fi_method.corpus.packing import RECIPES, load_training_tokenizer, pack_shard
from fi_method.samples import wikipedia_articles, write_sample
from fi_method.synthesis.continuations import halve
from fi_resources import tables
from fi_resources.instance import open_instance
from fi_resources.settings import get_settings
from fi_resources.storage import Storage

runner = CliRunner()
# A MixEval free-form question, verbatim.
LEAKED = "Splenitis is the inflammation of which part of the body?"


def _section(output: str, header: str) -> str:
    """The lines `fi materialize` printed for the run whose header contains `header`."""
    start = output.index(header)
    end = output.find("\n[", start)
    return output[start : end if end > 0 else None]


def test_an_eval_question_in_a_document_blocks_what_would_train_on_it(fi_home, tmp_path):
    queries = tmp_path / "chat.jsonl"
    lines = write_sample(tmp_path / "sample").queries.read_text().splitlines()[:15]
    queries.write_text("\n".join(lines) + "\n")
    article = wikipedia_articles(limit=1)[0]
    leaky = tmp_path / "leaky.jsonl"
    leaky.write_text(json.dumps({**article, "text": f"{article['text']}\n\n{LEAKED}"}) + "\n")
    for kind, path in (("queries", queries), ("documents", leaky)):
        assert runner.invoke(app, ["ingest", kind, str(path)]).exit_code == 0

    result = runner.invoke(app, ["materialize", "trained_checkpoint"])
    assert result.exit_code == 1
    packing = _section(result.output, "leaky|standard: packed_corpus")
    assert "check no_eval_items_in_training_data: FAILED (blocking)" in packing
    training = _section(result.output, "recipe=standard: trained_checkpoint")
    assert "SKIPPED: it reads from failed run(s)" in training
    assert not (fi_home / "checkpoints" / "standard").exists()

    # The rows are there to audit; the UI shows the failed check with the offending sample.
    assert Storage(home=str(fi_home)).read_table(tables.PACKED_CORPUS, "leaky.standard").height == 1
    key = dg.AssetCheckKey(dg.AssetKey("packed_corpus"), "no_eval_items_in_training_data")
    history = open_instance(fi_home).event_log_storage.get_asset_check_execution_history(
        key, limit=10
    )
    evaluations = [record.event.dagster_event.event_specific_data for record in history]
    failed = [e for e in evaluations if not e.passed]
    assert len(failed) >= 1 and "mixeval free-form" in failed[0].metadata["failures"].value

    # Next time the failed partition is planned again, not built on.
    again = runner.invoke(app, ["materialize", "packed_corpus"])
    assert "its blocking check(s) no_eval_items_in_training_data failed" in again.output


def pack_real_articles(fi_home, instance, shard: str, kept_pairs: list[int]) -> dict[str, int]:
    """packed_corpus of one shard of real articles, as packing writes it: `kept_pairs[i]`
    judged pairs kept for the i-th article (questions on its paragraphs; a strict judge keeps
    few), its halves for non_instructional. Returns each recipe's packed tokens."""
    articles = wikipedia_articles(limit=len(kept_pairs))
    documents = [(a["id"], a["text"]) for a in articles]
    candidates = {
        "fineinstructions": {
            doc_id: [
                {
                    "sample_id": f"{doc_id}-{i}",
                    "instruction": f"What does the article say in part {i}?",
                    "answer": paragraph,
                }
                for i, paragraph in enumerate(
                    [p for p in text.split("\n\n") if len(p.split()) > 20][:kept]
                )
            ]
            for (doc_id, text), kept in zip(documents, kept_pairs, strict=True)
        },
        "non_instructional": {
            doc_id: [dict(zip(("instruction", "answer"), halve(text)), sample_id=doc_id)]
            for doc_id, text in documents
        },
        "standard": {},
    }
    storage, tokens = Storage(home=str(fi_home)), {}
    instance.add_dynamic_partitions("doc_shards", [shard])
    for recipe in RECIPES:
        rows, stats = pack_shard(
            documents, candidates[recipe], recipe, load_training_tokenizer(), seed=0
        )
        frame = tables.PACKED_CORPUS.frame({**row, "doc_shard": shard} for row in rows)
        storage.write_table(tables.PACKED_CORPUS, f"{shard}.{recipe}", frame)
        tokens[recipe] = stats.packed_tokens
    return tokens


def _run(instance, asset: str, partition=None, config=None):
    defs = build_definitions(get_settings())
    return dg.materialize(
        list(defs.assets),
        selection=[asset],
        partition_key=partition,
        run_config={"ops": {asset: {"config": config}}} if config else None,
        instance=instance,
        resources=defs.resources,
        raise_on_error=False,
    )


def test_a_budget_a_recipe_cannot_fill_blocks_training_and_the_default_trains_all_alike(
    fi_home, monkeypatch
):
    instance = open_instance(fi_home)
    tokens = pack_real_articles(fi_home, instance, "wiki", [3, 0, 2])
    assert tokens["fineinstructions"] < 0.5 * tokens["standard"]
    # The old control, the documents' own tokens, as an override: fineinstructions would have
    # to repeat its pairs to reach it.
    monkeypatch.setenv("FI_TRAINING_TOKENS", str(tokens["standard"]))
    get_settings.cache_clear()
    assert not _run(instance, "training_budget").success
    key = dg.AssetCheckKey(dg.AssetKey("training_budget"), "recipes_fill_training_budget")
    [record] = instance.event_log_storage.get_asset_check_execution_history(key, limit=1)
    evaluation = record.event.dagster_event.event_specific_data
    assert not evaluation.passed
    failure = evaluation.metadata["failures"].value
    assert f"fineinstructions packed {tokens['fineinstructions']:,} tokens" in failure
    assert f"training budget of {tokens['standard']:,} (FI_TRAINING_TOKENS)" in failure
    assert f"Set FI_TRAINING_TOKENS to at most {tokens['fineinstructions']:,}" in failure
    # Launched on its own, training refuses the same budget: no recipe trains, not even one
    # that could fill it.
    result = _run(instance, "trained_checkpoint", "standard")
    assert not result.success
    [failed] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert "the training budget cannot be met" in failed.step_failure_data.error.message
    assert not (fi_home / "checkpoints").exists()

    # By default every recipe trains on the smallest recipe's packed total: the same whole
    # steps, standard on a seeded subset of its documents, none repeated.
    monkeypatch.delenv("FI_TRAINING_TOKENS")
    get_settings.cache_clear()
    assert _run(instance, "training_budget").success
    budget = latest(instance, "training_budget")
    assert budget["training_budget_tokens"] == tokens["fineinstructions"]
    assert "| wiki |" in budget["tokens_by_shard"]
    config = {"seq_len": 64, "batch_size": 2}
    trained = {}
    for recipe in ("standard", "fineinstructions"):
        assert _run(instance, "trained_checkpoint", recipe, config).success
        trained[recipe] = latest(instance, "trained_checkpoint")
    steps = tokens["fineinstructions"] // 128
    for meta in trained.values():
        assert (meta["step"], meta["training_tokens"]) == (steps, steps * 128)
        assert meta["training_budget_tokens"] == tokens["fineinstructions"]
    standard = trained["standard"]
    assert standard["samples"] < standard["samples_per_epoch"] == 3
    assert standard["recipe_tokens"] == tokens["standard"]


def latest(instance, asset: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}
