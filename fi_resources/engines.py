"""Engines: any role's inputs in, its outputs out. An engine knows nothing of a particular role:
the role (fi_method.roles.Role) says what to ask and what structure the answer must have.

- `rules`: the role's offline implementation, in-process.
- `transformers`: Hugging Face transformers on CPU or GPU, batched, with the role's output
  structure enforced by xgrammar (grammar-constrained decoding) when `structured_outputs` is on.
- `vllm`: vLLM in-process on a GPU, structure through vLLM's structured outputs.
- `openai`: any OpenAI-compatible server (vllm serve, SGLang, TGI, llama.cpp, Ollama, a hosted
  API), one URL or a fleet, with a concurrency limit, a request-rate cap, retries and token usage.

Adding an engine is a class here and its name in ENGINES; nothing per role changes.

Every engine yields its answers as they come, in chunks of (index, Generation), so the call cache
commits each chunk before the next is asked for: a crash loses only what was in flight. A request
whose prompt and output budget do not fit the model's context window is measured with the model's
tokenizer before it is sent, or told so by the server, and comes back Refused (the role's step
rejects that row as too long, its neighbours go on), or, for a role that reads the end of its
input (Role.over_long_input), is cut from its start."""

from __future__ import annotations

import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from fi_method.llm_output import Refused
from fi_method.roles import OutputFormat, Request, Role, RulesAids

EngineName = Literal["rules", "transformers", "vllm", "openai"]
ENGINES: tuple[str, ...] = EngineName.__args__
RULES_MODEL = "rules"
StructuredMode = Literal["response_format", "vllm", "off"]


@dataclass(frozen=True)
class Generation:
    """One answer and what it cost in tokens (None where the engine does not count)."""

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


Chunk = list[tuple[int, Generation | Refused]]


def fit_to_window(
    token_ids: list[int], window: int | None, max_new_tokens: int, keep_end: bool
) -> list[int] | Refused:
    """A prompt's tokens as they are sent: all of them where they and the output budget fit the
    model's context `window`; else their end (`keep_end`), or Refused with the figures. A model
    whose window is unknown, or no larger than the budget, is given the prompt whole."""
    if not window or window <= max_new_tokens or len(token_ids) + max_new_tokens <= window:
        return token_ids
    room = window - max_new_tokens
    if keep_end:
        return token_ids[-room:]
    return Refused(
        f"prompt of {len(token_ids):,} tokens + output budget of {max_new_tokens:,} > the "
        f"model's context window of {window:,} tokens"
    )


def prompt_token_ids(tokenizer, requests: Sequence[Request]) -> list[list[int]]:
    """The token ids of each request's prompt as the model reads it: chat messages through the
    model's chat template (which writes the BOS itself), raw prompts with the tokenizer's special
    tokens."""
    if all(r.messages is not None for r in requests):
        texts = [
            tokenizer.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True)
            for r in requests
        ]
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    if all(r.prompt is not None for r in requests):
        return tokenizer([r.prompt for r in requests], add_special_tokens=True)["input_ids"]
    raise ValueError("a batch mixes chat and raw requests")


VLLMDtype = Literal["auto", "bfloat16", "float16", "float32"]


