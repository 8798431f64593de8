"""A labelled set to calibrate the judge on: real (instruction, answer) pairs from the evaluation
sets shipped in `data/eval/` as positives, and negatives made from them the ways the pipeline goes
wrong, with the metrics that tell how well a judge separates the two.

Positives are AlpacaEval's instructions with their reference outputs and MT-Bench-101's first user
turns with the assistant's answer. The negatives, each from one real pair:

- swapped: the instruction with another item's answer;
- truncated: the answer cut about halfway, in the middle of a sentence;
- repeated: one sentence of the answer repeated to the answer's length;
- entity_swap: the instruction with one of its specific values (a quoted title, a capitalised
  name, a number, else its rarest word) replaced by one from another instruction that the answer
  does not mention, so that the instruction asks about X while the answer is about Y. This is the
  pipeline's own failure mode: a template's slot filled with a span of the document that the
  answer is not about;
- mismatched: the instruction's rules template (fi_method.templating.rules_genericizer) filled
  with spans of another item's answer, answered by that answer: what the rules instantiator makes
  of a template matched to a passage it does not fit, every slot value in the answer and nothing
  the template asks answered.

Every pair carries the template its instruction is filled from: the rules template of its own
instruction, or the instruction itself when nothing in it becomes a slot (a template without
slots), as the pipeline's judge sees each pair's template.

The judge's third argument is the source document. Here every pair's document is its answer, so
grounding is always satisfied and a judge must tell a good pair from a bad one by the instruction
and the answer alone.

Everything is seeded: the same seed gives the same pairs, split and figures."""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from wordfreq import zipf_frequency

from fi_method.evaluation.benchmarks import ALPACA_EVAL, EVAL_DIR, MT_BENCH_101, load_benchmark
from fi_method.synthesis.rules_instantiator import usable_filler
from fi_method.templating.rules_genericizer import (
    ORDINAL_VARIANTS,
    REQUEST_VERBS,
    STOPWORDS,
    rules_genericize,
    slot_fillers,
)
from fi_method.templating.templates import TemplateError, fill_slots, slot_descriptions
from fi_method.text import sentence_spans, words

POSITIVE = "real"
SWAPPED, TRUNCATED, REPEATED, ENTITY_SWAP = "swapped", "truncated", "repeated", "entity_swap"
MISMATCHED = "mismatched"
NEGATIVE_KINDS = (SWAPPED, TRUNCATED, REPEATED, ENTITY_SWAP, MISMATCHED)
KINDS = (POSITIVE, *NEGATIVE_KINDS)

# MT-Bench-101 tasks whose first assistant turn is by design not an answer to the first user
# turn: self-correction (SC) starts from a wrong answer that the next turn corrects; instruction
# clarification (IC), separating input (SI) and proactive interaction (PI) answer with a question
# back to the user.
NOT_ANSWERS = frozenset({"SC", "IC", "SI", "PI"})

# A few hundred pairs of each kind: enough for the shares to be good to a few points, small
# enough for a test to judge them all in seconds.
PAIRS_PER_KIND = 500
DEFAULT_SEED = 0

# A truncated answer keeps at least this many words, so that it still reads as an answer.
MIN_TRUNCATED_WORDS = 6
# The rarest word of an instruction counts as its specific value only below this Zipf frequency
# (about once per 30,000 words): commoner words ("water", "plan") name no particular thing.
SPECIFIC_ZIPF = 4.5

# Characters of an answer whose spans may fill a mismatched template.
FILLER_SOURCE_CHARS = 800

# Instructions drawn as donors of a replacement value before an entity swap gives up.
DONORS_TRIED = 50

# Words that end a sentence or a clause: a cut right after one is not mid-sentence.
_CLAUSE_END = re.compile(r"[.!?:;,)\]\"'”]$")
_QUOTED = re.compile(r"[\"“]([^\"“”\n]{2,60})[\"”]")
# Runs of capitalised words (with inner "of", "the", "de"...), or numbers.
_NAME = re.compile(r"\b[A-Z][\w'’-]+(?:\s+(?:(?:of|the|de|and|in)\s+)*[A-Z][\w'’-]*)*")
_NUMBER = re.compile(r"\b\d+(?:[.,]\d+)*\b")
_SENTENCE_START = re.compile(r"(?:^|[.!?:\n]\s*)$")
_NOT_NAMES = STOPWORDS | REQUEST_VERBS | {"i'd"}


@dataclass(frozen=True)
class LabelledPair:
    """One pair of the calibration set: its kind (POSITIVE or a negative kind), the real item it
    was made from, and the judge's three inputs."""

    kind: str
    item: str  # benchmark/item_id of the real pair it comes from
    instruction: str
    answer: str
    document: str
    template: str

    @property
    def positive(self) -> bool:
        """Whether the pair is a real one."""
        return self.kind == POSITIVE


