"""Decontamination: n-gram overlap between training texts and the evaluation sets, the procedure of
Tulu 3 (Lambert et al., 2024, section 2.2; allenai/open-instruct `decontamination/search.py`).

Procedure:
1. Every text, evaluation or training, is folded with `fold_for_matching` (lower case, accents and
   punctuation removed) and split into words.
2. Each evaluation item is cut into its word n-grams, n = 8 (`TULU3_NGRAM`); the n-grams are
   indexed. An item shorter than n words contributes its whole word sequence as its one n-gram,
   and so does a training text: a short item therefore matches only a training text that is the
   very same words, never one that merely contains them ("What happens next?" is a whole MixEval
   item and a phrase of countless queries).
3. A training text is contaminated by an evaluation item when the n-grams they share cover at
   least half (`TULU3_MIN_COVERAGE`) of the item's words. Coverage is measured on the item, so a
   long query that quotes a whole benchmark question is caught, while one stray 8-gram shared
   with a long item is not. Tulu 3 flags scores strictly above its threshold; we count the
   threshold itself as contaminated.

The evaluation sets are the offline copies in `data/eval/` (see its README): MixEval and
MixEval-Hard 2024-08-11 (prompts, and their context passages as items of their own), MT-Bench-101
(every user turn), AlpacaEval (the instructions) and MT-Bench (every turn).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fi_method.evaluation.benchmarks import (
    EVAL_DIR,
    MIXEVAL_FILES,
    MIXEVAL_SPLITS,
    read_alpaca_eval,
    read_jsonl,
    read_mixeval,
    read_mt_bench_101,
)
from fi_method.text import fold_for_matching

TULU3_NGRAM = 8
TULU3_MIN_COVERAGE = 0.5


@dataclass(frozen=True)
class EvalItem:
    """One evaluation text: a prompt, a context passage or a user turn."""

    benchmark: str
    item_id: str
    text: str


@dataclass(frozen=True)
class Contamination:
    """The evaluation item a training text overlaps, and the share of the item's words covered."""

    benchmark: str
    item_id: str
    coverage: float


def _mixeval_items(eval_dir: Path) -> list[EvalItem]:
    items = []
    for benchmark in MIXEVAL_SPLITS:
        for kind, problem_file in MIXEVAL_FILES.items():
            for index, row in read_mixeval(benchmark, kind, eval_dir).items():
                item_id = f"{problem_file}/{index}"
                items.append(EvalItem(benchmark, item_id, row["prompt"]))
                if row.get("context"):
                    items.append(EvalItem(benchmark, f"{item_id}/context", row["context"]))
    return items


def _mt_bench_101_items(eval_dir: Path) -> list[EvalItem]:
    return [
        EvalItem("mt_bench_101", f"{dialogue['id']}/turn{turn}", exchange["user"])
        for dialogue in read_mt_bench_101(eval_dir)
        for turn, exchange in enumerate(dialogue["history"], start=1)
    ]


def _alpaca_eval_items(eval_dir: Path) -> list[EvalItem]:
    return [
        EvalItem("alpaca_eval", str(index), row["instruction"])
        for index, row in enumerate(read_alpaca_eval(eval_dir))
    ]


def _mt_bench_items(eval_dir: Path) -> list[EvalItem]:
    return [
        EvalItem("mt_bench", f"{question['question_id']}/turn{turn}", text)
        for question in read_jsonl(eval_dir / "mt-bench" / "question.jsonl")
        for turn, text in enumerate(question["turns"], start=1)
    ]


def load_eval_items(eval_dir: Path | None = None) -> list[EvalItem]:
    """Every evaluation text shipped in `eval_dir` (default: the package's `data/eval/`), in the
    order mixeval, mixeval_hard, mt_bench_101, alpaca_eval, mt_bench. Item ids: MixEval
    `{problem type}/{index}` (plus `/context` for its passage), MT-Bench-101 `{id}/turn{k}`,
    AlpacaEval the row number, MT-Bench `{question_id}/turn{k}`."""
    eval_dir = EVAL_DIR if eval_dir is None else eval_dir
    return [
        *_mixeval_items(eval_dir),
        *_mt_bench_101_items(eval_dir),
        *_alpaca_eval_items(eval_dir),
        *_mt_bench_items(eval_dir),
    ]


def _ngram_keys(words: list[str], n: int) -> list[int]:
    if len(words) < n:
        return [hash(tuple(words))]
    return [hash(tuple(words[start : start + n])) for start in range(len(words) - n + 1)]


class NGramIndex:
    """Evaluation items indexed by their word n-grams (hashed), for the Tulu 3 overlap test."""

    def __init__(
        self,
        items: Iterable[EvalItem],
        n: int = TULU3_NGRAM,
        min_coverage: float = TULU3_MIN_COVERAGE,
    ) -> None:
        self.n = n
        self.min_coverage = min_coverage
        self.items: list[EvalItem] = []
        self._item_ngrams: list[list[int]] = []
        self._item_lengths: list[int] = []
        self._postings: dict[int, list[int]] = {}
        for item in items:
            words = fold_for_matching(item.text).split()
            if not words:
                continue
            position = len(self.items)
            keys = _ngram_keys(words, n)
            self.items.append(item)
            self._item_ngrams.append(keys)
            self._item_lengths.append(len(words))
            for key in set(keys):
                self._postings.setdefault(key, []).append(position)

    def __len__(self) -> int:
        return len(self.items)

    def _coverage(self, position: int, text_keys: set[int]) -> float:
        length = self._item_lengths[position]
        span = min(self.n, length)
        covered = 0
        covered_until = 0
        # Shared n-grams overlap one another; count each covered word once.
        for start, key in enumerate(self._item_ngrams[position]):
            if key in text_keys:
                covered += start + span - max(start, covered_until)
                covered_until = start + span
        return covered / length

    def match(self, text: str) -> Contamination | None:
        """The evaluation item that `text` covers best, if it covers at least `min_coverage` of
        it; ties go to the item loaded first. None when the text is clean."""
        words = fold_for_matching(text).split()
        if not words:
            return None
        text_keys = set(_ngram_keys(words, self.n))
        candidates = {position for key in text_keys for position in self._postings.get(key, ())}
        best_position, best_coverage = -1, 0.0
        for position in sorted(candidates):
            coverage = self._coverage(position, text_keys)
            if coverage > best_coverage:
                best_position, best_coverage = position, coverage
        if best_position < 0 or best_coverage < self.min_coverage:
            return None
        item = self.items[best_position]
        return Contamination(item.benchmark, item.item_id, best_coverage)


@functools.cache
def default_index() -> NGramIndex:
    """The index over every shipped evaluation set with the Tulu 3 settings, built once."""
    return NGramIndex(load_eval_items())
