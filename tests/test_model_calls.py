"""The model-call cache: keys change with everything that changes an output, answered batches
survive a crash of the step, and parallel processes can fill one cache file."""

import sqlite3
import subprocess
import sys

import pytest

from fi_resources.model_calls import CallSpec, ModelCallCache

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


def test_only_missing_calls_are_made_and_equal_inputs_once(tmp_path):
    cache = ModelCallCache(tmp_path / "calls.sqlite")
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


def test_answered_batches_survive_a_step_that_fails_later(tmp_path):
    cache = ModelCallCache(tmp_path / "calls.sqlite")

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
from fi_resources.model_calls import CallSpec, ModelCallCache
spec = CallSpec("judge", "transformers", "some/model", "1", {"max_new_tokens": 8})
offset = int(sys.argv[2])
inputs = [str(i) for i in range(offset, offset + 200)]
ModelCallCache(sys.argv[1]).call(spec, inputs, lambda b: [t.upper() for t in b], batch_size=5)
"""


def test_parallel_processes_share_one_cache_file(tmp_path):
    path = str(tmp_path / "calls.sqlite")
    workers = [
        subprocess.Popen([sys.executable, "-c", _WORKER, path, str(offset)], stderr=subprocess.PIPE)
        for offset in (0, 100)
    ]
    errors = [worker.communicate(timeout=300)[1].decode() for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], errors
    with sqlite3.connect(path) as connection:
        rows = connection.execute("select count(*), count(distinct cache_key) from model_calls")
        assert rows.fetchone() == (300, 300)
