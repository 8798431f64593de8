"""Stage F's benchmarks: the items each asks, the prompt a trained model sees, and how its answer
is scored.

Scoring is mechanical where the answer can be checked (MixEval multiple-choice letters; MixEval
free-form answers by normalised match against the gold targets) and otherwise by an LLM judge
whose prompt follows the benchmark's own protocol: MixEval's 0-1 correctness against the gold
answers in `[[score]]`, MT-Bench-101's 1-10 rating in `[[rating]]` against the reference turn,
AlpacaEval's head-to-head choice between two outputs (`m` or `M`), turned into a
length-controlled win rate. The benchmark files are the offline copies in `data/eval/` (see its
README for their sources and licenses)."""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from fi_method.corpus.packing import format_pair
from fi_method.roles import Request, Role
from fi_method.text import fold_for_matching

EVAL_DIR = Path(__file__).parents[1] / "data" / "eval"
MIXEVAL_DIR = "mixeval-2024-08-11"
MIXEVAL_SPLITS = {"mixeval": "mixeval", "mixeval_hard": "mixeval-hard"}
MIXEVAL_FILES = {"free_form": "free-form", "multiple_choice": "multiple-choice"}
MT_BENCH_101_FILE = Path("mt-bench-101") / "mtbench101.jsonl"
ALPACA_EVAL_FILE = Path("alpaca-eval") / "gpt4_1106_preview_outputs.json"

HELDOUT_NLL = "heldout_nll"
MIXEVAL, MIXEVAL_HARD, MT_BENCH_101, ALPACA_EVAL = (
    "mixeval",
    "mixeval_hard",
    "mt_bench_101",
    "alpaca_eval",
)
GENERATIVE_BENCHMARKS = (MIXEVAL, MIXEVAL_HARD, MT_BENCH_101, ALPACA_EVAL)
BENCHMARKS = (HELDOUT_NLL, *GENERATIVE_BENCHMARKS)

# Who scored a row of eval_scores.
MECHANICAL = "mechanical"
OBJECTIVE = "objective (no judge)"
NEEDS_LLM_JUDGE = "needs an LLM judge"

JUDGE_PROMPT_VERSION = "benchmark-judge-1"
MODEL_PROMPT_VERSION = "instruction-answer-1"  # model_prompt's format
FREE_FORM, MULTIPLE_CHOICE, OPEN = "free_form", "multiple_choice", "open"
OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class BenchmarkItem:
    """One question of a benchmark, as the model is asked it and as it is scored."""

    benchmark: str
    item_id: str
    kind: str  # free_form, multiple_choice (MixEval) or open (MT-Bench-101, AlpacaEval)
    question: str  # what the model is asked: context, prompt and lettered options
    targets: tuple[str, ...] = ()  # MixEval free-form gold answers
    options: tuple[str, ...] = ()  # MixEval multiple-choice options
    answers: tuple[int, ...] = ()  # MixEval multiple-choice gold option indices
    reference: str = ""  # MT-Bench-101 reference turn, AlpacaEval reference output
    task: str = ""  # MixEval source benchmark or MT-Bench-101 task code
    extra: dict = field(default_factory=dict, compare=False)


def read_mixeval(split: str, kind: str, eval_dir: Path = EVAL_DIR) -> dict[str, dict]:
    """One MixEval file: index -> {problem_type, context, prompt, options?, target,
    benchmark_name}. `split` is mixeval or mixeval_hard, `kind` free_form or multiple_choice."""
    path = eval_dir / MIXEVAL_DIR / MIXEVAL_SPLITS[split] / f"{MIXEVAL_FILES[kind]}.json"
    return json.loads(path.read_text(encoding="utf-8"))


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_mt_bench_101(eval_dir: Path = EVAL_DIR) -> list[dict]:
    """MT-Bench-101's dialogues: {task, id, history: [{user, bot}, ...]}."""
    return read_jsonl(eval_dir / MT_BENCH_101_FILE)


def read_alpaca_eval(eval_dir: Path = EVAL_DIR) -> list[dict]:
    """AlpacaEval's 805 instructions with the reference outputs: {dataset, instruction, output,
    generator}."""
    return json.loads((eval_dir / ALPACA_EVAL_FILE).read_text(encoding="utf-8"))


