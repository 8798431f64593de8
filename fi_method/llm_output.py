"""What every LLM role shares: reading a JSON object out of free-form model output, the error a
parser raises, the place of a call the model could not take (`Refused`), and telling a released fine-tune (which expects its bare training prompt) from a
general instruction-tuned model (which needs instructions and examples)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

from fi_method.reasons import RejectReason

PromptStyle = Literal["bare", "instructed"]


class OutputParseError(ValueError):
    """A model output that holds nothing usable; `reason` is kept in `rejects`."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Refused:
    """The output of a call that was not answered because its prompt and output budget do not
    fit the model's context window: measured before sending, or said by the server. It stands in
    a role's outputs where the text would be, and is never cached (a model with a larger window
    answers it)."""

    detail: str


def answered_text(output: str | Refused, reason: RejectReason) -> str:
    """The text of one role output, or OutputParseError `reason` (the role's over-long reason)
    where the call was refused."""
    if isinstance(output, Refused):
        raise OutputParseError(reason, output.detail)
    return output


# strict=False lets strings hold raw newlines, which models often emit inside long values.
_JSON_DECODER = json.JSONDecoder(strict=False)


def first_json_object(text: str) -> dict:
    """The first `{` at which a whole JSON object decodes; whatever surrounds it (chatter, code
    fences, a cut-off tail) is ignored. Raises OutputParseError NO_JSON or INVALID_JSON."""
    opening = [match.start() for match in re.finditer(r"\{", text)]
    for start in opening:
        try:
            value, _ = _JSON_DECODER.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    if opening:
        raise OutputParseError(
            RejectReason.INVALID_JSON, f"no complete JSON object in: {text[:200]!r}"
        )
    raise OutputParseError(RejectReason.NO_JSON, f"no JSON object in: {text[:200]!r}")


def string_field(found: dict, *names: str) -> str:
    """The first of `names` present in `found`, which must be a string (whitespace stripped)."""
    for name in names:
        if name in found:
            if not isinstance(found[name], str):
                raise OutputParseError(
                    RejectReason.NOT_A_STRING, f"{name!r} is a {type(found[name]).__name__}"
                )
            return found[name].strip()
    raise OutputParseError(RejectReason.MISSING_FIELD, f"no {names[0]!r} in {sorted(found)}")


def prompt_style_for(model: str, released: str) -> PromptStyle:
    """ "bare" when `model` is the `released` fine-tune (its HF id, or a local path whose last
    component is the released name, any case), else "instructed"."""
    last_component = model.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    return "bare" if last_component.lower() == released.rsplit("/", 1)[-1].lower() else "instructed"
