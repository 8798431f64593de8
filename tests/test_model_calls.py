"""The model-call cache: keys change with everything that changes an output, answered batches
survive a crash of the step, and parallel processes can fill one cache, in its SQLite file or on
a real PostgreSQL."""

import sqlite3
import subprocess
import sys

import pytest

from fi_method.llm_output import Refused
from fi_resources.engines import Generation
from fi_resources.model_calls import CallResult, CallSpec, open_model_call_cache

SPEC = CallSpec("judge", "transformers", "some/model", "1", {"max_new_tokens": 8})


def upper(batch: list[str]):
    """An engine's answers: the whole batch in one chunk, with token counts."""
    yield [(i, Generation(text.upper(), len(text), 1)) for i, text in enumerate(batch)]


def call(cache, inputs, answer, batch_size, **kwargs):
    return cache.call(SPEC, [SPEC.key(x) for x in inputs], inputs, answer, batch_size, **kwargs)


@pytest.mark.parametrize(
    "other",
    [
        CallSpec("instantiator", "transformers", "some/model", "1", {"max_new_tokens": 8}),
        CallSpec("judge", "vllm", "some/model", "1", {"max_new_tokens": 8}),
        CallSpec("judge", "transformers", "other/model", "1", {"max_new_tokens": 8}),
        CallSpec("judge", "transformers", "some/model", "2", {"max_new_tokens": 8}),
        CallSpec("judge", "transformers", "some/model", "1", {"max_new_tokens": 9}),
    ],
)
def test_the_key_changes_with_role_engine_model_prompt_and_params(other):
    assert SPEC.key("x") == SPEC.key("x")
    assert SPEC.key("x") != SPEC.key("y")
    assert other.key("x") != SPEC.key("x")


@pytest.fixture(params=["sqlite", "postgres"])
def cache_url(request, tmp_path):
    """Where a cache lives: None (its SQLite file under tmp_path) or a PostgreSQL URL."""
    return request.getfixturevalue("postgres_url") if request.param == "postgres" else None


def test_only_missing_calls_are_made_and_equal_inputs_once(tmp_path, cache_url):
    cache = open_model_call_cache(tmp_path, cache_url)
    seen_batches = []

    def compute(batch):
        seen_batches.append(list(batch))
        return upper(batch)

    first = call(cache, ["a", "b", "a"], compute, batch_size=8)
    assert first.outputs == ["A", "B", "A"] and (first.made, first.cached) == (2, 0)
    assert (first.prompt_tokens, first.completion_tokens) == (2, 2)
    progress = []
    second = call(
        cache, ["a", "c", "b", "d"], compute, batch_size=1, progress=lambda *p: progress.append(p)
    )
    assert second.outputs == ["A", "C", "B", "D"] and (second.made, second.cached) == (2, 2)
    assert seen_batches == [["a", "b"], ["c"], ["d"]]
    assert progress == [(3, 4, 2), (4, 4, 2)]


def test_answered_batches_survive_a_step_that_fails_later(tmp_path, cache_url):
    cache = open_model_call_cache(tmp_path, cache_url)

    def fails_on_the_third_batch(batch):
        if "e" in batch:
            raise RuntimeError("the GPU fell over")
        return upper(batch)

    with pytest.raises(RuntimeError):
        call(cache, list("abcdef"), fails_on_the_third_batch, 2, run_id="r1", partition="p")
    assert len(cache.lookup([SPEC.key(x) for x in "abcdef"])) == 4
    resumed = call(cache, list("abcdef"), upper, 2, run_id="r2", partition="p")
    assert resumed.outputs == list("ABCDEF") and (resumed.made, resumed.cached) == (2, 4)
    frame = cache.frame()
    assert frame.height == 6
    assert frame.group_by("run_id").len().sort("run_id").rows() == [("r1", 4), ("r2", 2)]
    assert set(frame["role"]) == {"judge"} and frame["seconds"].min() >= 0
    assert frame["prompt_tokens"].to_list() == [1] * 6


