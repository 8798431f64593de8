"""The `<fi>` template grammar: a template is a query in which spans naming specific entities or
scenarios are replaced by `<fi>short description of what fits here</fi>`. Tags never nest, every
description is non-empty, and a repeated description means a repeated variable."""

from __future__ import annotations

import re

from fi_method.text import fold_for_matching

FI_OPEN = "<fi>"
FI_CLOSE = "</fi>"

_TAG = re.compile(re.escape(FI_OPEN) + "|" + re.escape(FI_CLOSE))


class TemplateError(ValueError):
    """A template that breaks the grammar or says nothing new; `reason` is a short
    machine-readable code kept in the rejects table, the message is for people."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _slots(template: str) -> list[tuple[int, int, str]]:
    """(start, end, description) of each `<fi>...</fi>` in order, the span covering both tags."""
    slots: list[tuple[int, int, str]] = []
    open_at: int | None = None
    for tag in _TAG.finditer(template):
        if tag.group() == FI_OPEN:
            if open_at is not None:
                raise TemplateError("nested_tags", f"{FI_OPEN} inside another at {tag.start()}")
            open_at = tag.start()
            continue
        if open_at is None:
            raise TemplateError("unbalanced_tags", f"{FI_CLOSE} without {FI_OPEN} at {tag.start()}")
        description = template[open_at + len(FI_OPEN) : tag.start()].strip()
        if not description:
            raise TemplateError("empty_slot_description", f"empty slot at {open_at}")
        slots.append((open_at, tag.end(), description))
        open_at = None
    if open_at is not None:
        raise TemplateError("unbalanced_tags", f"{FI_OPEN} at {open_at} is never closed")
    return slots


def slot_descriptions(template: str) -> list[str]:
    """The slot descriptions in order of appearance, repeats included (whitespace stripped).
    Raises TemplateError on unbalanced or nested tags and on an empty description."""
    return [description for _, _, description in _slots(template)]


def fill_slots(template: str, value_of: dict[str, str]) -> str:
    """The template with each slot replaced by the value of its description (stripped), so
    repeated descriptions get one value. Raises KeyError for a description without a value."""
    pieces: list[str] = []
    cursor = 0
    for start, end, description in _slots(template):
        pieces.append(template[cursor:start])
        pieces.append(value_of[description])
        cursor = end
    pieces.append(template[cursor:])
    return "".join(pieces)


def slot_values(template: str, instruction: str) -> dict[str, str] | None:
    """The value each slot description took in an instruction filled from `template` (the
    inverse of fill_slots; case aside, as an article may be lower-cased inside a sentence), or
    None when the instruction does not read as the template filled."""
    slots = _slots(template)
    pattern, cursor = "", 0
    group_of: dict[str, str] = {}
    for start, end, description in slots:
        pattern += re.escape(template[cursor:start])
        if description in group_of:
            pattern += f"(?P={group_of[description]})"
        else:
            group_of[description] = f"v{len(group_of)}"
            pattern += f"(?P<{group_of[description]}>.+?)"
        cursor = end
    pattern += re.escape(template[cursor:])
    found = re.fullmatch(pattern, instruction, re.IGNORECASE | re.DOTALL)
    if found is None:
        return None
    return {description: found.group(group) for description, group in group_of.items()}


def text_before_slot(template: str, description: str) -> str:
    """The template's text before the first slot of `description` (the whole template when it
    has none)."""
    return next(
        (template[:start] for start, _, d in _slots(template) if d == description), template
    )


def fixed_text(template: str) -> str:
    """What the template says itself: its text with every slot replaced by a space."""
    return fill_slots(template, {description: " " for description in slot_descriptions(template)})


def count_tags(template: str) -> int:
    """Number of `<fi>` slots, the template's complexity (repeated variables count each time)."""
    return len(_slots(template))


def _with_descriptions_inline(template: str) -> str:
    """The template read as plain text, each slot replaced by its description."""
    pieces: list[str] = []
    cursor = 0
    for start, end, description in _slots(template):
        pieces.append(template[cursor:start])
        pieces.append(description)
        cursor = end
    pieces.append(template[cursor:])
    return "".join(pieces)


def validate_template(template: str, compatible_document_description: str, query: str) -> None:
    """Raise TemplateError unless the template is well formed (balanced, unnested tags with
    non-empty descriptions), has at least one slot, comes with a non-empty compatible document
    description, and actually genericizes the query.

    "Actually genericizes" is checked one way only: the template read with each slot replaced by
    its description must not fold (case, accents, punctuation) to the query. That catches the
    common degenerate output in which a model wraps the query's own words in tags
    (`<fi>Paris</fi>`) and so abstracts nothing; anything else counts as a rewrite."""
    descriptions = slot_descriptions(template)
    if not descriptions:
        raise TemplateError("no_tags", f"no {FI_OPEN} slot in the template")
    if not compatible_document_description.strip():
        raise TemplateError(
            "empty_document_description", "the compatible document description is empty"
        )
    if fold_for_matching(_with_descriptions_inline(template)) == fold_for_matching(query):
        raise TemplateError("template_equals_query", "the slots only wrap the query's own words")
