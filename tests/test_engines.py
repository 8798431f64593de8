"""The engines: one registry of names, settings checked before any work, grammar-constrained
decoding on the transformers engine (a random model must still write the structure), and what a
server's odd answers become."""

import dataclasses
import json
import re
import time
from types import SimpleNamespace

import pytest

from fi_method.corpus.packing import load_training_tokenizer
from fi_method.llm_output import Refused
from fi_method.roles import OutputFormat, Request
from fi_method.synthesis import instantiator, judge
from fi_method.synthesis.pairs import collect_judgements
from fi_method.templating import genericizer
from fi_method.templating.instruction_templates import collect_templates
from fi_resources import engines
from fi_resources.engines import (
    ENGINES,
    EngineConfig,
    Generation,
    RequestPacer,
    TransformersEngine,
    _answer_text,
    parse_base_urls,
)
from fi_resources.model_calls import CallSpec, open_model_call_cache
from fi_resources.roles import (
    BenchmarkJudge,
    Candidate,
    Judge,
    declared_roles,
    role_resource,
    role_version,
)
from fi_resources.settings import Settings


def test_every_engine_name_has_one_class_and_every_role_one_declaration():
    assert set(engines._CLASSES) == set(ENGINES) == {"rules", "transformers", "vllm", "openai"}
    assert set(declared_roles()) == {
        "genericizer",
        "instantiator",
        "judge",
        "continuation",
        "candidate",
        "benchmark_judge",
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "is empty"),
        ("localhost:8000", "'localhost:8000' is not an http"),
        ("http://a:1/v1, ftp://b/v1", "'ftp://b/v1' is not an http"),
    ],
)
def test_a_malformed_base_url_is_refused_before_any_work(value, message, monkeypatch):
    with pytest.raises(ValueError, match=message):
        parse_base_urls(value)
    monkeypatch.setenv("FI_JUDGE_ENGINE", "openai")
    monkeypatch.setenv("FI_OPENAI_BASE_URL", value)
    with pytest.raises(ValueError, match="FI_OPENAI_BASE_URL"):
        Settings()


def test_a_fleet_is_every_url_in_order():
    assert parse_base_urls(" http://a:8000/v1,https://b.example/v1 ") == [
        "http://a:8000/v1",
        "https://b.example/v1",
    ]


def test_the_pacer_spreads_request_starts_over_the_minute():
    pacer = RequestPacer(per_minute=600)  # one start every 0.1 s
    started = time.monotonic()
    for _ in range(4):
        pacer.wait()
    assert time.monotonic() - started >= 0.3
    unpaced = RequestPacer(None)
    started = time.monotonic()
    for _ in range(100):
        unpaced.wait()
    assert time.monotonic() - started < 0.3


def test_role_versions_follow_prompt_engine_model_and_thresholds(monkeypatch):
    base = role_version("judge", Settings())
    assert base == f"judge:{judge.RULES_VERSION}+prompt-{judge.PROMPT_VERSION}|min_judge_score=4"
    monkeypatch.setenv("FI_MIN_JUDGE_SCORE", "5")
    assert role_version("judge", Settings()) != base
    monkeypatch.setenv("FI_JUDGE_ENGINE", "openai")
    monkeypatch.setenv("FI_OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")
    served = role_version("judge", Settings())
    assert served == (
        f"judge:prompt-{judge.PROMPT_VERSION}|openai:flowaicom/Flow-Judge-v0.1|decoding=greedy"
        "|max_new_tokens=1000|structured=openai:response_format|min_judge_score=5"
    )
    # The genericizer's rules do not read the prompt: a prompt change leaves them be.
    assert role_version("genericizer", Settings()) == f"genericizer:{genericizer.RULES_VERSION}"