class EngineOptions(BaseModel):
    """The engines' options, declared once: `Settings` takes them as FI_* variables and fi.toml
    keys, each role's resource (fi_resources.roles.RoleModel) as its Dagster config, and each
    engine in its EngineConfig, all under these names, so an option added here reaches every
    engine with nothing else to edit. No secret is among them: the openai engine reads its API
    key from the environment."""

    device: str = Field(
        "auto", description="torch device for the transformers engine and embedder."
    )
    max_new_tokens: int | None = Field(
        None,
        ge=16,
        description="Output tokens per model call, every role; default per role: genericizer 256, "
        "instantiator 1024, judge 1000, continuation 1024.",
    )
    structured_outputs: bool = Field(
        True,
        description="Constrain decoding to each role's output structure (JSON schema or "
        "regex) on the engines that can: transformers (xgrammar), vllm, openai.",
    )
    vllm_gpu_memory_share: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="Share of GPU memory a vLLM engine takes; eval gives the candidate and the "
        "judge half each when both are vLLM.",
    )
    vllm_tensor_parallel_size: int = Field(
        1,
        ge=1,
        description="GPUs a vLLM engine shards its model over (tensor parallelism); per role "
        "in vllm_roles.",
    )
    vllm_max_model_len: int | None = Field(
        None,
        ge=256,
        description="Context length a vLLM engine allocates for (prompt and output); default: "
        "the model's. Per role in vllm_roles.",
    )
    vllm_dtype: VLLMDtype = Field(
        "auto",
        description="Weights' and activations' dtype of a vLLM engine; auto: the model's. Per "
        "role in vllm_roles.",
    )
    openai_base_url: str = Field(
        "",
        description="OpenAI-compatible endpoint(s) of the openai engine, e.g. "
        "http://localhost:8000/v1; several, separated by commas, share the requests. The key "
        "is read from FI_OPENAI_API_KEY (never written to config, logs or the cache).",
    )
    openai_max_concurrency: int = Field(8, ge=1, description="openai requests in flight at once.")
    openai_timeout_s: float = Field(600.0, gt=0, description="Seconds per openai request.")
    openai_requests_per_minute: int | None = Field(
        None, ge=1, description="Cap on openai request starts per minute; default: none."
    )
    openai_max_retries: int = Field(
        6,
        ge=0,
        description="Retries of an openai request on 408/409/429/5xx, connection errors and "
        "timeouts, with exponential backoff and jitter.",
    )
    openai_failover_s: float = Field(
        60.0,
        gt=0,
        description="Seconds a server of the openai engine's fleet stays out of the rotation "
        "after it failed a request for good (unreachable, timed out or 5xx after the retries); "
        "its requests go to the others meanwhile.",
    )
    openai_structured: StructuredMode = Field(
        "response_format",
        description="How the openai engine asks for structured output: response_format (JSON "
        "schema; OpenAI, vLLM, SGLang), vllm (vLLM's structured_outputs, regexes too) or off.",
    )

    def engine_options(self) -> dict:
        """This model's values of the engines' options, by name, to hand on whole."""
        return {name: getattr(self, name) for name in EngineOptions.model_fields}


class EngineConfig(EngineOptions):
    """What one engine is given: the engines' options, and what is settled per role (engine,
    model, output budget, batch size). Each engine reads its own part. The API key is not here:
    the openai engine reads it from the environment variable named."""

    model_config = ConfigDict(frozen=True)

    engine: str
    model: str
    home: str
    # None: the transformers engine sizes its batches from the free GPU memory (8 on a CPU); the
    # vllm engine needs a number.
    batch_size: int | None = Field(8, ge=1)
    # The transformers engine decodes over a static KV cache, which generate compiles into CUDA
    # graphs on a GPU. None: on a GPU only, where launching each step's kernels one by one is
    # what bounds decoding (on a CPU generate does not compile).
    static_cache: bool | None = None
    openai_api_key_env: str = "FI_OPENAI_API_KEY"
    aids: RulesAids = Field(default_factory=RulesAids)

    @property
    def models_dir(self) -> Path:
        return Path(self.home).expanduser().resolve() / "models"


class Engine(ABC):
    """Turns a role's inputs into its outputs."""

    name: str

    def __init__(self, config: EngineConfig):
        self.config = config

    @property
    def model(self) -> str:
        return self.config.model

    def version(self, role: Role) -> str:
        """The role's code that decides outputs on this engine (part of the cache key)."""
        return role.version(self.name)

    @abstractmethod
    def params(self, role: Role) -> dict:
        """Besides the input and version, what decides an output (part of the cache key, and
        shown in `model_calls`)."""

    @abstractmethod
    def prepare(self, role: Role, items: Sequence[dict]) -> list:
        """What this engine works from for each of the role's inputs, built once per call."""

    @abstractmethod
    def key(self, role: Role, prepared) -> object:
        """The part of one prepared input that decides its output."""

    @abstractmethod
    def answer(self, role: Role, prepared: Sequence) -> Iterator[Chunk]:
        """Chunks of (index in `prepared`, Generation), as they are answered."""


