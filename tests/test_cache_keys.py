"""A call's cache key is built from what the call reads, never from a hand-picked subset: for every
role, on the rules engine and on a model engine, changing any field the role reads changes the
key, and changing a field it does not read leaves it. The keys are the ones `RoleModel.call`
builds (`cache_keys`), of real inputs: a WebQuestions query, a passage of a Wikipedia article,
a SQuAD 2.0 pair.

Per role and engine, the fields read (each changes the key) / ignored (none changes it):
- genericizer, rules and model: query / query_id, source, line.
- instantiator, rules: template, chunk, anchor, document (all of it) / the matched pair's other
  columns (doc_id, chunk_id, template_id, similarity, vector_index, n_tags, rank), query_id,
  source.
- instantiator, model: template, chunk (it places the window of a long document), document
  within the window / anchor, the document beyond the window, and what the rules ignore.
- judge, rules: instruction, answer, document, template (None when absent) / the instantiated
  pair's other columns (pair_id, doc_id, chunk_id, template_id, query_id, similarity,
  excerpt_ratio, engine, model), source.
- judge, model: instruction, answer / document, template, and what the rules ignore.
- continuation, model: prompt / doc_id.
- candidate, model: question / item_id.
- benchmark_judge, model: messages / item_id.

The rules read exactly the fields their `Rules.reads` and `optional` declare: the implementation is
handed those alone, so one that reads another field fails instead of answering from something
its key does not hold."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from fi_method.roles import Rules, RulesAids
from fi_method.samples import webquestions_questions, wikipedia_articles
from fi_method.synthesis import squad
from fi_method.synthesis.instantiator import MAX_DOCUMENT_CHARS, document_window
from fi_method.text import content_hash
from fi_resources.roles import (
    BenchmarkJudge,
    Candidate,
    Continuer,
    Genericizer,
    Instantiator,
    Judge,
    RoleModel,
    declared_roles,
)
from fi_resources.tables import INSTANTIATED_PAIRS, MATCHED_PAIRS

# Nothing listens there: a model engine's keys are built without asking it anything.
UNREACHABLE_SERVER = "http://127.0.0.1:9/v1"
INSTRUCTED_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
TEMPLATE = "what countries are in <fi>a kind of region</fi>?"
OTHER_TEMPLATE = "what is the climate of <fi>a kind of region</fi>?"


def _changed(value):
    """Another value of the same kind, as an upstream edit would make it."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, list):
        return [*value, {"role": "user", "content": "And why?"}]
    return f"{value} (revised)"


@pytest.fixture(scope="module")
def article() -> dict:
    """Albedo, a real article longer than the window a model reads (MAX_DOCUMENT_CHARS)."""
    found = next(a for a in wikipedia_articles(limit=3) if a["text"].startswith("Albedo\n"))
    assert len(found["text"]) > MAX_DOCUMENT_CHARS
    return found