def tiny_model(folder, **config) -> TransformersEngine:
    """A random two-layer Llama with the real Llama-3 tokenizer, saved in `folder` (`config`
    overrides its LlamaConfig), behind a CPU transformers engine."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(load_training_tokenizer().source)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **config,
        )
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return TransformersEngine(
        EngineConfig(engine="transformers", model=str(folder), home=str(folder), device="cpu")
    )


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory):
    """A random tiny model: what it writes is noise, so any structure in its output comes from
    the grammar."""
    return tiny_model(tmp_path_factory.mktemp("tiny"))


def answers(engine, prompts, max_new_tokens, output_format):
    requests = [Request(prompt=p, output_format=output_format) for p in prompts]
    chunks = engine.generate(requests, max_new_tokens)
    found = dict(pair for chunk in chunks for pair in chunk)
    return [found[i] for i in range(len(prompts))]


def test_xgrammar_holds_a_random_model_to_a_regex_and_a_json_schema(tiny_engine):
    prompts = ["Rate this answer:", "A longer prompt, so the batch is left-padded, then rate:"]
    free = answers(tiny_engine, prompts, 8, None)
    assert not any(re.fullmatch(r"<score>[1-5]</score>", g.text) for g in free)

    scored = answers(tiny_engine, prompts, 16, OutputFormat(regex=r"<score>[1-5]</score>"))
    assert all(re.fullmatch(r"<score>[1-5]</score>", g.text) for g in scored), scored
    schema = {
        "type": "object",
        "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 5}},
        "required": ["score"],
        "additionalProperties": False,
    }
    for generation in answers(tiny_engine, prompts, 24, OutputFormat(json_schema=schema)):
        assert 1 <= json.loads(generation.text)["score"] <= 5
        assert generation.prompt_tokens > 3 and 0 < generation.completion_tokens <= 24


def test_the_role_formats_compile_for_a_real_tokenizer(tiny_engine):
    item = {"query": "What did Nikola Tesla invent in 1891?"}
    for role in (genericizer.ROLE, instantiator.ROLE, judge.ROLE):
        assert tiny_engine._grammar(role.output_format(item)) is not None
    # The released instantiator and templatizer do not say their keys: they decode freely.
    assert not instantiator.ROLE.constrained(instantiator.RELEASED_INSTANTIATOR)
    assert not genericizer.ROLE.constrained(genericizer.RELEASED_TEMPLATIZER)
    assert genericizer.ROLE.constrained("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert judge.ROLE.constrained(judge.FLOW_JUDGE)


def test_a_template_is_held_to_its_query_and_the_json_closes(tiny_engine):
    """A random model never ends a string by itself: the bound made from the query's length
    makes it close the template and the JSON within its budget."""
    query = "Who painted the Sistine Chapel?"
    output_format = genericizer.ROLE.output_format({"query": query})
    (output,) = answers(tiny_engine, ["Template:"], 250, output_format)
    found = genericizer.parse_output(output.text)
    assert 1 <= len(found.template) <= genericizer.max_template_chars(query) == 256
    assert 10 <= len(found.compatible_document_description) <= 400


def test_a_servers_odd_answers_become_rejects_with_reasons_and_neighbours_stay():
    chat = SimpleNamespace(
        choices=[SimpleNamespace(message=SimpleNamespace(content='{"template": "How'))]
    )
    empty = SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=None))])
    good = json.dumps(
        {
            "template": "What did <fi>a person</fi> invent?",
            "compatible_document_description": "A biography of an inventor.",
        }
    )
    outputs = [
        _answer_text(chat),
        _answer_text(empty),
        _answer_text("<html>502 Bad Gateway</html>"),
        good,
    ]
    queries = [
        {"query_id": str(i), "query": f"What did Tesla invent {i}?", "source": "s", "line": i}
        for i in range(4)
    ]
    kept, rejects = collect_templates(queries, outputs, "openai", "m")
    assert [row["query_id"] for row in kept] == ["3"]
    assert [r["reason"] for r in rejects] == ["invalid_json", "no_json", "no_json"]
    assert "502 Bad Gateway" in rejects[2]["detail"]


def test_a_hosted_benchmark_judge_has_its_own_url_and_key(monkeypatch, tmp_path):
    monkeypatch.setenv("FI_HOME", str(tmp_path))
    monkeypatch.setenv("FI_EVAL_JUDGE_ENGINE", "openai")
    monkeypatch.setenv("FI_EVAL_JUDGE_MODEL", "gpt-5-mini")
    monkeypatch.setenv("FI_EVAL_JUDGE_BASE_URL", "https://api.openai.com/v1")
    settings = Settings()  # no FI_OPENAI_BASE_URL needed: no other role is on openai
    judge_resource = role_resource(BenchmarkJudge, settings)
    assert judge_resource.openai_base_url == "https://api.openai.com/v1"
    assert judge_resource.openai_api_key_env == "FI_EVAL_JUDGE_API_KEY"
    assert role_resource(Judge, settings).openai_api_key_env == "FI_OPENAI_API_KEY"


def test_a_vllm_candidate_and_judge_share_the_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("FI_HOME", str(tmp_path))
    monkeypatch.setenv("FI_EVAL_ENGINE", "vllm")
    monkeypatch.setenv("FI_EVAL_JUDGE_ENGINE", "vllm")
    settings = Settings()
    shares = [
        role_resource(BenchmarkJudge, settings).vllm_gpu_memory_share,
        role_resource(Candidate, settings, model="ckpt").vllm_gpu_memory_share,
    ]
    assert shares == [0.45, 0.45]
    assert role_resource(Judge, settings).vllm_gpu_memory_share == 0.9


def test_a_long_query_gets_a_budget_that_holds_its_restatement(tiny_engine):
    """The genericizer restates its query: a 723-character query needs ~233 tokens, over the
    role's 256 with its description, and a 4,000-character one far more. Such a query's request
    carries its own budget, keyed with it, and the engine generates it in a group of that
    budget; a short query keeps the engine's budget and its key."""
    short, long = "Who painted the Sistine Chapel?", "Explain this contract clause. " * 120
    assert genericizer.output_budget({"query": short}, 256) == 256
    assert genericizer.output_budget({"query": "x" * 723}, 256) == 512
    assert genericizer.output_budget({"query": long}, 256) == 2048
    engine = TransformersEngine(tiny_engine.config.model_copy(update={"max_new_tokens": 8}))
    # The role's budget rule on a raw prompt (the random model has no chat template).
    role = dataclasses.replace(
        genericizer.ROLE,
        request=lambda item, _model: Request(prompt=item["query"]),
        output_format=None,
        output_budget=lambda item, base: base + len(item["query"]) // 100,
    )
    prepared = engine.prepare(role, [{"query": short}, {"query": long}])
    assert prepared[0].max_new_tokens is None and prepared[1].max_new_tokens == 8 + 36
    assert prepared[0].key() == Request(prompt=short).key()
    found = dict(pair for chunk in engine.answer(role, prepared) for pair in chunk)
    assert 0 < found[0].completion_tokens <= 8 < found[1].completion_tokens <= 44
    assert engine.params(role)["budget"] == "grows-with-input"


