"""The judge role, stage D of FineInstructions: an (instruction, answer) pair gets a 1..5 score on
the paper's rubric, in Flow Judge's prompt and output format (`<feedback>` then `<score>`). Here:
the prompt, the parser and the role; its `rules` engine, which scores grounding, coverage of the
instruction and length/repetition on the same scale and writes the same format, is in
`rules_judge`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fi_method.llm_output import OutputParseError
from fi_method.reasons import RejectReason
from fi_method.roles import OutputFormat, Request, Role, Rules, RulesAids

FLOW_JUDGE = "flowaicom/Flow-Judge-v0.1"
# Part of every cache key: change it whenever the prompt changes.
PROMPT_VERSION = "1"
# The rules judge's part of every cache key and of judged_pairs' code version; tests/goldens/
# judge.json holds its verdicts on real pairs, and tests/test_goldens.py fails when they change
# while this does not. rules-3 named a template-reading judge at f1ba620 that was withdrawn.
RULES_VERSION = "rules-21"
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
    NO_SCORE or SCORE_OUT_OF_RANGE; a missing `<feedback>` gives empty feedback."""
    found = _SCORE.search(text)
    if found is None:
        raise OutputParseError(RejectReason.NO_SCORE, f"no <score> in: {text[-200:]!r}")
    score = int(found.group(1))
    if not 1 <= score <= 5:
        raise OutputParseError(RejectReason.SCORE_OUT_OF_RANGE, f"score {score} is not in 1..5")
    feedback = _FEEDBACK.search(text)
    return Judgement(score, feedback.group(1).strip() if feedback else "")


def format_output(judgement: Judgement) -> str:
    """A judgement written as Flow Judge writes it."""
    return f"<feedback>{judgement.feedback}</feedback>\n<score>{judgement.score}</score>"


# ---------------------------------------------------------------------------------------------
# The role

# Flow Judge's output format, which its card documents: feedback, then one score on the scale.
# The feedback may hold "<" (a comparison, a tag it quotes) but no closing tag, which is where
# the feedback ends: grammar engines take no lookahead, so "anything but </feedback>" is written
# as "no </".
OUTPUT_REGEX = r"<feedback>(?:[^<]|<[^/])+</feedback>[ \n]*<score>[ \n]*[1-5][ \n]*</score>"
# Flow Judge's own client's budget: its feedback runs to several hundred tokens, and one cut off
# before <score> is a pair lost as no_score.
MAX_NEW_TOKENS = 1000


def _request(item: dict, _model: str) -> Request:
    return Request(messages=build_messages(item["instruction"], item["answer"]))


def _rules_answer(items: list[dict], _aids: RulesAids) -> list[str]:
    # Imported on first use: the rules judge loads spaCy, which commands that only read settings
    # (`fi sql`) should not wait for.
    from fi_method.synthesis.rules_judge import rules_judge

    return [
        format_output(
            rules_judge(item["instruction"], item["answer"], item["document"], item["template"])
        )
        for item in items
    ]


ROLE = Role(
    name="judge",
    prompt_version=PROMPT_VERSION,
    default_model=FLOW_JUDGE,
    max_new_tokens=MAX_NEW_TOKENS,
    request=_request,
    parse=parse_output,
    output_format=lambda _item: OutputFormat(regex=OUTPUT_REGEX),
    rules=Rules(
        version=RULES_VERSION,
        # Grounding is measured against the document; the template is read when given.
        reads=("instruction", "answer", "document"),
        optional=("template",),
        implementation=_rules_answer,
        # The rules judge scores on the prompt's rubric: a new rubric is a new rules judge.
        follows_prompt=True,
    ),
    settings=("min_judge_score",),
)