class ModelEngine(Engine):
    """An engine that asks a model: the role's inputs become Requests, with the role's output
    structure when decoding is constrained."""

    def _constrained(self, role: Role) -> bool:
        return self.config.structured_outputs and role.constrained(self.model)

    def params(self, role: Role) -> dict:
        params = {"max_new_tokens": self.config.max_new_tokens, "decoding": "greedy"}
        if self._constrained(role):
            params["structured"] = self.name
        if role.output_budget is not None:
            # Long inputs get budgets of their own (Request.max_new_tokens).
            params["budget"] = "grows-with-input"
        return params

    def prepare(self, role: Role, items: Sequence[dict]) -> list[Request]:
        constrained = self._constrained(role)
        return [self._request(role, item, constrained) for item in items]

    def _request(self, role: Role, item: dict, constrained: bool) -> Request:
        request = role.request(item, self.model)
        if constrained:
            request = replace(request, output_format=role.output_format(item))
        base = self.config.max_new_tokens
        budget = role.output_budget(item, base) if role.output_budget is not None else base
        return replace(request, max_new_tokens=budget) if budget > base else request

    def key(self, role: Role, prepared: Request) -> object:
        # A request's own structure is in its key.
        return prepared.key()

    def answer(self, role: Role, prepared: Sequence[Request]) -> Iterator[Chunk]:
        """Answers to `prepared`, generated in groups of one output budget each (the engine's,
        or a request's own larger one), with each answer's index in `prepared`."""
        groups: dict[int, list[int]] = {}
        for index, request in enumerate(prepared):
            budget = request.max_new_tokens or self.config.max_new_tokens
            groups.setdefault(budget, []).append(index)
        keep_end = role.over_long_input == "keep_end"
        for budget, indices in sorted(groups.items()):
            for chunk in self.generate([prepared[i] for i in indices], budget, keep_end):
                yield [(indices[row], generation) for row, generation in chunk]

    @abstractmethod
    def generate(
        self, requests: Sequence[Request], max_new_tokens: int, keep_end: bool = False
    ) -> Iterator[Chunk]:
        """Greedy answers to requests, in chunks as they are answered. A request too long for the
        model's window is Refused, or cut from its start when `keep_end` (where the engine
        tokenizes)."""


class RulesEngine(Engine):
    """The role's offline implementation (fi_method), deterministic and CPU-fast."""

    name = "rules"

    @property
    def model(self) -> str:
        return RULES_MODEL

    def _rules(self, role: Role):
        if role.rules is None:
            raise ValueError(
                f"the {role.name} role has no rules implementation: set its engine to "
                "transformers, vllm or openai"
            )
        return role.rules

    def params(self, role: Role) -> dict:
        return self._rules(role).params(self.config.aids)

    def prepare(self, role: Role, items: Sequence[dict]) -> list[dict]:
        self._rules(role)
        return list(items)

    def key(self, role: Role, prepared: dict) -> object:
        return self._rules(role).key(prepared)

    def answer(self, role: Role, prepared: Sequence[dict]) -> Iterator[Chunk]:
        outputs = self._rules(role).answer(list(prepared), self.config.aids)
        yield [(index, Generation(text)) for index, text in enumerate(outputs)]


# Rows per batch on a CPU when the batch size is left to the engine: a CPU gains little from
# wider batches, and each batch is one commit of the call cache.
CPU_BATCH_SIZE = 8
# Past this many rows a decoding step is bound by reading the KV cache, so wider batches add
# little throughput and only delay each commit to the call cache.
MAX_BATCH_SIZE = 1024
# Of the free GPU memory, what the batch may fill: the estimate below leaves out the allocator's
# fragmentation and the CUDA graphs' memory pool.
GPU_MEMORY_SHARE = 0.8


def left_padded(rows: Sequence[Sequence[int]], pad_token_id: int):
    """`input_ids` and `attention_mask` tensors of token id lists padded on the left, as the
    tokenizer pads them for a decoder-only model."""
    import torch

    width = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, ids in enumerate(rows):
        if ids:
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
    return input_ids, attention_mask


def rows_that_fit(free_bytes: int, row_bytes: int) -> int:
    """Rows of `row_bytes` each that GPU_MEMORY_SHARE of `free_bytes` holds, rounded down to a
    power of two (calls with a little more or less memory then share compiled shapes), at least
    1 and at most MAX_BATCH_SIZE."""
    rows = int(free_bytes * GPU_MEMORY_SHARE) // row_bytes
    return min(MAX_BATCH_SIZE, 1 << (max(rows, 1).bit_length() - 1))


def longest_first(lengths: Sequence[int]) -> list[int]:
    """Indices ordered by length, longest first, ties in their original order. Batches cut from
    this order pad each prompt only to its neighbours' length, and the first batch is the
    largest, so running out of memory shows at once and a static KV cache sized for it serves
    every later batch."""
    return sorted(range(len(lengths)), key=lambda index: -lengths[index])