def test_each_answer_is_committed_as_it_returns(tmp_path, cache_url):
    """A server engine answers one request at a time: what returned before a failure in the
    middle of a batch is kept, and the rerun asks only for the rest."""
    cache = open_model_call_cache(tmp_path, cache_url)

    def two_answers_then_the_server_dies(batch):
        for index, text in enumerate(batch[:2]):
            yield [(index, Generation(text.upper(), 3, 5))]
        raise ConnectionError("http://127.0.0.1:9/v1 stopped answering")

    with pytest.raises(ConnectionError):
        call(cache, list("abcd"), two_answers_then_the_server_dies, batch_size=4)
    assert sorted(cache.lookup([SPEC.key(x) for x in "abcd"]).values()) == ["A", "B"]
    asked = []

    def answer(batch):
        asked.extend(batch)
        return upper(batch)

    resumed = call(cache, list("abcd"), answer, batch_size=4)
    assert asked == ["c", "d"] and resumed.outputs == list("ABCD")


def test_a_cache_written_before_token_counts_gains_the_columns(tmp_path):
    with sqlite3.connect(tmp_path / "model_calls.sqlite") as connection:
        connection.execute(
            "CREATE TABLE model_calls (cache_key TEXT PRIMARY KEY, role TEXT NOT NULL, engine TEXT "
            "NOT NULL, model TEXT NOT NULL, prompt_version TEXT NOT NULL, params TEXT NOT NULL, "
            "output TEXT NOT NULL, seconds REAL NOT NULL, run_id TEXT, partition TEXT, "
            "created_at TEXT NOT NULL)"
        )
        connection.execute(
            "INSERT INTO model_calls VALUES (?, 'judge', 'transformers', 'some/model', '1', '{}', "
            "'A', 0.1, 'r0', 'p', '2026-01-01T00:00:00+00:00')",
            (SPEC.key("a"),),
        )
    cache = open_model_call_cache(tmp_path)
    result = call(cache, ["a", "b"], upper, batch_size=2)
    assert result.outputs == ["A", "B"] and result.made == 1
    assert cache.frame().select("output", "prompt_tokens").rows() == [("A", None), ("B", 1)]


# Each worker is a fresh interpreter that only imports the cache module, as a parallel partition's
# step process would; both answer 100..199, and each key must end up stored once.
_WORKER = """
import sys
from pathlib import Path
from fi_resources.engines import Generation
from fi_resources.model_calls import CallSpec, open_model_call_cache
spec = CallSpec("judge", "transformers", "some/model", "1", {"max_new_tokens": 8})
offset = int(sys.argv[2])
inputs = [str(i) for i in range(offset, offset + 200)]
cache = open_model_call_cache(Path(sys.argv[1]), sys.argv[3] or None)
cache.call(
    spec,
    [spec.key(i) for i in inputs],
    inputs,
    lambda b: iter([[(i, Generation(t.upper())) for i, t in enumerate(b)]]),
    batch_size=5,
)
"""


def test_parallel_processes_share_one_cache(tmp_path, cache_url):
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(tmp_path), str(offset), cache_url or ""],
            stderr=subprocess.PIPE,
        )
        for offset in (0, 100)
    ]
    errors = [worker.communicate(timeout=300)[1].decode() for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], errors
    calls = open_model_call_cache(tmp_path, cache_url).frame()
    assert calls.height == calls["cache_key"].n_unique() == 300
    if cache_url is None:  # and the file is a plain SQLite database, in WAL mode
        with sqlite3.connect(tmp_path / "model_calls.sqlite") as connection:
            assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_tally_keeps_a_batchs_figures_and_drops_its_texts():
    """What instantiated_pairs and judged_pairs keep of each batch's calls for the whole
    partition: counts and refusals, not the outputs they have already written."""
    too_long = Refused("9,000 prompt tokens; the window holds 8,192")
    batches = [
        CallResult(
            ["null: no fit", too_long, '{"instruction": "q", "answer": "a"}'], 2, 1, 1.5, 90, 30
        ),
        CallResult(["null: no fit"] * 4, 4, 0, 2.0, 120, 40),
    ]
    tallied = CallResult.combined([batch.tally() for batch in batches])
    whole = CallResult.combined(batches)
    assert tallied.outputs == [too_long]
    assert (tallied.made, tallied.cached, tallied.refused) == (whole.made, whole.cached, 1)
    assert (tallied.seconds, tallied.prompt_tokens, tallied.completion_tokens) == (3.5, 210, 70)
