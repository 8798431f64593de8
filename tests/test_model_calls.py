"""The model-call cache: keys change with everything that changes an output, answered batches
survive a crash of the step, and parallel processes can fill one cache, in its SQLite file or on
a real PostgreSQL."""

import sqlite3
import subprocess
import sys

import pytest

from fi_resources.model_calls import CallSpec, open_model_call_cache

SPEC = CallSpec("judge", "transformers", "some/model", "1", {"max_new_tokens": 8})


def upper(batch: list[str]) -> list[str]:
    return [text.upper() for text in batch]


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

    first = cache.call(SPEC, ["a", "b", "a"], compute, batch_size=8)
    assert first.outputs == ["A", "B", "A"] and (first.made, first.cached) == (2, 0)
    progress = []
    second = cache.call(
        SPEC, ["a", "c", "b", "d"], compute, batch_size=1, progress=lambda *p: progress.append(p)
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
        cache.call(SPEC, list("abcdef"), fails_on_the_third_batch, 2, run_id="r1", partition="p")
    assert len(cache.lookup([SPEC.key(x) for x in "abcdef"])) == 4
    resumed = cache.call(SPEC, list("abcdef"), upper, 2, run_id="r2", partition="p")
    assert resumed.outputs == list("ABCDEF") and (resumed.made, resumed.cached) == (2, 4)
    frame = cache.frame()
    assert frame.height == 6
    assert frame.group_by("run_id").len().sort("run_id").rows() == [("r1", 4), ("r2", 2)]
    assert set(frame["role"]) == {"judge"} and frame["seconds"].min() >= 0


# Each worker is a fresh interpreter that only imports the cache module, as a parallel partition's
# step process would; both answer 100..199, and each key must end up stored once.
_WORKER = """
import sys
from pathlib import Path
from fi_resources.model_calls import CallSpec, open_model_call_cache
spec = CallSpec("judge", "transformers", "some/model", "1", {"max_new_tokens": 8})
offset = int(sys.argv[2])
inputs = [str(i) for i in range(offset, offset + 200)]
cache = open_model_call_cache(Path(sys.argv[1]), sys.argv[3] or None)
cache.call(spec, inputs, lambda b: [t.upper() for t in b], batch_size=5)
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