def mixeval_question(row: dict) -> str:
    """A MixEval item as the model is asked it: the context, the prompt, then either the lettered
    options and a request for the letter, or a request for a short answer (MixEval's formats)."""
    parts = [row["context"]] if row.get("context") else []
    parts.append(row["prompt"].strip())
    if row.get("options"):
        parts.extend(f"{OPTION_LETTERS[i]}. {option}" for i, option in enumerate(row["options"]))
        parts.append("Answer with the option's letter from the given choices directly.")
    else:
        parts.append("Answer the question shortly.")
    return "\n".join(parts)


def load_benchmark(benchmark: str, eval_dir: Path = EVAL_DIR) -> list[BenchmarkItem]:
    """Every item of a generative benchmark, in file order. Item ids: MixEval
    `{kind}/{index}`, MT-Bench-101 the dialogue id (its first turn: the paper runs it
    single-turn), AlpacaEval the row number."""
    if benchmark in MIXEVAL_SPLITS:
        return [
            BenchmarkItem(
                benchmark,
                f"{kind}/{index}",
                kind,
                mixeval_question(row),
                targets=tuple(row["target"]) if kind == FREE_FORM else (),
                options=tuple(row.get("options") or ()),
                answers=tuple(row["target"]) if kind == MULTIPLE_CHOICE else (),
                task=row["benchmark_name"],
                extra={"prompt": row["prompt"]},
            )
            for kind in MIXEVAL_FILES
            for index, row in read_mixeval(benchmark, kind, eval_dir).items()
        ]
    if benchmark == MT_BENCH_101:
        return [
            BenchmarkItem(
                benchmark,
                str(dialogue["id"]),
                OPEN,
                dialogue["history"][0]["user"],
                reference=dialogue["history"][0]["bot"],
                task=dialogue["task"],
            )
            for dialogue in read_mt_bench_101(eval_dir)
        ]
    if benchmark == ALPACA_EVAL:
        return [
            BenchmarkItem(
                benchmark,
                str(index),
                OPEN,
                row["instruction"],
                reference=row["output"],
                task=row["dataset"],
            )
            for index, row in enumerate(read_alpaca_eval(eval_dir))
        ]
    raise ValueError(f"unknown benchmark {benchmark!r}; known: {', '.join(GENERATIVE_BENCHMARKS)}")


def select_items(items: list[BenchmarkItem], per_kind: int, seed: int) -> list[BenchmarkItem]:
    """A seeded sample of `per_kind` items of each kind (0: all), in file order, so MixEval keeps
    both its free-form and its multiple-choice half."""
    if per_kind <= 0:
        return list(items)
    chosen: list[BenchmarkItem] = []
    for kind in dict.fromkeys(item.kind for item in items):
        of_kind = [item for item in items if item.kind == kind]
        if len(of_kind) <= per_kind:
            chosen.extend(of_kind)
            continue
        picked = sorted(random.Random(f"{seed}:{kind}").sample(range(len(of_kind)), per_kind))
        chosen.extend(of_kind[i] for i in picked)
    return chosen


def model_prompt(question: str) -> str:
    """What a trained model is asked: the paper's training format up to the answer, the same for
    every recipe (METHOD.md stage F)."""
    return format_pair(question, "").rstrip()


def clean_response(text: str) -> str:
    """The answer a pre-trained model gave: its output up to where it starts a new pair."""
    return re.split(r"\n\s*Instruction:", text, maxsplit=1)[0].strip()


def normalize_answer(text: str) -> str:
    """Lower case, accents, punctuation and the articles a/an/the removed, spaces collapsed (the
    SQuAD normalisation, on top of the matching fold used everywhere else)."""
    return " ".join(w for w in fold_for_matching(text).split() if w not in {"a", "an", "the"})


def _first_line(text: str) -> str:
    return next((line for line in text.strip().splitlines() if line.strip()), "")


def score_free_form(response: str, targets: tuple[str, ...]) -> float:
    """1.0 when the answer's first line, or its first sentence, equals a gold target after
    normalisation; else 0.0. Strict on purpose: a paraphrase needs the LLM judge."""
    line = _first_line(response)
    candidates = {normalize_answer(line), normalize_answer(re.split(r"(?<=[.!?])\s", line)[0])}
    gold = {normalize_answer(target) for target in targets}
    return 1.0 if candidates & (gold - {""}) else 0.0


_LETTER = re.compile(
    r"^\s*(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)?\s*(?:is|:)?\s*"
    r"[\(\[]?([A-Z])(?:[\)\]\.:,]|\s|$)",
    re.IGNORECASE,
)