class TransformersEngine(ModelEngine):
    """Greedy, batched generation with Hugging Face transformers on CPU or GPU. Prompts are
    batched by length; on a GPU the decoding step runs compiled over a static KV cache."""

    name = "transformers"
    hf_model = None

    def load(self) -> None:
        """Tokenizer and weights, on the first generation (keys need neither)."""
        if self.hf_model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from fi_resources.embedder import torch_device
        from fi_resources.models import causal_lm_source

        config = self.config
        source = causal_lm_source(config.model, config.models_dir)
        self.device = torch_device(config.device)
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        # Decoder-only models continue from the right end of the prompt: pad on the left.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        # Straight onto the device: no copy of the weights staged in host memory first.
        self.hf_model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, device_map=self.device
        ).eval()
        self._grammars: dict[str, object] = {}
        # generate keeps its static KV cache as long as the longest call's so far, so that a
        # shorter call reuses the compiled step; the batch size estimate has to count it too.
        self._cache_tokens = 0

    @property
    def static_cache(self) -> bool:
        """Whether decoding runs over a static KV cache (after `load`); on a GPU, generate
        then compiles the decoding step."""
        if self.config.static_cache is None:
            return self.device.startswith("cuda")
        return self.config.static_cache

    def _grammar(self, output_format: OutputFormat):
        """The output format compiled for this tokenizer by xgrammar, once per format."""
        import json

        import xgrammar

        key = json.dumps(output_format.describe(), sort_keys=True)
        if key not in self._grammars:
            if not self._grammars:
                info = xgrammar.TokenizerInfo.from_huggingface(
                    self.tokenizer, vocab_size=self.hf_model.config.vocab_size
                )
                self._compiler = xgrammar.GrammarCompiler(info)
            if output_format.json_schema is not None:
                compiled = self._compiler.compile_json_schema(
                    json.dumps(output_format.json_schema), any_whitespace=False
                )
            else:
                compiled = self._compiler.compile_regex(output_format.regex)
            self._grammars[key] = compiled
        return self._grammars[key]

    @property
    def window(self) -> int | None:
        """The model's context window in tokens, from its config (None where it names none)."""
        return getattr(self.hf_model.config, "max_position_embeddings", None)

    def row_bytes(self, prompt_tokens: int, cache_tokens: int) -> int:
        """GPU memory one row of a batch takes: its KV cache (layers x keys and values x KV
        heads x head size per token), one layer's activations while its prompt is read, the
        padding mask, and its logits at each step (the model's dtype, then float32 twice)."""
        config = self.hf_model.config.get_text_config()
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        element = self.hf_model.dtype.itemsize
        # Attention with a padding mask repeats one layer's keys and values to every head.
        per_cache_token = (config.num_hidden_layers * 2 * kv_heads + 2 * heads) * head_dim
        # The residual stream and its float32 norm, the MLP's gate, up and product, the queries.
        per_prompt_token = 4 * config.hidden_size + 3 * config.intermediate_size + heads * head_dim
        logits = config.vocab_size * (element + 8)
        return (
            (per_cache_token * cache_tokens + per_prompt_token * prompt_tokens) * element
            + prompt_tokens**2
            + logits
        )

    def auto_batch_size(self, prompt_tokens: int, max_new_tokens: int) -> int:
        """Rows per batch when the config leaves it to the engine: on a GPU as many as the free
        memory holds for prompts of `prompt_tokens` and answers of `max_new_tokens`, rounded
        down to a power of two, at most MAX_BATCH_SIZE; CPU_BATCH_SIZE on a CPU."""
        if not self.device.startswith("cuda"):
            return CPU_BATCH_SIZE
        import torch

        free, _ = torch.cuda.mem_get_info(self.device)
        # What torch holds from earlier batches is free to the next one too.
        free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        cache_tokens = prompt_tokens + max_new_tokens
        if self.static_cache:
            cache_tokens = max(cache_tokens, self._cache_tokens)
        return rows_that_fit(free, self.row_bytes(prompt_tokens, cache_tokens))

    def _decoding(self, batch_tokens: int, max_new_tokens: int) -> dict:
        """generate's arguments for the decoding step. Over a dynamic cache, decoding launches
        every operation of every layer from Python at each step (about 700 for a 16-layer
        Llama) and the step ends in a host sync, so on a GPU a small batch waits on the host,
        not on the device. Over a static cache generate compiles the step (torch.compile,
        CUDA graphs): one graph replay a step."""
        if not self.static_cache:
            return {}
        self._cache_tokens = max(self._cache_tokens, batch_tokens + max_new_tokens)
        return {"cache_implementation": "static"}

    def generate(self, requests, max_new_tokens, keep_end=False):
        import torch

        if not requests:
            return
        self.load()
        fitted = [
            fit_to_window(ids, self.window, max_new_tokens, keep_end)
            for ids in prompt_token_ids(self.tokenizer, requests)
        ]
        refused = [(i, one) for i, one in enumerate(fitted) if isinstance(one, Refused)]
        if refused:
            yield refused
        token_ids = {i: ids for i, ids in enumerate(fitted) if not isinstance(ids, Refused)}
        if not token_ids:
            return
        indices = list(token_ids)
        order = [indices[i] for i in longest_first([len(token_ids[i]) for i in indices])]
        batch_size = self.config.batch_size or self.auto_batch_size(
            len(token_ids[order[0]]), max_new_tokens
        )
        pad_token_id = self.tokenizer.pad_token_id
        # Compiling under inference mode is slow or fails with changing shapes
        # (pytorch/pytorch#114119, #103132); no_grad is what transformers compiles under.
        context = torch.no_grad if self.static_cache else torch.inference_mode
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            input_ids, attention_mask = left_padded([token_ids[i] for i in rows], pad_token_id)
            input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
            extra = self._decoding(input_ids.shape[1], max_new_tokens)
            if any(requests[i].output_format is not None for i in rows):
                from xgrammar.contrib.hf import LogitsProcessor

                # One processor per generate call, one grammar per row: it keeps their states.
                grammars = [self._grammar(requests[i].output_format) for i in rows]
                extra["logits_processor"] = [LogitsProcessor(grammars)]
            with context():
                generated = self.hf_model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad_token_id,
                    **extra,
                )
            new_tokens = generated[:, input_ids.shape[1] :]
            texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            finished = (new_tokens == pad_token_id) | (new_tokens == self.tokenizer.eos_token_id)
            # Tokens up to and including the first end-of-sequence; the rest is padding.
            first_end = torch.where(
                finished.any(dim=1),
                finished.int().argmax(dim=1) + 1,
                torch.full_like(finished[:, 0], new_tokens.shape[1], dtype=torch.long),
            ).tolist()
            yield [
                (index, Generation(text, len(token_ids[index]), int(first_end[row])))
                for row, (index, text) in enumerate(zip(rows, texts, strict=True))
            ]