def real_pairs(eval_dir: Path = EVAL_DIR) -> list[tuple[str, str, str]]:
    """(item, instruction, answer) of every usable real pair: AlpacaEval's, and MT-Bench-101's
    first turns save the tasks whose first answer is not one (NOT_ANSWERS)."""
    pairs = [
        (f"{item.benchmark}/{item.item_id}", item.question.strip(), item.reference.strip())
        for benchmark in (ALPACA_EVAL, MT_BENCH_101)
        for item in load_benchmark(benchmark, eval_dir)
        if item.task not in NOT_ANSWERS
    ]
    return [(item, q, a) for item, q, a in pairs if q and a]


def truncate(answer: str, rng: random.Random) -> str | None:
    """The answer cut about halfway at a word boundary inside a line, after a word that ends no
    sentence or clause; None when the answer is too short to cut so."""
    tokens = list(re.finditer(r"\S+", answer))
    half = len(tokens) // 2
    candidates = [
        k
        for k in range(MIN_TRUNCATED_WORDS, len(tokens) - 1)
        if not _CLAUSE_END.search(tokens[k - 1].group())
        and "\n" not in answer[tokens[k - 1].end() : tokens[k].start()]
        and tokens[k - 1].group().isalpha()
    ]
    if not candidates:
        return None
    # The nearest candidates to the middle, one drawn among the closest few.
    nearest = sorted(candidates, key=lambda k: abs(k - half))[:3]
    return answer[: tokens[rng.choice(nearest) - 1].end()]


def repeat_sentence(answer: str, rng: random.Random) -> str | None:
    """One sentence of the answer (drawn), repeated until as long as the answer, at least twice;
    None when the answer has a single sentence."""
    sentences = [answer[a:b].strip() for a, b in sentence_spans(answer)]
    sentences = [s for s in sentences if len(s.split()) >= 4]
    if len(sentences) < 2:
        return None
    sentence = rng.choice(sentences)
    copies = max(2, round(len(answer.split()) / len(sentence.split())))
    return " ".join([sentence] * copies)


def specific_values(instruction: str) -> list[str]:
    """The instruction's specific values, most specific first: quoted titles, capitalised names
    that do not merely start a sentence, numbers; else its rarest word when rare enough."""
    found = [m.group(1).strip() for m in _QUOTED.finditer(instruction)]
    for match in _NAME.finditer(instruction):
        starts_sentence = _SENTENCE_START.search(instruction[: match.start()])
        # A capitalised stopword or request verb ("What", "Explain") is no name, nor is a letter.
        if not starts_sentence and match.group().lower() not in _NOT_NAMES:
            found.append(match.group())
    found += [m.group() for m in _NUMBER.finditer(instruction)]
    if not found:
        rare = sorted(
            (zipf_frequency(w, "en"), w) for w in set(re.findall(r"[A-Za-z]{4,}", instruction))
        )
        if rare and rare[0][0] < SPECIFIC_ZIPF:
            found.append(rare[0][1])
    return list(dict.fromkeys(found))


def _mentions(text: str, value: str) -> bool:
    wanted = words(value)
    tokens = words(text)
    n = len(wanted)
    return bool(wanted) and any(tokens[i : i + n] == wanted for i in range(len(tokens) - n + 1))


def swap_entity(
    instruction: str, answer: str, donors: Sequence[str], rng: random.Random
) -> str | None:
    """The instruction with its most specific value that the answer mentions replaced by a value
    of the same shape (quoted, name, number or word) from a donor instruction that the answer does
    not mention; None when there is no such value or donor."""
    values = [v for v in specific_values(instruction) if _mentions(answer, v)]
    if not values:
        return None
    value = values[0]
    shape = _shape(value, instruction)
    for donor in rng.sample(list(donors), min(len(donors), DONORS_TRIED)):
        for other in specific_values(donor):
            # A value the answer mentions would make the instruction fit the answer still.
            if _shape(other, donor) == shape and not _mentions(answer, other):
                return instruction.replace(value, other, 1)
    return None


@functools.lru_cache(maxsize=4096)
def template_of(instruction: str) -> str:
    """The rules template of an instruction, or the instruction itself when nothing in it is
    specific enough to become a slot."""
    try:
        return rules_genericize(instruction).template
    except TemplateError:
        return instruction


def _kind(description: str) -> str:
    """The kind a slot description names, without the ordinal of "another person"."""
    for ordinal in ORDINAL_VARIANTS:
        if description.startswith(f"{ordinal} "):
            return "a " + description[len(ordinal) + 1 :]
    return description


