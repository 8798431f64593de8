"""The four model roles (genericizer, instantiator, judge, continuation), each on one of three
engines. A role is a prompt and a parser (fi_method); an engine turns prompts into text
(fi_resources.engines, or the `rules` functions in-process). Every call, whatever the engine, goes
through the model-call cache, so nothing is ever computed twice."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from fi_method import benchmarks, continuations, genericizer, instantiator, judge
from fi_method.excerpts import MIN_EXCERPT_RATIO
from fi_method.rules_genericizer import rules_genericize
from fi_method.rules_instantiator import RULES_VERSION as RULES_INSTANTIATOR_VERSION
from fi_method.rules_instantiator import memoized, rules_instantiate
from fi_method.templates import TemplateError
from fi_resources.embedder import torch_device
from fi_resources.model_calls import CallResult, CallSpec, ModelCallCache, open_model_call_cache
from fi_resources.settings import Engine

RULES_MODEL = "rules"
RULES_GENERICIZER_VERSION = "rules-1"
Progress = Callable[[int, int, int], None]
# Who is calling, for the cache's audit columns: (run_id, partition).
Caller = tuple[str | None, str | None]


class RoleModel(ConfigurableResource):
    """One role's engine and model. The model loads once per process, on the first call that
    misses the cache."""

    ROLE: ClassVar[str]

    engine: Engine = Field("rules", description="rules, transformers or vllm")
    model: str = Field(description="HF id or local path (ignored by rules)")
    home: str = Field(description="the data root, FI_HOME: model weights and the call cache")
    device: str = Field("auto")
    batch_size: int = Field(
        8,
        ge=1,
        description="prompts per batch (per generate call for vllm); a batch is cached "
        "as soon as it is answered",
    )
    max_new_tokens: int = Field(256, ge=16)
    model_calls_url: str | None = Field(
        None, description="PostgreSQL URL of the model-call cache; default: SQLite in FI_HOME"
    )

    _backend = PrivateAttr(default=None)

    @property
    def model_name(self) -> str:
        return RULES_MODEL if self.engine == "rules" else self.model

    @property
    def label(self) -> str:
        """engine:model, or just rules."""
        return "rules" if self.engine == "rules" else f"{self.engine}:{self.model}"

    @property
    def cache(self) -> ModelCallCache:
        return open_model_call_cache(Path(self.home), self.model_calls_url)

    def _generator(self):
        if self._backend is None:
            models_dir = Path(self.home).expanduser().resolve() / "models"
            if self.engine == "transformers":
                from fi_resources.engines import TransformersEngine

                self._backend = TransformersEngine(
                    self.model, torch_device(self.device), models_dir, self.batch_size
                )
            else:
                from fi_resources.engines import VLLMEngine

                self._backend = VLLMEngine(self.model, models_dir)
        return self._backend

    def _generate(
        self,
        prompt_version: str,
        conversations: Sequence[list[dict]] | Sequence[str],
        progress: Progress | None,
        caller: Caller,
        raw: bool = False,
        params: dict | None = None,
    ) -> CallResult:
        """Generate through the cache: chat conversations, or with `raw` plain text prompts.
        `params` add to the cache key whatever else decides the output."""
        spec = CallSpec(
            self.ROLE,
            self.engine,
            self.model,
            prompt_version,
            {"max_new_tokens": self.max_new_tokens, "decoding": "greedy", **(params or {})},
        )

        def compute(batch: list) -> list[str]:
            generator = self._generator()
            if raw:
                return generator.complete(batch, self.max_new_tokens)
            return generator.generate(batch, self.max_new_tokens)

        return self.cache.call(
            spec, list(conversations), compute, self.batch_size, progress, *caller
        )

    def _rules(
        self,
        rules_version: str,
        params: dict,
        inputs: Sequence,
        compute: Callable[[list], list[str]],
        progress: Progress | None,
        caller: Caller,
    ) -> CallResult:
        spec = CallSpec(self.ROLE, "rules", RULES_MODEL, rules_version, params)
        return self.cache.call(spec, list(inputs), compute, self.batch_size, progress, *caller)


class Genericizer(RoleModel):
    """Queries -> raw genericizer outputs (JSON `{"template", "compatible_document_description"}`),
    read by fi_method.genericizer.parse_output."""

    ROLE: ClassVar[str] = "genericizer"
    model: str = Field(genericizer.RELEASED_TEMPLATIZER)

    def genericize(
        self, queries: list[str], progress: Progress | None = None, caller: Caller = (None, None)
    ) -> CallResult:
        if self.engine == "rules":
            return self._rules(
                RULES_GENERICIZER_VERSION,
                {},
                queries,
                lambda batch: [_rules_genericizer_output(q) for q in batch],
                progress,
                caller,
            )
        style = genericizer.prompt_style_for(self.model)
        conversations = [genericizer.build_messages(query, style) for query in queries]
        return self._generate(genericizer.PROMPT_VERSION, conversations, progress, caller)


def _rules_genericizer_output(query: str) -> str:
    """The rules genericizer's output in the model's format; a query it cannot genericize comes
    back unchanged, without slots, and is rejected by validation as `no_tags`."""
    try:
        found = rules_genericize(query)
    except TemplateError:
        found = genericizer.GenericizedQuery(query, "")
    return json.dumps(vars(found), ensure_ascii=False)


class Instantiator(RoleModel):
    """(template, document) -> raw instantiator outputs (JSON `{"instruction", "answer"}` or
    `null`), read by fi_method.instantiator.parse_output."""

    ROLE: ClassVar[str] = "instantiator"
    model: str = Field(instantiator.RELEASED_INSTANTIATOR)
    min_excerpt_ratio: float = Field(MIN_EXCERPT_RATIO, ge=0.0, le=1.0)
    max_new_tokens: int = Field(1024, ge=16)

    def instantiate(
        self,
        requests: list[dict],
        embed: Callable[[list[str]], object],
        embedder_model: str,
        progress: Progress | None = None,
        caller: Caller = (None, None),
    ) -> CallResult:
        """`requests`: dicts with `template`, `chunk` (the matched chunk, which the rules engine
        fills and answers from) and `document` (the text a model sees)."""
        if self.engine == "rules":
            inputs = [{"template": r["template"], "chunk": r["chunk"]} for r in requests]
            embed = memoized(embed)
            return self._rules(
                RULES_INSTANTIATOR_VERSION,
                {"embedder": embedder_model},
                inputs,
                lambda batch: [rules_instantiate(i["template"], i["chunk"], embed) for i in batch],
                progress,
                caller,
            )
        style = instantiator.prompt_style_for(self.model)
        conversations = [
            instantiator.build_messages(r["template"], r["document"], style) for r in requests
        ]
        return self._generate(instantiator.PROMPT_VERSION, conversations, progress, caller)


class Judge(RoleModel):
    """(instruction, answer) -> raw judge outputs (`<feedback>...</feedback><score>N</score>`),
    read by fi_method.judge.parse_output."""

    ROLE: ClassVar[str] = "judge"
    model: str = Field(judge.FLOW_JUDGE)
    min_score: int = Field(judge.MIN_JUDGE_SCORE, ge=1, le=5)
    max_new_tokens: int = Field(512, ge=16)

    def judge(
        self,
        pairs: list[dict],
        documents: dict[str, str],
        progress: Progress | None = None,
        caller: Caller = (None, None),
    ) -> CallResult:
        """`pairs`: dicts with `instruction`, `answer` and `doc_id`; `documents`: doc_id -> text
        (the rules judge measures grounding against it)."""
        if self.engine == "rules":
            inputs = [
                {"instruction": p["instruction"], "answer": p["answer"], "doc_id": p["doc_id"]}
                for p in pairs
            ]
            return self._rules(
                judge.RULES_VERSION,
                {},
                inputs,
                lambda batch: [
                    judge.format_output(
                        judge.rules_judge(i["instruction"], i["answer"], documents[i["doc_id"]])
                    )
                    for i in batch
                ],
                progress,
                caller,
            )
        conversations = [judge.build_messages(p["instruction"], p["answer"]) for p in pairs]
        return self._generate(judge.PROMPT_VERSION, conversations, progress, caller)


class Continuer(RoleModel):
    """First halves of documents -> a teacher's continuations. The `rules` engine has no
    teacher: the continuations asset then uses each document's own second half."""

    ROLE: ClassVar[str] = "continuation"
    model: str = Field("Qwen/Qwen2.5-7B-Instruct")
    max_new_tokens: int = Field(1024, ge=16)

    def continue_texts(
        self, prompts: list[str], progress: Progress | None = None, caller: Caller = (None, None)
    ) -> CallResult:
        if self.engine == "rules":
            raise ValueError("the rules engine has no teacher: use each document's second half")
        conversations = [continuations.build_messages(prompt) for prompt in prompts]
        return self._generate(continuations.PROMPT_VERSION, conversations, progress, caller)