class VLLMEngine(ModelEngine):
    """Greedy generation with vLLM (GPU). Needs the GPU install: make install-gpu."""

    name = "vllm"
    llm = None

    def params(self, role: Role) -> dict:
        params = super().params(role)
        if "structured" in params:
            # Compact JSON (OutputFormat.vllm_structured_outputs): outputs of the grammar that
            # allowed any whitespace are not reused.
            params["structured"] = "vllm:compact"
        if self.config.vllm_dtype != "auto":
            params["dtype"] = self.config.vllm_dtype
        return params

    def llm_kwargs(self) -> dict:
        """What `vllm.LLM()` is given: the model, where it downloads, its share of GPU memory,
        and the role's tensor parallelism, context length and dtype."""
        return {
            "model": self.config.model,
            "download_dir": str(self.config.models_dir),
            "gpu_memory_utilization": self.config.vllm_gpu_memory_share,
            "tensor_parallel_size": self.config.vllm_tensor_parallel_size,
            "dtype": self.config.vllm_dtype,
            **(
                {"max_model_len": self.config.vllm_max_model_len}
                if self.config.vllm_max_model_len
                else {}
            ),
        }

    def load(self) -> None:
        """The vLLM engine, on the first generation (keys need none)."""
        if self.llm is not None:
            return
        try:
            from vllm import LLM
        except ImportError as error:
            raise RuntimeError(
                "the vllm engine needs vLLM on a CUDA machine: make install-gpu (the "
                "project with vLLM at the versions of requirements-gpu.lock)"
            ) from error
        self.llm = LLM(**self.llm_kwargs())

    @staticmethod
    def _sampling(request: Request, max_new_tokens: int):
        from vllm import SamplingParams

        structured = {}
        if request.output_format is not None:
            from vllm.sampling_params import StructuredOutputsParams

            structured["structured_outputs"] = StructuredOutputsParams(
                **request.output_format.vllm_structured_outputs()
            )
        return SamplingParams(temperature=0.0, max_tokens=max_new_tokens, **structured)

    def generate(self, requests, max_new_tokens, keep_end=False):
        self.load()
        # Prompts are tokenized here, as the transformers engine does (the chat template, then
        # no added BOS), so that one too long for the window is measured before vLLM sees it:
        # vLLM refuses the whole batch for one prompt longer than max_model_len.
        tokenizer = self.llm.get_tokenizer()
        window = self.llm.llm_engine.model_config.max_model_len
        for start in range(0, len(requests), self.config.batch_size):
            batch = requests[start : start + self.config.batch_size]
            fitted = [
                fit_to_window(ids, window, max_new_tokens, keep_end)
                for ids in prompt_token_ids(tokenizer, batch)
            ]
            rows = [row for row, ids in enumerate(fitted) if not isinstance(ids, Refused)]
            results = (
                self.llm.generate(
                    [{"prompt_token_ids": fitted[row]} for row in rows],
                    [self._sampling(batch[row], max_new_tokens) for row in rows],
                    use_tqdm=True,
                )
                if rows
                else []
            )
            yield [
                (start + row, ids) for row, ids in enumerate(fitted) if isinstance(ids, Refused)
            ] + [
                (
                    start + row,
                    Generation(
                        result.outputs[0].text,
                        len(result.prompt_token_ids or []),
                        len(result.outputs[0].token_ids),
                    ),
                )
                for row, result in zip(rows, results, strict=True)
            ]


