"""Blocking checks end to end: a document that quotes a benchmark question fails packed_corpus's
leak check; the rows stay written for audit, `fi materialize` skips the training that would read
them, and plans the failed partition again instead of building on it."""

import json

import dagster as dg
from typer.testing import CliRunner

from fi_assets.cli import app
from fi_method.samples import wikipedia_articles, write_sample
from fi_resources import tables
from fi_resources.instance import open_instance
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