@pytest.fixture(scope="module")
def items(article) -> dict[str, dict]:
    """One real input per role, with the fields the pipeline passes along beside them."""
    text = article["text"]
    paragraphs = text.split("\n\n")
    query = webquestions_questions()[0]["qText"]
    pair = squad.load_pairs(split=squad.HELD_OUT)[0]
    matched = {
        "doc_id": content_hash(text),
        "chunk_id": content_hash(content_hash(text), paragraphs[3]),
        "template_id": content_hash(TEMPLATE),
        "similarity": 0.41,
        "vector_index": 3,
        "n_tags": 1,
        "rank": 0,
    }
    instantiated = {
        "pair_id": "p1",
        "doc_id": content_hash(pair.paragraph),
        "chunk_id": "c1",
        "template_id": "t1",
        "query_id": "q1",
        "similarity": 0.41,
        "instruction": pair.question,
        "answer": pair.paragraph,
        "excerpt_ratio": 1.0,
        "engine": "rules",
        "model": "rules",
    }
    return {
        "genericizer": {"query": query, "query_id": "q1", "source": "trainmodel.json", "line": 1},
        "instantiator": {
            **matched,
            "query_id": "q1",
            "source": "wiki.jsonl",
            "template": TEMPLATE,
            "chunk": paragraphs[3],
            "anchor": 0.5,
            "document": text,
        },
        "judge": {
            **instantiated,
            "source": "wiki.jsonl",
            "document": pair.paragraph,
            "template": "in what country is <fi>a region</fi> located?",
        },
        "continuation": {"prompt": text[: len(text) // 2], "doc_id": "d1"},
        "candidate": {"question": pair.question, "item_id": "mixeval-1"},
        "benchmark_judge": {
            "messages": [{"role": "user", "content": pair.question}],
            "item_id": "mixeval-1",
        },
    }


def _far_end_changed(item: dict) -> str:
    """The document with its last paragraph revised: beyond the window around an early chunk."""
    head, last = item["document"].rsplit("\n\n", 1)
    return f"{head}\n\n{last} (revised)"


def _late_chunk(item: dict) -> str:
    """A passage near the end of the document, whose window is not the early chunk's."""
    return _late_paragraph(item["document"])


def _another_vector(item: dict) -> float:
    """Where the next local vector of the passage is centred (K = 5)."""
    return item["anchor"] + 1 / 6


def _late_paragraph(document: str) -> str:
    return document.split("\n\n")[-3]


@dataclass(frozen=True)
class Case:
    """What one role reads on one engine: each field that must move the key when it changes,
    and those that must not, each with how to change it (from the whole input) where
    `_changed` of its value would not do."""

    resource: type[RoleModel]
    engine: str
    reads: dict[str, Callable | None]
    ignored: dict[str, Callable | None]


# The columns the assets pass along beside what the roles read (a column added to these tables
# must be added to `items` too).
MATCHED_COLUMNS = (*MATCHED_PAIRS.schema, "query_id", "source")
JUDGE_READS = ("instruction", "answer", "document", "template")
OTHER_PAIR_COLUMNS = tuple(
    name for name in (*INSTANTIATED_PAIRS.schema, "source") if name not in JUDGE_READS
)
CASES = {
    ("genericizer", "rules"): Case(
        Genericizer, "rules", {"query": None}, dict.fromkeys(("query_id", "source", "line"))
    ),
    ("genericizer", "openai"): Case(
        Genericizer, "openai", {"query": None}, dict.fromkeys(("query_id", "source", "line"))
    ),
    ("instantiator", "rules"): Case(
        Instantiator,
        "rules",
        {
            "template": lambda _: OTHER_TEMPLATE,
            "chunk": _late_chunk,
            "anchor": _another_vector,
            # The rules read on into the document around the window too.
            "document": _far_end_changed,
        },
        dict.fromkeys(MATCHED_COLUMNS),
    ),
    ("instantiator", "openai"): Case(
        Instantiator,
        "openai",
        {
            "template": lambda _: OTHER_TEMPLATE,
            # Another chunk of a long document moves the window a model reads.
            "chunk": _late_chunk,
            "document": lambda item: item["document"].replace("Albedo", "Albedo (albedo)", 1),
        },
        {"anchor": _another_vector, "document": _far_end_changed} | dict.fromkeys(MATCHED_COLUMNS),
    ),
    ("judge", "rules"): Case(
        Judge,
        "rules",
        dict.fromkeys(JUDGE_READS),
        dict.fromkeys(OTHER_PAIR_COLUMNS),
    ),
    ("judge", "openai"): Case(
        Judge,
        "openai",
        dict.fromkeys(("instruction", "answer")),
        dict.fromkeys(("document", "template", *OTHER_PAIR_COLUMNS)),
    ),
    ("continuation", "openai"): Case(Continuer, "openai", {"prompt": None}, {"doc_id": None}),
    ("candidate", "openai"): Case(Candidate, "openai", {"question": None}, {"item_id": None}),
    ("benchmark_judge", "openai"): Case(
        BenchmarkJudge, "openai", {"messages": None}, {"item_id": None}
    ),
}


def _with_changed(item: dict, name: str, change: Callable | None) -> dict:
    return {**item, name: change(item) if change else _changed(item[name])}


def _keys(case: Case, items: list[dict], tmp_path) -> list[str]:
    engine = {"engine": case.engine, "home": str(tmp_path)}
    if case.engine != "rules":
        engine |= {"model": INSTRUCTED_MODEL, "openai_base_url": UNREACHABLE_SERVER}
    return case.resource(**engine).cache_keys(items)


@pytest.mark.parametrize("role_engine", list(CASES), ids="/".join)
def test_a_field_changes_the_key_exactly_when_the_role_reads_it(role_engine, items, tmp_path):
    role, engine = role_engine
    case = CASES[role_engine]
    item = items[role]
    read = [_with_changed(item, name, change) for name, change in case.reads.items()]
    ignored = [_with_changed(item, name, change) for name, change in case.ignored.items()]
    base, *keys = _keys(case, [item, *read, *ignored], tmp_path)
    read_keys, ignored_keys = keys[: len(read)], keys[len(read) :]
    unkeyed = [name for name, key in zip(case.reads, read_keys, strict=True) if key == base]
    assert unkeyed == [], f"{role} on {engine} reads {unkeyed}, which its key does not hold"
    keyed = [name for name, key in zip(case.ignored, ignored_keys, strict=True) if key != base]
    assert keyed == [], f"{role} on {engine} does not read {keyed}, which its key holds"


def test_the_far_end_of_a_long_document_is_beyond_the_window_a_model_reads(items):
    """The instantiator's cases rest on this: its last paragraph is outside the window around
    an early passage, inside the one around a late passage."""
    item = items["instantiator"]
    document = item["document"]
    tail = document.rsplit("\n\n", 1)[1]
    assert tail not in document_window(document, item["chunk"])
    assert tail in document_window(document, _late_paragraph(document))


def test_the_table_lists_what_each_role_s_rules_declare():
    """The rules' own declaration, which decides what their implementation is handed, is the
    table's: the test above checks the fields that the rules read."""
    for (role, engine), case in CASES.items():
        rules = declared_roles()[role].rules
        if engine == "rules":
            assert set(rules.reads + rules.optional) == set(case.reads), role
    with_rules = {role for role, found in declared_roles().items() if found.rules is not None}
    assert with_rules == {role for role, engine in CASES if engine == "rules"}
    assert {role for role, _ in CASES} == set(declared_roles())


def test_a_judge_input_without_a_template_is_keyed_apart_from_one_with(items, tmp_path):
    item = items["judge"]
    without = {name: value for name, value in item.items() if name != "template"}
    with_template, without_template = _keys(CASES["judge", "rules"], [item, without], tmp_path)
    assert with_template != without_template


def test_the_rules_are_handed_only_what_their_key_holds(items):
    """A rules implementation that reads a field it does not declare fails at once, instead of
    answering from a field that calls with different answers would share a key over."""
    reads_an_undeclared_field = Rules(
        version="rules-1",
        reads=("query",),
        implementation=lambda batch, _aids: [f"{item['query']} {item['source']}" for item in batch],
    )
    with pytest.raises(KeyError, match="source"):
        reads_an_undeclared_field.answer([items["genericizer"]], RulesAids())
    genericizer = declared_roles()["genericizer"].rules
    assert genericizer.inputs(items["genericizer"]) == {"query": items["genericizer"]["query"]}


def test_an_input_missing_a_field_the_rules_read_is_refused_by_name(items):
    judge = declared_roles()["judge"].rules
    item = {name: value for name, value in items["judge"].items() if name != "document"}
    with pytest.raises(KeyError, match="document"):
        judge.key(item)


def test_the_rules_answer_alike_whatever_else_an_input_holds(items):
    """The real genericizer and judge rules: an input's other fields change no output."""
    for role in ("genericizer", "judge"):
        rules = declared_roles()[role].rules
        item = items[role]
        bare = {name: item[name] for name in rules.reads + rules.optional}
        assert rules.answer([item], RulesAids()) == rules.answer([bare], RulesAids()), role
