"""What a model role is: everything that decides its outputs, declared once, with no engine in it.

Each role module (genericizer, instantiator, judge, continuations, benchmarks) declares its `Role`:
its name and prompt version, how it asks a model (for the released fine-tune and for any other
chat model), how its output is read, the structure its output must have (used for constrained
decoding where the engine can), its offline `rules` implementation where it has one, and the
settings that change what its step keeps. Engines (fi_resources.engines) take any role; nothing
in them is written per role."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import numpy as np

from fi_method.llm_output import prompt_style_for

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class OutputFormat:
    """The structure a role's output must have: a JSON schema, or a regular expression for
    formats that are not JSON (Flow Judge's `<feedback>...<score>N</score>`). Engines that can
    constrain decoding use it; others generate freely and the parser judges."""

    json_schema: dict | None = None
    regex: str | None = None

    def describe(self) -> dict:
        """The format as plain data, for the cache key."""
        return {"json_schema": self.json_schema} if self.json_schema else {"regex": self.regex}

    def vllm_structured_outputs(self) -> dict:
        """The format as vLLM names it: the fields of its `StructuredOutputsParams`, which are
        also the keys of the `structured_outputs` object its OpenAI-compatible server reads
        (`json` or `regex`; `guided_json` and `guided_regex` before vLLM 0.12). JSON is compact
        (`disable_any_whitespace`), as the transformers engine compiles it with xgrammar
        (`any_whitespace=False`): one grammar on every engine, and no whitespace for a weak
        model to pad its budget with."""
        if self.json_schema:
            return {"json": self.json_schema, "disable_any_whitespace": True}
        return {"regex": self.regex}


@dataclass(frozen=True)
class Request:
    """What a model is asked for one input: chat `messages`, or a raw text `prompt` (a
    pre-trained model without a chat template continues it), and the structure its answer must
    have when decoding is constrained."""

    messages: Messages | None = None
    prompt: str | None = None
    output_format: OutputFormat | None = None
    # This request's own output budget, where its input needs more than the engine's.
    max_new_tokens: int | None = None

    def key(self) -> object:
        """The part of the request that enters the call cache's key."""
        asked = self.messages if self.messages is not None else self.prompt
        key = asked if self.output_format is None else [asked, self.output_format.describe()]
        return key if self.max_new_tokens is None else [key, {"budget": self.max_new_tokens}]


Embed = Callable[[list[str]], np.ndarray]


Value = TypeVar("Value")


class RecentlyUsed(Generic[Value]):
    """Values by text that forget the least recently used once their sizes add up to more than
    `most` (a text's size is `size(text)`, 1 unless given; None: keep all). The one used last
    always stays. `put` never forgets: `forget_beyond_most` does, once the caller is done with
    what it just put."""

    def __init__(self, most: int | None = None, size: Callable[[str], int] = lambda _: 1):
        self.most = most
        self._size = size
        self._values: OrderedDict[str, Value] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    def __contains__(self, text: str) -> bool:
        return text in self._values

    def get(self, text: str) -> Value | None:
        with self._lock:
            value = self._values.get(text)
            if value is not None:
                self._values.move_to_end(text)
            return value

    def put(self, text: str, value: Value) -> None:
        with self._lock:
            if text not in self._values:
                self._total += self._size(text)
            self._values[text] = value
            self._values.move_to_end(text)

    def forget_beyond_most(self) -> None:
        with self._lock:
            while self.most is not None and self._total > self.most and len(self._values) > 1:
                forgotten, _ = self._values.popitem(last=False)
                self._total -= self._size(forgotten)


class MemoizedEmbed:
    """`embed` that computes each distinct text once: the templates matched to one passage share
    its sentences and fillers, and every rank of a batch of documents reads the same fillers.
    `prefetch` embeds many texts in one batched call. With `most`, only the vectors of the
    `most` texts asked for last are kept."""

    def __init__(self, embed: Embed, most: int | None = None):
        self._embed = embed
        self._vectors: RecentlyUsed[np.ndarray] = RecentlyUsed(most)

    def prefetch(self, texts: list[str]) -> None:
        missing = [text for text in dict.fromkeys(texts) if text not in self._vectors]
        if missing:
            for text, vector in zip(missing, self._embed(missing), strict=True):
                self._vectors.put(text, vector)

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.prefetch(texts)
        vectors = np.stack([self._vectors.get(text) for text in texts])
        self._vectors.forget_beyond_most()
        return vectors


@dataclass(frozen=True)
class RulesAids:
    """What a rules implementation may use besides its inputs: the embedder (unit vectors of
    texts) and its name, which decides the vectors."""

    embed: Callable[[list[str]], Any] | None = None
    embedder_model: str = ""


@dataclass(frozen=True)
class Rules:
    """A role's offline implementation: deterministic outputs, in the model's own output format,
    so they pass through the same parser and checks.

    `reads` names every input field the rules read, `optional` those read when an input has them
    (None otherwise). The implementation is handed those fields and no others, and the cache key
    is made of exactly them: a field the rules read is always in the key, one they do not read
    never is, and reading a field left out of `reads` fails (KeyError) instead of keying calls by
    less than what decides them. `implementation` maps a batch of such inputs to outputs.
    With `follows_prompt` the rules implement the prompt's rubric, so a prompt change is a rules
    change too."""

    version: str
    reads: tuple[str, ...]
    implementation: Callable[[list[dict], RulesAids], list[str]]
    optional: tuple[str, ...] = ()
    params: Callable[[RulesAids], dict] = lambda aids: {}
    follows_prompt: bool = False

    def inputs(self, item: dict) -> dict:
        """The fields of `item` the rules read. Raises KeyError naming a field they need that
        `item` lacks."""
        missing = [name for name in self.reads if name not in item]
        if missing:
            raise KeyError(f"the rules read {', '.join(missing)}, which the input lacks")
        return {name: item[name] for name in self.reads} | {
            name: item.get(name) for name in self.optional
        }

    def key(self, item: dict) -> dict:
        """The part of an input that decides its output, for the call cache: what the rules
        read, whole (the cache hashes it), so a long document is keyed by its text itself."""
        return self.inputs(item)

    def answer(self, items: list[dict], aids: RulesAids) -> list[str]:
        """The outputs of `items`, the implementation reading only what `key` holds."""
        return self.implementation([self.inputs(item) for item in items], aids)


@dataclass(frozen=True)
class Role:
    """One model role. `request` builds what a model is asked from one input and the model's
    name (the released fine-tunes get their bare training prompt, other models instructions);
    `parse` reads one output; `output_format` gives, for one input, the structure constrained
    decoding enforces (it may depend on the input: a template is no longer than its query);
    `settings` name the Settings fields that change what the role's step keeps."""

    name: str
    prompt_version: str
    default_model: str
    max_new_tokens: int
    request: Callable[[dict, str], Request]
    parse: Callable[[str], Any] | None = None
    output_format: Callable[[dict], OutputFormat] | None = None
    rules: Rules | None = None
    settings: tuple[str, ...] = field(default=())
    # A released fine-tune whose exact output keys are not documented is left unconstrained:
    # forcing other keys on it would move it off what it was trained to write.
    unconstrained_models: tuple[str, ...] = field(default=())
    # The output budget one input needs, where its output grows with it (the genericizer restates
    # its query): given the input and the engine's budget, a budget at least as large.
    output_budget: Callable[[dict, int], int] | None = None
    # What a model engine does with an input whose prompt and output budget do not fit the
    # model's context window: refuse it (the role's step rejects that row as too long) or, for a
    # role that answers from the end of its prompt, cut the prompt's start.
    over_long_input: Literal["refuse", "keep_end"] = "refuse"

    def constrained(self, model: str) -> bool:
        """Whether `model`'s decoding is held to the role's output structure."""
        if any(prompt_style_for(model, name) == "bare" for name in self.unconstrained_models):
            return False
        return self.output_format is not None

    def version(self, engine: str) -> str:
        """What of the role's code decides its outputs on `engine`: the rules' version for the
        rules engine, the prompt's otherwise."""
        if engine != "rules":
            return f"prompt-{self.prompt_version}"
        if self.rules is None:
            raise ValueError(
                f"the {self.name} role has no rules implementation: pick a model engine"
            )
        if self.rules.follows_prompt:
            return f"{self.rules.version}+prompt-{self.prompt_version}"
        return self.rules.version