def parse_choice(response: str, options: tuple[str, ...]) -> int | None:
    """The option a multiple-choice answer picks: a leading letter ("B", "(B)", "B.", "Answer:
    B", "The answer is B") within the options, or else the one option whose text the first line
    equals after normalisation. None when neither."""
    line = _first_line(response)
    match = _LETTER.match(line)
    if match:
        letter = match.group(1).upper()
        # A lower-case one-letter word ("a") is an article, not an option, unless it stands alone.
        if (match.group(1).isupper() or line.strip().strip("().").lower() == match.group(1)) and (
            OPTION_LETTERS.index(letter) < len(options)
        ):
            return OPTION_LETTERS.index(letter)
    said = normalize_answer(line)
    equal = [i for i, option in enumerate(options) if normalize_answer(option) == said]
    return equal[0] if len(equal) == 1 else None


def score_multiple_choice(response: str, item: BenchmarkItem) -> float:
    """1.0 when the picked option is a gold one; an answer that picks none scores 0."""
    return 1.0 if parse_choice(response, item.options) in item.answers else 0.0


_DOUBLE_BRACKETS = re.compile(r"\[\[\s*([0-9]+(?:\.[0-9]+)?)\s*\]\]")


def parse_bracketed_score(output: str, low: float, high: float) -> float | None:
    """The last `[[x]]` number of a judge's output within [low, high]; None when there is none
    (MixEval and MT-Bench-101 both ask for this format)."""
    found = [float(m) for m in _DOUBLE_BRACKETS.findall(output)]
    found = [value for value in found if low <= value <= high]
    return found[-1] if found else None


def mixeval_judge_messages(item: BenchmarkItem, response: str) -> list[dict[str, str]]:
    """MixEval's free-form judging: correctness against the gold answers, without the context,
    on 0.0-1.0 in steps of 0.1, reasoning first, then `[[score]]`."""
    gold = "\n".join(f"<answer {i}> {target}" for i, target in enumerate(item.targets, start=1))
    return [
        {"role": "system", "content": "In this task, you act as a judge."},
        {
            "role": "user",
            "content": (
                "You will see a question, its golden answer(s) and a model's answer; the "
                "question's context is not shown. Judge how correct the model's answer is with "
                "respect to the golden answer(s). First reason briefly about how the answer "
                "agrees with or contradicts them, then give a correctness score, one of 0.0 "
                "(totally wrong), 0.1, 0.2, ..., 0.9, 1.0 (totally right), written exactly as "
                '"[[score]]", for example "The correctness score: [[0.5]]".\n\n'
                f"Question: {item.extra.get('prompt', item.question)}\n"
                f"Golden Answer(s): {gold}\n"
                f"Model's Answer: {response}\n"
                "Your Judgment:"
            ),
        },
    ]


def mt_bench_101_judge_messages(item: BenchmarkItem, response: str) -> list[dict[str, str]]:
    """MT-Bench-101's judging, single turn: a 1-10 rating of the answer to the dialogue's first
    user turn, with the dataset's own answer as a reference, then `[[rating]]`."""
    return [
        {
            "role": "system",
            "content": (
                "Please act as an impartial judge following these instructions: you evaluate "
                "the quality of an AI assistant's answer to a user's question. Consider "
                "correctness, helpfulness, relevance and level of detail. A reference answer is "
                "given; use it to check correctness, not as the only acceptable answer. Begin "
                "with a short explanation, then rate the answer from 1 to 10 written exactly as "
                '"[[rating]]", for example "Rating: [[5]]".'
            ),
        },
        {
            "role": "user",
            "content": (
                f"Task category: {item.task}\n\n[Question]\n{item.question}\n\n"
                f"[Reference Answer]\n{item.reference}\n\n[Assistant's Answer]\n{response}"
            ),
        },
    ]


def alpaca_eval_judge_messages(instruction: str, output_m: str, output_big_m: str) -> list[dict]:
    """AlpacaEval 2's head-to-head: which of two outputs, identified as `m` and `M`, better
    follows the instruction; the judge answers with the identifier alone."""
    return [
        {
            "role": "system",
            "content": "You are a highly efficient assistant who evaluates and selects the best "
            "large language model based on the quality of its response to an instruction.",
        },
        {
            "role": "user",
            "content": (
                "Select the output, m or M, that better follows the instruction: more accurate, "
                "helpful and harmless. Answer with the identifier alone, m or M, and nothing "
                "else.\n\n"
                f"## Instruction\n{instruction}\n\n"
                f"## Output m\n{output_m}\n\n## Output M\n{output_big_m}\n\n## Best output:"
            ),
        },
    ]


