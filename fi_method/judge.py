"""The judge role, stage D of FineInstructions: an (instruction, answer) pair gets a 1..5 score on
the paper's rubric, in Flow Judge's prompt and output format (`<feedback>` then `<score>`). Here:
the prompt, the parser, and the `rules` judge, which scores grounding, coverage of the instruction
and length/repetition on the same scale and writes the same format."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fi_method.excerpts import MIN_EXCERPT_RATIO, excerpt_ratio
from fi_method.llm_output import OutputParseError
from fi_method.roles import OutputFormat, Request, Role, Rules, RulesAids
from fi_method.rules_genericizer import REQUEST_VERBS, STOPWORDS
from fi_method.text import words

FLOW_JUDGE = "flowaicom/Flow-Judge-v0.1"
# Part of every cache key: change it whenever the prompt changes.
PROMPT_VERSION = "1"
RULES_VERSION = "rules-1"
MIN_JUDGE_SCORE = 4

CRITERIA = (
    "Does the answer address the query directly and completely, without extraneous, vague or "
    "repetitive content?"
)
RUBRIC = (
    "- Score 1: The answer is irrelevant to the query or off-topic.\n"
    "- Score 2: The answer touches the topic of the query but does not address what it asks.\n"
    "- Score 3: The answer partly addresses the query, or addresses it with much extraneous, "
    "vague or repetitive content.\n"
    "- Score 4: The answer addresses the query, with minor omissions or some extraneous "
    "content.\n"
    "- Score 5: The answer addresses the query without extraneous, vague or repetitive content."
)

# Flow Judge's own evaluation prompt: the model was trained on exactly this layout.
_PROMPT = """# GOAL
Your job is to evaluate a task carried out by an AI system powered by a large language model.

You will be provided with the inputs and output of the task, as well as the evaluation criteria and scoring rubric. Your task is to evaluate the output of the AI system based on the evaluation criteria and scoring rubric provided.

# INPUT
Below are the inputs required for performing the task:
<inputs>
<query>
{instruction}
</query>
</inputs>

# OUTPUT
Below is the output of the task:
<output>
{answer}
</output>

# EVALUATION CRITERIA AND SCORING RUBRIC
Here are the evaluation criteria and the rubric that you need to use for evaluating the task:
<evaluation_criteria>
{criteria}
</evaluation_criteria>

<scoring_rubric>
{rubric}
</scoring_rubric>

# INSTRUCTIONS FOR THE EVALUATION
1. Understand the task and criteria: Familiarize yourself with the task to be evaluated. Review the evaluation criteria and scoring rubric to understand the different levels of performance and the descriptions for each score.
2. Review the inputs and output: Look at the inputs provided for the task. Examine the output generated from completing the task.
3. Compare output to score descriptions: Compare the output against the criteria and score descriptions in the scoring rubric. For each criterion,decide which description best matches the output.
4. After comparing the output to the score descriptions, pay attention to the small details that might impact the final score that you assign. Sometimes a small difference can dictate the final score.
5. Write verbal feedback justifying your evaluation that includes a detailed rationale, referring to specific aspects of the output and comparing them to the rubric.
6. Assign a final score based on the scoring rubric.

## FORMAT FOR THE EVALUATION
- Write the verbal feedback inside <feedback> tags without any additional surrounding text.
- Write the numeric score inside <score> tags, without any additional surrounding text and always after the feedback.