def parse_base_urls(value: str) -> list[str]:
    """The URLs of a comma-separated FI_OPENAI_BASE_URL, each checked to be an http(s) URL with
    a host. Raises ValueError naming the bad one."""
    urls = [url.strip() for url in value.split(",") if url.strip()]
    if not urls:
        raise ValueError(
            "FI_OPENAI_BASE_URL is empty: set it to the server's URL, e.g. "
            "http://localhost:8000/v1 (several, separated by commas, spread the requests)"
        )
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"FI_OPENAI_BASE_URL: {url!r} is not an http(s) URL with a host, e.g. "
                "http://localhost:8000/v1"
            )
    return urls


class RequestPacer:
    """At most `per_minute` request starts a minute, spread evenly, across threads."""

    def __init__(self, per_minute: int | None):
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        time.sleep(max(0.0, start - now))


class ServerError(RuntimeError):
    """A request the server never answered, after every retry."""


class ServerDown(ServerError):
    """A server that failed a request in a way another server may not: unreachable, timed out,
    or a 5xx, after the client's retries."""


class Fleet:
    """The servers of FI_OPENAI_BASE_URL and which of them are in the rotation: one that fails a
    request for good is left out for `failover_s` seconds, then tried again. Thread-safe."""

    def __init__(self, urls: list[str], failover_s: float):
        self.urls, self.failover_s = urls, failover_s
        self._down_until = [0.0] * len(urls)
        self._last_error: list[str | None] = [None] * len(urls)
        self._lock = threading.Lock()

    def choose(self, index: int, tried: set[int]) -> int:
        """The server for a request's next try: round-robin by the request's `index` among those
        it has not `tried`, those in the rotation first, else the one back soonest (a server
        out of the rotation may be up again: a request fails only once it has tried every
        server). Raises ServerError naming every server and its last error when none is left."""
        now = time.monotonic()
        with self._lock:
            order = [(index + step) % len(self.urls) for step in range(len(self.urls))]
            untried = [slot for slot in order if slot not in tried]
            live = [slot for slot in untried if self._down_until[slot] <= now]
            if untried:
                return live[0] if live else min(untried, key=self._down_until.__getitem__)
            failures = "; ".join(
                f"{url}: {error or 'out of the rotation'}"
                for url, error in zip(self.urls, self._last_error, strict=True)
            )
        raise ServerError(
            f"every server failed ({failures})"
            if len(self.urls) > 1
            else self._last_error[0] or f"{self.urls[0]} failed"
        )

    def failed(self, slot: int, error: str) -> None:
        """Take server `slot` out of the rotation for `failover_s` seconds."""
        with self._lock:
            self._down_until[slot] = time.monotonic() + self.failover_s
            self._last_error[slot] = error