def test_a_prompt_over_the_window_is_refused_and_its_neighbours_answered(tmp_path):
    """A model with a 64-token window and an 8-token budget: a 200-token passage cannot be asked.
    The judge's row is refused before any generation (never cached, so a model with a larger
    window answers it later) and rejected as judge_prompt_too_long; the rows beside it are answered
    and cached. A role that answers from its prompt's end (the candidate) gets the end instead.
    Before, the engine cut every over-long prompt from its start, judging a pair it never saw."""
    small = tiny_model(tmp_path / "small_window", max_position_embeddings=64)
    engine = TransformersEngine(small.config.model_copy(update={"max_new_tokens": 8}))
    long_passage = "The river floods every spring and the town moves uphill. " * 20
    pairs = [
        {"pair_id": f"p{i}", "source": "s", "instruction": "Why?", "answer": answer}
        for i, answer in enumerate(["Floods.", long_passage, "Rain."])
    ]
    # The judge's role on a raw prompt (the random model has no chat template).
    role = dataclasses.replace(
        judge.ROLE,
        request=lambda item, _model: Request(prompt=f"{item['instruction']} {item['answer']}"),
        output_format=None,
    )
    prepared = engine.prepare(role, pairs)
    cache = open_model_call_cache(tmp_path)
    spec = CallSpec("judge", "transformers", "tiny", "test", {})
    keys = [spec.key(engine.key(role, request)) for request in prepared]
    calls = cache.call(spec, keys, prepared, lambda batch: engine.answer(role, batch), 8)

    refused = calls.outputs[1]
    assert isinstance(refused, Refused)
    assert "+ output budget of 8 > the model's context window of 64 tokens" in refused.detail
    assert isinstance(calls.outputs[0], str) and isinstance(calls.outputs[2], str)
    assert (calls.made, calls.refused) == (2, 1)
    assert set(cache.lookup(keys)) == {keys[0], keys[2]}
    rows, rejects = collect_judgements(pairs, calls.outputs, 4, "transformers", "tiny")
    assert ("p1", "judge_prompt_too_long") in [(r["item_id"], r["reason"]) for r in rejects]
    assert "p1" not in {row["pair_id"] for row in rows}
    # A role that reads its prompt's end is answered from the last 64 - 8 tokens.
    keep_end = dataclasses.replace(role, over_long_input="keep_end")
    answered = [
        pair
        for chunk in engine.answer(keep_end, engine.prepare(keep_end, pairs[1:2]))
        for pair in chunk
    ]
    assert len(answered) == 1 and isinstance(answered[0][1], Generation)
    assert answered[0][1].prompt_tokens == 64 - 8