Please accurately evaluate the task. Strictly adhere to the evaluation criteria and rubric."""


@dataclass(frozen=True)
class Judgement:
    score: int
    feedback: str


def build_messages(instruction: str, answer: str) -> list[dict]:
    """Flow Judge's single user message for one pair, with the paper's rubric."""
    content = _PROMPT.format(
        instruction=instruction, answer=answer, criteria=CRITERIA, rubric=RUBRIC
    )
    return [{"role": "user", "content": content}]


_FEEDBACK = re.compile(r"<feedback>(.*?)(?:</feedback>|<score>|$)", re.DOTALL)
# An integer right after <score>; a closing tag is optional (outputs get cut off), a decimal is not.
_SCORE = re.compile(r"<score>\s*(\d+)(?![.,]?\d)")


def parse_output(text: str) -> Judgement:
    """The score (an integer 1..5) and feedback of a judge output. Raises OutputParseError
    "no_score" or "score_out_of_range"; a missing `<feedback>` gives empty feedback."""
    found = _SCORE.search(text)
    if found is None:
        raise OutputParseError("no_score", f"no <score> in: {text[-200:]!r}")
    score = int(found.group(1))
    if not 1 <= score <= 5:
        raise OutputParseError("score_out_of_range", f"score {score} is not in 1..5")
    feedback = _FEEDBACK.search(text)
    return Judgement(score, feedback.group(1).strip() if feedback else "")


def format_output(judgement: Judgement) -> str:
    """A judgement written as Flow Judge writes it."""
    return f"<feedback>{judgement.feedback}</feedback>\n<score>{judgement.score}</score>"


# ---------------------------------------------------------------------------------------------
# The rules judge

# Thresholds of the rules judge, each named after the rubric level it separates.
OFF_TOPIC_COVERAGE = 0.15  # below: the answer shares almost no content word with the query (1)
TOUCHES_TOPIC_COVERAGE = 0.3  # below: it touches the topic without addressing the query (2)
ADDRESSED_COVERAGE = 0.5  # below: it addresses the query in part (3); at or above: 3 to 5
MIN_ANSWER_WORDS = 20  # below: too thin to address a query
MAX_ANSWER_WORDS = 400  # above: extraneous content
MAX_REPEATED_TRIGRAMS = 0.2  # above this share of repeated word trigrams: repetitive

_NOT_CONTENT = STOPWORDS | REQUEST_VERBS


def _content_words(text: str) -> set[str]:
    return {w for w in words(text) if len(w) > 2 and w not in _NOT_CONTENT and not w.isdigit()}


def coverage(instruction: str, answer: str) -> float:
    """Share of the instruction's content words (stopwords, request verbs, digits and short
    words aside) that
    the answer uses, matched on their first five letters so that inflections count."""
    wanted = {w[:5] for w in _content_words(instruction)}
    if not wanted:
        return 1.0
    present = {w[:5] for w in _content_words(answer)}
    return len(wanted & present) / len(wanted)


def repetition(answer: str) -> float:
    """Share of the answer's word trigrams that repeat an earlier one."""
    tokens = words(answer)
    trigrams = [tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)]
    return 1 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0


def rules_judge(instruction: str, answer: str, document: str) -> Judgement:
    """Score a pair on the rubric's scale from three measurable properties. Coverage of the
    instruction sets the level: off-topic 1, touching the topic 2, partly addressed 3. An answer
    that addresses the query (covers at least half its content words) starts at 3 and gains a
    point for being grounded in the document (excerpt ratio) and one for a length without
    extraneous or repeated content, reaching 5."""
    covered = coverage(instruction, answer)
    notes = [f"it covers {covered:.0%} of the query's content words"]
    if covered < OFF_TOPIC_COVERAGE:
        return Judgement(1, f"The answer is off-topic: {notes[0]}.")
    if covered < TOUCHES_TOPIC_COVERAGE:
        return Judgement(
            2, f"The answer touches the topic but does not address the query: {notes[0]}."
        )
    if covered < ADDRESSED_COVERAGE:
        return Judgement(3, f"The answer addresses the query only in part: {notes[0]}.")
    score = 3
    grounded = excerpt_ratio(answer, document)
    if grounded >= MIN_EXCERPT_RATIO:
        score += 1
        notes.append(f"{grounded:.0%} of it is taken from the document")
    else:
        notes.append(f"only {grounded:.0%} of it is taken from the document")
    n_words = len(answer.split())
    repeated = repetition(answer)
    if n_words < MIN_ANSWER_WORDS:
        notes.append(f"at {n_words} words it is too thin")
    elif n_words > MAX_ANSWER_WORDS:
        notes.append(f"at {n_words} words it carries extraneous content")
    elif repeated > MAX_REPEATED_TRIGRAMS:
        notes.append(f"{repeated:.0%} of its word trigrams repeat, which is repetitive")
    else:
        score += 1
        notes.append(f"its length ({n_words} words) suits the query and it does not repeat itself")
    return Judgement(score, "The answer addresses the query: " + "; ".join(notes) + ".")


# ---------------------------------------------------------------------------------------------
# The role

# Flow Judge's output format, which its card documents: feedback, then one score on the scale.
OUTPUT_REGEX = r"<feedback>[^<]+</feedback>[ \n]*<score>[ \n]*[1-5][ \n]*</score>"


def _request(item: dict, _model: str) -> Request:
    return Request(messages=build_messages(item["instruction"], item["answer"]))


def _rules_answer(items: list[dict], _aids: RulesAids) -> list[str]:
    return [
        format_output(rules_judge(item["instruction"], item["answer"], item["document"]))
        for item in items
    ]


ROLE = Role(
    name="judge",
    prompt_version=PROMPT_VERSION,
    default_model=FLOW_JUDGE,
    max_new_tokens=512,
    request=_request,
    parse=parse_output,
    output_format=lambda _item: OutputFormat(regex=OUTPUT_REGEX),
    rules=Rules(
        version=RULES_VERSION,
        # A document is named by its id, a hash of its text.
        key=lambda item: {k: item[k] for k in ("instruction", "answer", "doc_id")},
        answer=_rules_answer,
        # The rules judge scores on the prompt's rubric: a new rubric is a new rules judge.
        follows_prompt=True,
    ),
    settings=("min_judge_score",),
)