class OpenAIEngine(ModelEngine):
    """Any OpenAI-compatible endpoint through the `openai` client: requests spread round-robin
    over the URLs of FI_OPENAI_BASE_URL, at most FI_OPENAI_MAX_CONCURRENCY in flight. The client
    retries 408, 409, 429, 5xx, connection errors and timeouts with exponential backoff and
    jitter (honouring Retry-After), FI_OPENAI_MAX_RETRIES times; a server that still fails leaves
    the rotation for FI_OPENAI_FAILOVER_S seconds and the request goes to another (`Fleet`)."""

    name = "openai"

    def __init__(self, config: EngineConfig):
        super().__init__(config)
        self.urls = parse_base_urls(config.openai_base_url)
        self.fleet = Fleet(self.urls, config.openai_failover_s)
        self.pacer = RequestPacer(config.openai_requests_per_minute)
        self.clients: list | None = None

    def load(self) -> None:
        """A client per URL, with the API key, on the first generation (keys need neither)."""
        if self.clients is not None:
            return
        import os

        from openai import OpenAI

        # Local servers take any key; the client insists on one.
        self._api_key = os.environ.get(self.config.openai_api_key_env) or "EMPTY"
        self.clients = [
            OpenAI(
                base_url=url,
                api_key=self._api_key,
                timeout=self.config.openai_timeout_s,
                max_retries=self.config.openai_max_retries,
            )
            for url in self.urls
        ]

    def params(self, role: Role) -> dict:
        params = super().params(role)
        if "structured" in params:
            mode = self.config.openai_structured
            # vLLM's fields ask for compact JSON (OutputFormat.vllm_structured_outputs).
            params["structured"] = f"openai:{mode}" + (":compact" if mode == "vllm" else "")
        return params

    def _structured(self, output_format: OutputFormat | None) -> dict:
        """The request fields that constrain the answer on this kind of server."""
        mode = self.config.openai_structured
        if output_format is None or mode == "off":
            return {}
        if mode == "vllm":
            return {"extra_body": {"structured_outputs": output_format.vllm_structured_outputs()}}
        if output_format.json_schema is None:
            return {}  # the OpenAI API has no regular-expression format
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": output_format.json_schema},
            }
        }

    def _ask(self, index: int, request: Request, max_new_tokens: int) -> Generation | Refused:
        """One request's answer from the first server of the fleet that gives one."""
        tried: set[int] = set()
        while True:
            slot = self.fleet.choose(index, tried)
            try:
                return self._ask_server(slot, request, max_new_tokens)
            except ServerDown as error:
                self.fleet.failed(slot, str(error))
                tried.add(slot)

    def _ask_server(self, slot: int, request: Request, max_new_tokens: int) -> Generation | Refused:
        import openai

        structured = self._structured(request.output_format)
        client, url = self.clients[slot], self.urls[slot]
        self.pacer.wait()
        try:
            if request.messages is not None:
                response = client.chat.completions.create(
                    model=self.model,
                    messages=request.messages,
                    max_tokens=max_new_tokens,
                    temperature=0.0,
                    **structured,
                )
            else:
                response = client.completions.create(
                    model=self.model,
                    prompt=request.prompt,
                    max_tokens=max_new_tokens,
                    temperature=0.0,
                )
        except openai.APIStatusError as error:
            if error.status_code in _CLIENT_ERRORS and _CONTEXT_OVERFLOW.search(
                f"{error.message} {error.body}"
            ):
                # This request does not fit the model's window; the server is fine.
                return Refused(f"{url}: {_error_detail(error)[:300]}")
            kind = ServerDown if error.status_code >= 500 else ServerError
            raise kind(_status_advice(url, self.model, error, self._api_key)) from None
        except openai.APITimeoutError:
            raise ServerDown(
                f"{url} did not answer within {self.config.openai_timeout_s:g} s, "
                f"{self.config.openai_max_retries} retries included: raise FI_OPENAI_TIMEOUT_S "
                "or lower FI_OPENAI_MAX_CONCURRENCY"
            ) from None
        except openai.APIConnectionError as error:
            raise ServerDown(
                f"cannot reach {url} ({error.__cause__ or error}) after "
                f"{self.config.openai_max_retries} retries: is the server up, and is "
                "FI_OPENAI_BASE_URL right?"
            ) from None
        usage = getattr(response, "usage", None)
        return Generation(
            _answer_text(response),
            getattr(usage, "prompt_tokens", None),
            getattr(usage, "completion_tokens", None),
        )

    def generate(self, requests, max_new_tokens, keep_end=False):
        # A server's prompt cannot be cut without its tokenizer: over-long requests are Refused
        # as the server says, keep_end or not.
        self.load()
        concurrency = self.config.openai_max_concurrency
        pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="fi-openai")
        pending = iter(enumerate(requests))
        in_flight: dict = {}
        failure: ServerError | None = None
        try:
            while True:
                # Keep `concurrency` requests in flight until there is nothing left to send.
                while failure is None and len(in_flight) < concurrency:
                    nxt = next(pending, None)
                    if nxt is None:
                        break
                    index, request = nxt
                    future = pool.submit(self._ask, index, request, max_new_tokens)
                    in_flight[future] = index
                if not in_flight:
                    break
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                chunk = []
                for future in done:
                    index = in_flight.pop(future)
                    try:
                        chunk.append((index, future.result()))
                    except ServerError as error:
                        # Stop sending; what is in flight still lands in the cache.
                        failure = failure or error
                if chunk:
                    yield chunk
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if failure is not None:
            raise failure