def fill_from(template: str, answer: str) -> str | None:
    """The template with each slot filled by a span of `answer`
    (fi_method.templating.rules_genericizer's fillers, of the slot's kind where one is left, else
    the next in the answer), as the rules instantiator fills it from its passage; None when the
    template has no slot or the answer offers too few spans."""
    descriptions = list(dict.fromkeys(slot_descriptions(template)))
    # The answer's opening offers spans enough for a template's few slots, and parsing whole
    # answers would make the set several times slower to build.
    opening = answer[:FILLER_SOURCE_CHARS]
    fillers = [(surface, kind) for surface, kind in slot_fillers(opening) if usable_filler(surface)]
    if not descriptions or len(fillers) < len(descriptions):
        return None
    value_of: dict[str, str] = {}
    for description in descriptions:
        left = [f for f in fillers if f[0] not in value_of.values()]
        fitting = [f for f in left if f[1] == _kind(description)]
        value_of[description] = (fitting or left)[0][0]
    return fill_slots(template, value_of)


def _shape(value: str, text: str) -> str:
    if f"“{value}" in text or f'"{value}' in text:
        return "quoted"
    if _NUMBER.fullmatch(value):
        return "number"
    return "name" if value[:1].isupper() else "word"


def calibration_set(
    seed: int = DEFAULT_SEED, per_kind: int = PAIRS_PER_KIND, eval_dir: Path = EVAL_DIR
) -> list[LabelledPair]:
    """`per_kind` pairs of each kind (fewer where too few real pairs allow a kind), each with its
    answer as its document. Every kind walks the same shuffled real pairs, so a real pair and the
    negatives made from it tend to be in the set together: the judge must tell them apart."""
    rng = random.Random(seed)
    real = real_pairs(eval_dir)
    rng.shuffle(real)
    instructions = [q for _, q, _ in real]

    def make(kind: str, index: int) -> tuple[str, str, str] | None:
        _, instruction, answer = real[index]
        if kind == POSITIVE:
            return instruction, answer, template_of(instruction)
        if kind in (SWAPPED, MISMATCHED):
            other = real[(index + rng.randrange(1, len(real))) % len(real)][2]
            if kind == SWAPPED:
                return instruction, other, template_of(instruction)
            template = template_of(instruction)
            filled = fill_from(template, other)
            return (filled, other, template) if filled is not None else None
        if kind == TRUNCATED:
            made = truncate(answer, rng)
        elif kind == REPEATED:
            made = repeat_sentence(answer, rng)
        else:
            swapped = swap_entity(instruction, answer, instructions, rng)
            return (swapped, answer, template_of(swapped)) if swapped is not None else None
        return (instruction, made, template_of(instruction)) if made is not None else None

    pairs: list[LabelledPair] = []
    for kind in KINDS:
        made_here = 0
        for index in range(len(real)):
            if made_here == per_kind:
                break
            made = make(kind, index)
            if made is not None:
                instruction, answer, template = made
                pairs.append(
                    LabelledPair(kind, real[index][0], instruction, answer, answer, template)
                )
                made_here += 1
    return pairs


def split(pairs: Sequence[LabelledPair], seed: int = DEFAULT_SEED):
    """A tuning half and a held-out half, split by the real item a pair comes from (seeded), so
    that no item's variants fall on both sides."""
    items = sorted({p.item for p in pairs})
    random.Random(seed).shuffle(items)
    tuning_items = set(items[: len(items) // 2])
    tuning = [p for p in pairs if p.item in tuning_items]
    heldout = [p for p in pairs if p.item not in tuning_items]
    return tuning, heldout


def roc_auc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random negative,
    ties counting half (the Mann-Whitney U statistic from average ranks)."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    n_pos = sum(positive)
    n_neg = len(positive) - n_pos
    if not n_pos or not n_neg:
        raise ValueError("the AUC needs both positives and negatives")
    rank_sum = sum(r for r, p in zip(ranks, positive, strict=True) if p)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def kept_shares(
    pairs: Sequence[LabelledPair], scores: Sequence[int], min_score: int
) -> dict[str, float]:
    """Per kind, the share of its pairs that score at least `min_score` (kept by the judge), and
    under "negatives" the share over all negatives."""
    shares: dict[str, float] = {}
    groups = {kind: [p.kind == kind for p in pairs] for kind in KINDS}
    groups["negatives"] = [not p.positive for p in pairs]
    for name, members in groups.items():
        chosen = [s for s, m in zip(scores, members, strict=True) if m]
        if chosen:
            shares[name] = sum(s >= min_score for s in chosen) / len(chosen)
    return shares