def parse_preference(output: str) -> str | None:
    """`m` or `M` from a head-to-head judge's output (the first token that is one); None when
    neither is there."""
    match = re.search(r"(?<![A-Za-z])(m|M)(?![A-Za-z])", output.replace("Output", ""))
    return match.group(1) if match else None


def candidate_goes_first(item_id: str, seed: int) -> bool:
    """Which side the candidate is shown on, a seeded coin per item, so that a judge's position
    bias cancels out over the benchmark (AlpacaEval randomises the order too)."""
    return random.Random(f"{seed}:{item_id}").random() < 0.5


def win_rates(
    preferences: list[float], candidate_lengths: list[int], baseline_lengths: list[int]
) -> tuple[float, float]:
    """(win rate, length-controlled win rate), in percent, of a candidate over a baseline.

    `preferences` are 1 (candidate preferred), 0 (baseline preferred) or 0.5. The
    length-controlled rate follows AlpacaEval 2: a logistic model of the preference on an
    intercept and tanh of the standardised length difference is fitted, and the win rate is
    predicted with the length term at zero. AlpacaEval also has an instruction-difficulty term
    fitted across many models; with one candidate it is left out."""
    if not preferences:
        raise ValueError("no preferences to compute a win rate from")
    n = len(preferences)
    raw = 100.0 * sum(preferences) / n
    deltas = [c - b for c, b in zip(candidate_lengths, baseline_lengths, strict=True)]
    mean = sum(deltas) / n
    spread = math.sqrt(sum((d - mean) ** 2 for d in deltas) / n)
    if spread == 0:
        return raw, raw
    features = [math.tanh(d / spread) for d in deltas]
    # Newton's method on the mean cross-entropy, with AlpacaEval's small L2 penalty on the length
    # weight; the intercept is left free. Two parameters: the Hessian is a 2x2 matrix.
    intercept, weight, penalty = 0.0, 0.0, 1e-3
    for _ in range(50):
        grad_a = grad_b = h_aa = h_ab = h_bb = 0.0
        for x, y in zip(features, preferences, strict=True):
            p = 1.0 / (1.0 + math.exp(-(intercept + weight * x)))
            grad_a += (p - y) / n
            grad_b += (p - y) * x / n
            w = p * (1 - p) / n
            h_aa, h_ab, h_bb = h_aa + w, h_ab + w * x, h_bb + w * x * x
        grad_b += penalty * weight
        h_bb += penalty
        det = h_aa * h_bb - h_ab * h_ab
        if det <= 1e-12:
            break
        step_a = (h_bb * grad_a - h_ab * grad_b) / det
        step_b = (h_aa * grad_b - h_ab * grad_a) / det
        # All wins or all losses: the intercept runs off to infinity; stop at a sure answer.
        intercept = max(-20.0, min(20.0, intercept - step_a))
        weight -= step_b
        if abs(step_a) < 1e-9 and abs(step_b) < 1e-9:
            break
    return raw, 100.0 / (1.0 + math.exp(-intercept))


# A trained checkpoint answering benchmark prompts: raw continuations of `Instruction: ...\n\n
# Answer:`, with no chat template, because that is the format it was pre-trained on. The model is
# the checkpoint's export folder; eval_scores adds a hash of its weights to the cache key. A small
# pre-trained model's window (256 tokens for the demo's) is shorter than many benchmark prompts:
# their start is cut, keeping the question's end and the `Answer:` it continues.
CANDIDATE = Role(
    name="candidate",
    prompt_version=MODEL_PROMPT_VERSION,
    default_model="",
    max_new_tokens=64,
    request=lambda item, _model: Request(prompt=model_prompt(item["question"])),
    parse=clean_response,
    over_long_input="keep_end",
)

# The judge of the generative benchmarks: each benchmark's own protocol builds the messages
# (mixeval_judge_messages, mt_bench_101_judge_messages, alpaca_eval_judge_messages), and each
# has its own parser. It has no rules implementation: eval_scores then scores mechanically what
# can be checked and marks the rest as needing an LLM judge.
BENCHMARK_JUDGE = Role(
    name="benchmark_judge",
    prompt_version=JUDGE_PROMPT_VERSION,
    default_model="Qwen/Qwen2.5-7B-Instruct",
    max_new_tokens=512,
    request=lambda item, _model: Request(messages=item["messages"]),
)