# What servers answer when a prompt and its output budget do not fit the model's window: vLLM
# and OpenAI ("maximum context length", "longer than the maximum model length",
# context_length_exceeded), llama.cpp ("exceeds the available context size",
# exceed_context_size_error), SGLang ("longer than the model's context length"), TGI ("`inputs`
# tokens + `max_new_tokens` must be <= ...", HTTP 422).
_CONTEXT_OVERFLOW = re.compile(
    r"context length|context size|context window|context_length_exceeded|exceed_context_size"
    r"|maximum model length|max_new_tokens` must be",
    re.IGNORECASE,
)
_CLIENT_ERRORS = (400, 413, 422)


def _answer_text(response) -> str:
    """The text of a completion. A server that answers 200 with something else (an empty body,
    HTML, a proxy's page) gives that body as the text, so the role's parser rejects the row with
    what came back, and its neighbours go on."""
    choices = getattr(response, "choices", None)
    if not choices:
        return response if isinstance(response, str) else ""
    choice = choices[0]
    message = getattr(choice, "message", None)
    text = message.content if message is not None else getattr(choice, "text", None)
    return text or ""


def _error_detail(error) -> str:
    """What a server's error body says: OpenAI's and vLLM's `message`, or the `detail` of a
    FastAPI server (`transformers serve`, request validation), else the client's summary."""
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        said = body.get("message") or body.get("detail")
        if said:
            return str(said)
    return str(getattr(error, "message", "") or "")


def _status_advice(url: str, model: str, error, api_key: str) -> str:
    status = error.status_code
    hint = {
        401: "the server wants an API key: set FI_OPENAI_API_KEY (never written anywhere)",
        403: "the API key may not use this model or endpoint",
        404: f"does this server serve {model!r}? Check the role's FI_*_MODEL and the URL's /v1",
        429: "rate limited even after the retries: lower FI_OPENAI_MAX_CONCURRENCY or set "
        "FI_OPENAI_REQUESTS_PER_MINUTE",
    }.get(status, "see the server's log")
    # The body says what the server objects to; on an authentication error it may quote part of
    # the key, so it is left out there, and the key is cut out of any other.
    detail = "" if status in (401, 403) else _error_detail(error)[:300]
    detail = detail.replace(api_key, "***") if api_key != "EMPTY" else detail
    return f"{url} answered HTTP {status}{': ' + detail if detail else ''} ({hint})"


_CLASSES: dict[str, type[Engine]] = {
    "rules": RulesEngine,
    "transformers": TransformersEngine,
    "vllm": VLLMEngine,
    "openai": OpenAIEngine,
}


def load_engine(config: EngineConfig) -> Engine:
    """The engine `config.engine` names. Nothing heavy loads here: model weights and clients load
    on the first generation, so what the engine would be asked (its params, keys, prepared
    inputs) costs no model."""
    if config.engine not in _CLASSES:
        raise ValueError(f"unknown engine {config.engine!r}; known: {', '.join(ENGINES)}")
    return _CLASSES[config.engine](config)