class Candidate(RoleModel):
    """A trained checkpoint answering benchmark prompts: raw continuations of `Instruction:
    ...\n\nAnswer:`, with no chat template, because that is the format it was pre-trained on.
    Built per recipe by eval_scores; `weights` (a hash of the weights file) is part of the cache
    key, so a retrained checkpoint in the same folder is asked afresh."""

    ROLE: ClassVar[str] = "candidate"
    engine: Engine = Field("transformers", description="transformers or vllm")
    model: str = Field(description="the checkpoint's Hugging Face export folder")
    weights: str = Field(description="content hash of the checkpoint's weights")

    def answer(
        self, prompts: list[str], progress: Progress | None = None, caller: Caller = (None, None)
    ) -> CallResult:
        if self.engine == "rules":
            raise ValueError("a trained checkpoint answers on transformers or vllm, not rules")
        return self._generate(
            benchmarks.MODEL_PROMPT_VERSION,
            prompts,
            progress,
            caller,
            raw=True,
            params={"weights": self.weights},
        )


class BenchmarkJudge(RoleModel):
    """The judge of stage F's benchmarks (fi_method.benchmarks builds its prompts and parses its
    outputs). The `rules` engine judges nothing: eval_scores then scores mechanically what can be
    checked and marks the rest as needing an LLM judge."""

    ROLE: ClassVar[str] = "benchmark_judge"
    model: str = Field("Qwen/Qwen2.5-7B-Instruct")
    max_new_tokens: int = Field(512, ge=16)

    @property
    def is_llm(self) -> bool:
        return self.engine != "rules"

    def judge(
        self,
        conversations: list[list[dict]],
        progress: Progress | None = None,
        caller: Caller = (None, None),
    ) -> CallResult:
        if not self.is_llm:
            raise ValueError("the rules engine is no LLM judge: configure transformers or vllm")
        return self._generate(benchmarks.JUDGE_PROMPT_VERSION, conversations, progress, caller)
