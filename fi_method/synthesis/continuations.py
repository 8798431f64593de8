"""Non-instructional fine-tuning data (Xie, Syu, Lee 2024; METHOD.md section 2), "halving and
completion": a document is cut at the sentence boundary nearest its middle, the first half is the
instruction and a teacher model's continuation is the answer. Without a teacher (the `rules`
engine) the answer is the document's own second half: the teacher-free variant."""

from __future__ import annotations

from fi_method.roles import Request, Role
from fi_method.text import sentence_spans

# Part of every cache key: change it whenever the prompt changes.
PROMPT_VERSION = "1"
TEACHER = "teacher"
TEACHER_FREE = "teacher_free"
# About 4k Llama-3 tokens: a teacher sees at most this much of the first half, its end.
MAX_PROMPT_CHARS = 16_000
# continuations' code version: change it whenever `halve` or `teacher_prompt` cut otherwise.
# tests/goldens/halving.json holds their cuts of real articles; tests/test_goldens.py fails when
# they change while this does not.
HALVING_VERSION = "2"

_SYSTEM = (
    "Continue the text the user gives you from exactly where it stops, in the same language, "
    "style and register. Write only the continuation."
)


def halve(document: str) -> tuple[str, str]:
    """(first half, second half) of `document`, cut at the sentence boundary nearest the middle
    character; a document of one sentence is cut at the space nearest its middle. Both halves
    are stripped; either may be empty only when the document has no boundary at all."""
    middle = len(document) / 2
    boundaries = [start for start, _ in sentence_spans(document)[1:]]
    if not boundaries:
        spaces = [i for i, ch in enumerate(document) if ch.isspace()]
        boundaries = spaces or [len(document)]
    cut = min(boundaries, key=lambda at: (abs(at - middle), at))
    return document[:cut].strip(), document[cut:].strip()


def teacher_prompt(first_half: str, max_chars: int = MAX_PROMPT_CHARS) -> str:
    """What a teacher continues: the first half, or its last `max_chars` starting at a sentence
    when it is longer (the continuation depends on the end of the text)."""
    if len(first_half) <= max_chars:
        return first_half
    tail_start = len(first_half) - max_chars
    for start, _ in sentence_spans(first_half):
        if start >= tail_start:
            return first_half[start:]
    return first_half[tail_start:]


def build_messages(prompt: str) -> list[dict]:
    """Chat messages asking an instruction-tuned teacher to continue `prompt`."""
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": prompt}]


# The teacher role. It has no rules implementation: without a teacher, the continuations asset
# uses each document's own second half (TEACHER_FREE).
ROLE = Role(
    name="continuation",
    prompt_version=PROMPT_VERSION,
    default_model="Qwen/Qwen2.5-7B-Instruct",
    max_new_tokens=1024,
    request=lambda item, _model: Request(messages=build_messages(item["prompt"])),
)
