"""Versions that change when outputs change: each piece of logic that decides stored outputs (a
role's rules, a stage's pure logic) is run on a fixed set of real inputs, and its outputs are
hashed and stored with the version constant they were produced under, in tests/goldens/<name>.json
(`version`, the versions of what made its inputs, `outputs_sha256`, one hash per output and the
first outputs for review). A golden fails
- when the outputs changed while the version did not: the cache keys and code versions built
  from that version would keep serving, and leave fresh, what the old logic made. Bump the
  version, then run `FI_UPDATE_GOLDENS=1 .venv/bin/pytest tests/test_goldens.py`;
- when a version changed but its golden was not regenerated (run the same command).
Regenerating refuses to store changed outputs under an unchanged version.

Why outputs and not a hash of the sources: what must be versioned is what a rerun would store. A
comment, a rename or a reformatting changes no output and must re-run nothing, yet would change
a source hash; a change in a shared helper (rules_genericizer's word lists and spans feed the
genericizer, the instantiator and the judge; fi_method.text's sentence splitter feeds chunking,
halving and both rules roles) changes outputs without touching the source of the logic that
uses it, and shows here in every golden whose outputs it moves. The limit: a change that moves
no output of the inputs below goes unseen, so the inputs are chosen to pass through each rule's
branches (templates that fill and each reason for `null`, pairs kept and each reject reason).

Inputs come from data that ships: fi_method.samples' Wikipedia articles, IFBench and WebQuestions
queries, the SQuAD 2.0 pairs of fi_method/data/squad and the MT-Bench questions of
fi_method/data/eval. A stage that reads a role's outputs reads the role's real outputs on these
inputs, and its golden records that role's version too: a new role version asks for the stage's
golden to be regenerated, it does not blame the stage."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pytest

from fi_method.corpus import packing
from fi_method.corpus.decontamination import default_index
from fi_method.corpus.packing import RECIPES, load_training_tokenizer, pack_shard
from fi_method.evaluation.benchmarks import EVAL_DIR, read_jsonl
from fi_method.retrieval.chunking import chunk_document
from fi_method.retrieval.documents import clean_documents
from fi_method.retrieval.matching import TEMPLATES_PER_VECTOR, match_chunks, target_distribution
from fi_method.roles import RulesAids
from fi_method.samples import webquestions_questions, wikipedia_articles
from fi_method.synthesis import continuations, instantiator, judge, rules_judge, squad
from fi_method.synthesis.pairs import collect_judgements, instantiate_by_rank
from fi_method.templating import genericizer
from fi_method.templating.ifbench import ifbench_queries
from fi_method.templating.instruction_templates import collect_templates
from fi_method.templating.queries import filter_queries
from fi_method.templating.rules_genericizer import rules_genericize
from fi_method.templating.templates import TemplateError, count_tags
from fi_method.text import content_hash
from fi_resources.embedder import Embedder
from fi_resources.models import MINILM
from fi_resources.roles import declared_roles

GOLDENS_DIR = Path(__file__).parent / "goldens"
UPDATE_VARIABLE = "FI_UPDATE_GOLDENS"
UPDATE_COMMAND = f"{UPDATE_VARIABLE}=1 .venv/bin/pytest tests/test_goldens.py"
EXAMPLES = 3

# Passages for the instantiator: (document, paragraph, passage vector, rank, template). The
# templates are the rules genericizer's of WebQuestions questions, written out here so that this
# golden moves with the instantiator's rules alone; each paragraph is a passage of its document
# (verbatim text, as a chunk is) and each row fills or gives one of the reasons for `null`.
# Albedo is longer than the window a model reads; Alabama's opening paragraphs stand for a
# shorter document (the whole article would take the rules seconds more to read).
ALABAMA_OPENING_PARAGRAPHS = 20
INSTANTIATED = (
    ("Alabama", 1, 0, 0, "where did <fi>a city or country</fi> originate?"),
    ("Alabama", 1, 2, 0, "where is <fi>a city or country</fi> on map?"),
    ("Alabama", 4, 1, 0, "what is the language they speak in <fi>a city or country</fi>?"),
    ("Alabama", 16, 1, 0, "where did <fi>a city or country</fi> originate?"),
    ("Alabama", 5, 0, 0, "where does <fi>a person</fi> live?"),
    ("Albedo", 3, 0, 0, "what are the <fi>a number</fi> conferences in the nfl?"),
    ("Albedo", 3, 0, 1, "what countries are in <fi>a kind of region</fi>?"),
    ("Albedo", 3, 1, 0, "what does <fi>a kind of border</fi>?"),
    ("Albedo", 4, 0, 0, "what did <fi>a kind of rule</fi>?"),
    ("Albedo", 43, 2, 0, "what countries are in <fi>a kind of region</fi>?"),
    ("Albedo", 0, 0, 0, "who is <fi>a person</fi>?"),
    ("Achilles", 4, 0, 0, "who is in <fi>a person</fi>?"),
    ("Achilles", 4, 0, 1, "who is <fi>a person</fi>?"),
    ("Achilles", 14, 0, 0, "what is the name of <fi>a kind of novel</fi>?"),
    (
        "Achilles",
        3,
        0,
        0,
        "what <fi>a character in a TV series or film</fi> does <fi>a person</fi> play in?",
    ),
    ("Achilles", 3, 1, 0, "what events led to <fi>a kind of downfall</fi>?"),
)
# Templates the rules genericizer makes of three of those SQuAD questions, for the judge's
# reading of a template (by kind and question id).
JUDGE_TEMPLATES = {
    "positive:56ddde6b9a695914005b9629": (
        "When were <fi>a nationality, religion or political group</fi> in <fi>a city or country</fi>?"
    ),
    "other_paragraph:56ddde6b9a695914005b962b": "Who was <fi>a kind of leader</fi>?",
    "unanswerable:5ad39d53604f3c001a3fe8d2": "What is <fi>a city or country</fi> a region of?",
}
JUDGED_PER_KIND = 4
# Real text where a rule acts that the inputs above never reach: a ShareGPT opening user turn
# with a dash set off by spaces (the genericizer's spans end there), and a pair the rules made of
# a ShareGPT answer, asking about the present where the answer names a former leader, and one
# whose answer names what it asks about after an opening sentence.
DASHED_QUERIES = ("Money transfer from Australia to India - avoid receiving ends service tax",)
JUDGED_PIPELINE_PAIRS = (
    {
        "pair_id": "sharegpt:former-leader",
        "source": "sharegpt",
        "template": "who is the leader of <fi>a city or country</fi> right now?",
        "instruction": "who is the leader of the Republic of China right now?",
        "answer": "The memorial hall was built to honor Chiang Kai-shek, the former leader of "
        "the Republic of China. The hall is an impressive structure that stands 76 meters tall, "
        "and it houses a museum that is dedicated to the life and legacy of Chiang Kai-shek.",
    },
    {
        "pair_id": "sharegpt:defined-after-an-opening",
        "source": "sharegpt",
        "template": "what is <fi>an organization</fi>?",
        "instruction": "what is the DAO?",
        "answer": "Sure, here's an example of a real-life smart contract on the Ethereum "
        "blockchain:\n\nThe Decentralized Autonomous Organization (DAO) was a smart contract "
        "that was created in 2016 to act as a venture capital fund for the crypto and "
        "decentralized space. It raised over $150 million worth of Ether.",
    },
)
# The held-out SQuAD articles whose paragraphs the packing golden packs.
PACKED_ARTICLES = ("Normans", "Rhine")
# What the matching golden retrieves for: a few passages of two articles, against the templates
# of this many WebQuestions questions.
MATCHED_ARTICLES = ("Albedo", "Achilles")
MATCHED_PASSAGES_PER_ARTICLE = 3
MATCHING_QUESTIONS = 200
RETRIEVED_PER_VECTOR = 20


class Inputs:
    """The real inputs of every golden, each built once, and the role outputs that stages read."""

    @cached_property
    def articles(self) -> dict[str, str]:
        """The first Wikipedia articles of the shipped sample, by title."""
        return {a["text"].split("\n", 1)[0]: a["text"] for a in wikipedia_articles(limit=6)}

    @cached_property
    def embedder(self) -> Embedder:
        return Embedder(model=MINILM, device="cpu")

    @cached_property
    def queries(self) -> list[dict]:
        """Query rows as ingestion writes them: IFBench's WildChat prompts, WebQuestions."""
        texts = [row["query"] for row in ifbench_queries(limit=8)]
        texts += [row["qText"] for row in webquestions_questions()[:40]]
        return [
            {"text": text, "source": "sample.jsonl", "line": line, "turn": 0}
            for line, text in enumerate(texts, 1)
        ]

    @cached_property
    def genericized(self) -> list[str]:
        rows = [{"query": row["text"]} for row in self.queries]
        return genericizer.ROLE.rules.answer(rows, RulesAids())

    @cached_property
    def instantiated_documents(self) -> dict[str, str]:
        """The documents of INSTANTIATED, by title."""
        opening = self.articles["Alabama"].split("\n\n")[:ALABAMA_OPENING_PARAGRAPHS]
        return {
            "Albedo": self.articles["Albedo"],
            "Achilles": self.articles["Achilles"],
            "Alabama": "\n\n".join(opening),
        }

    @cached_property
    def instantiator_requests(self) -> list[dict]:
        """The passages of INSTANTIATED as instantiated_pairs reads its matched pairs."""
        requests = []
        for title, paragraph, vector, rank, template in INSTANTIATED:
            document = self.instantiated_documents[title]
            doc_id = content_hash(document)
            chunk = document.split("\n\n")[paragraph]
            requests.append(
                {
                    "doc_id": doc_id,
                    "chunk_id": content_hash(doc_id, chunk),
                    "template_id": content_hash(template),
                    "query_id": content_hash(template, "query"),
                    "similarity": 0.5,
                    "vector_index": vector,
                    "rank": rank,
                    "source": "wiki.jsonl",
                    "template": template,
                    "chunk": chunk,
                    "document": document,
                    # Local vector k is centred at k/(K+1) of its passage.
                    "anchor": vector / 6,
                }
            )
        return requests

    @cached_property
    def instantiated(self) -> list[str]:
        aids = RulesAids(embed=self.embedder.embed, embedder_model=MINILM)
        return instantiator.ROLE.rules.answer(self.instantiator_requests, aids)

    @cached_property
    def squad_pairs(self) -> list[squad.SquadPair]:
        """The first held-out pairs of each kind (SQuAD 2.0 dev's Normans and Rhine)."""
        held_out = squad.load_pairs(split=squad.HELD_OUT)
        return [
            pair
            for kind in squad.KINDS
            for pair in [p for p in held_out if p.kind == kind][:JUDGED_PER_KIND]
        ]

    @cached_property
    def judge_items(self) -> list[dict]:
        items = []
        for pair in self.squad_pairs:
            pair_id = f"{pair.kind}:{pair.question_id}"
            item = {
                "pair_id": pair_id,
                "source": "squad",
                "instruction": pair.instruction,
                "answer": pair.answer,
                "document": pair.document,
            }
            items.append(item)
            if pair_id in JUDGE_TEMPLATES:
                template = JUDGE_TEMPLATES[pair_id]
                items.append({**item, "pair_id": f"{pair_id}+template", "template": template})
        return items

    @cached_property
    def judged(self) -> list[str]:
        return judge.ROLE.rules.answer(self.judge_items, RulesAids())


def _cut_short(output: str) -> str:
    """An output cut off mid-way, as a model's is when it runs out of new tokens."""
    return output[: len(output) // 2]


def genericizer_outputs(inputs: Inputs) -> list:
    dashed = genericizer.ROLE.rules.answer([{"query": q} for q in DASHED_QUERIES], RulesAids())
    return [*inputs.genericized, *dashed]


def instantiator_outputs(inputs: Inputs) -> list:
    return inputs.instantiated


def judge_outputs(inputs: Inputs) -> list:
    items = [{**pair, "document": pair["answer"]} for pair in JUDGED_PIPELINE_PAIRS]
    return [*inputs.judged, *judge.ROLE.rules.answer(items, RulesAids())]


def templates_outputs(inputs: Inputs) -> list:
    """collect_templates on the genericizer's outputs, and on one cut short."""
    rows = [
        {**row, "query_id": content_hash(row["text"]), "query": row["text"]}
        for row in inputs.queries
    ]
    outputs = [*inputs.genericized[:-1], _cut_short(inputs.genericized[-1])]
    kept, rejects = collect_templates(rows, outputs, "rules", "rules")
    return [*kept, *rejects]


def pairs_outputs(inputs: Inputs) -> list:
    """instantiate_by_rank over the instantiator's passages (a template at most once), and
    collect_instantiations on an output cut short and on one grounded in another document."""
    requests = inputs.instantiator_requests
    answered = list(zip(requests, inputs.instantiated, strict=True))
    output_of = {(request["chunk_id"], request["template_id"]): text for request, text in answered}
    # Two more passages of Albedo: one's output is the first filled one cut short, the other's is
    # the first filled one of another document, which Albedo does not hold.
    albedo = next(request for request in requests if request["document"].startswith("Albedo"))
    filled = [(request["doc_id"], text) for request, text in answered if text.startswith("{")] or [
        (albedo["doc_id"], inputs.instantiated[0])
    ]
    elsewhere = next((found for doc, found in filled if doc != albedo["doc_id"]), filled[0][1])
    broken = [{**albedo, "chunk_id": f"albedo-{index}", "vector_index": 5} for index in range(2)]
    output_of[broken[0]["chunk_id"], broken[0]["template_id"]] = _cut_short(filled[0][1])
    output_of[broken[1]["chunk_id"], broken[1]["template_id"]] = elsewhere
    kept, rejects, instantiated, tried = instantiate_by_rank(
        [*requests, *broken],
        lambda batch: [output_of[request["chunk_id"], request["template_id"]] for request in batch],
        {request["doc_id"]: request["document"] for request in requests},
        instantiator.MIN_EXCERPT_RATIO,
        "rules",
        "rules",
        max_template_uses=1,
    )
    return [*kept, *rejects, {"instantiated": instantiated, "tried": tried}]


def judgements_outputs(inputs: Inputs) -> list:
    """collect_judgements on the judge's verdicts, and on one cut short before its score."""
    outputs = [*inputs.judged[:-1], inputs.judged[-1].split("<score>")[0]]
    rows, rejects = collect_judgements(
        inputs.judge_items, outputs, judge.MIN_JUDGE_SCORE, "rules", "rules"
    )
    return [*rows, *rejects]


def queries_outputs(inputs: Inputs) -> list:
    """filter_queries on the queries and on what a chat log also holds: one of them again in
    capitals, a long one again with a word of thanks, a bare word, a pasted article, and an
    MT-Bench question."""
    mt_bench = read_jsonl(EVAL_DIR / "mt-bench" / "question.jsonl")[0]["turns"][0]
    longest = max(inputs.queries, key=lambda row: len(row["text"]))
    added = [
        inputs.queries[10]["text"].upper(),
        f"{longest['text']} Thanks.",
        "Albedo",
        inputs.articles["Albedo"],
        mt_bench,
    ]
    last = len(inputs.queries)
    rows = [
        *inputs.queries,
        *(
            {"text": text, "source": "sample.jsonl", "line": line, "turn": 0}
            for line, text in enumerate(added, last + 1)
        ),
    ]
    kept, rejects = filter_queries(rows, default_index().match)
    return [*kept, *rejects]


def documents_outputs(inputs: Inputs) -> list:
    """clean_documents on the articles, one of them twice and one title alone."""
    texts = [*inputs.articles.values(), inputs.articles["Albedo"], "Albedo"]
    rows = [
        {"text": text, "source": "wiki.jsonl", "line": line, "source_id": None, "url": None}
        for line, text in enumerate(texts, 1)
    ]
    kept, rejects = clean_documents(rows)
    return [{**row, "language_score": round(row["language_score"], 6)} for row in kept] + rejects


def chunking_outputs(inputs: Inputs) -> list:
    """chunk_document on the articles with MiniLM's tokenizer and window."""
    embedder = inputs.embedder
    return [
        vars(chunk)
        for text in inputs.articles.values()
        for chunk in chunk_document(
            content_hash(text), text, embedder.count_tokens, embedder.chunk_tokens
        )
    ]


def matching_outputs(inputs: Inputs) -> list:
    """match_chunks on an exact MiniLM retrieval: the first passages of two articles, each as its
    Gaussian-pooled vectors, against the rules genericizer's templates of WebQuestions questions
    (by their document descriptions), the best RETRIEVED_PER_VECTOR per vector. The choices are
    the golden, not the similarities (floats of the encoder's arithmetic, whose last bits differ
    between machines); hits are listed by template id, so that two near-equal similarities
    cannot swap places either."""
    embedder = inputs.embedder
    chunks = []
    for title in MATCHED_ARTICLES:
        text = inputs.articles[title]
        doc_id = content_hash(text)
        found = chunk_document(doc_id, text, embedder.count_tokens, embedder.chunk_tokens)
        chunks += [(doc_id, chunk) for chunk in found[:MATCHED_PASSAGES_PER_ARTICLE]]
    templates: dict[str, tuple[str, int]] = {}
    for question in webquestions_questions()[:MATCHING_QUESTIONS]:
        try:
            made = rules_genericize(question["qText"])
        except TemplateError:
            continue  # nothing in the question to make a slot of: no template
        templates.setdefault(
            content_hash(made.template),
            (made.compatible_document_description, count_tags(made.template)),
        )
    template_ids = sorted(templates)
    template_vectors = embedder.embed([templates[t][0] for t in template_ids])
    pooled = embedder.embed_pooled([chunk.text for _, chunk in chunks])
    vectors = pooled.reshape(-1, pooled.shape[-1])
    hits = []
    for query_index, similarities in enumerate(vectors @ template_vectors.T):
        ranked = sorted(range(len(template_ids)), key=lambda t: -similarities[t])
        hits += [
            {
                "query_index": query_index,
                "template_id": template_ids[t],
                "n_tags": templates[template_ids[t]][1],
                "similarity": float(similarities[t]),
            }
            # template_ids are sorted: so are the indices of the best.
            for t in sorted(ranked[:RETRIEVED_PER_VECTOR])
        ]
    pairs, _ = match_chunks(
        [(doc_id, chunk.chunk_id, chunk.position) for doc_id, chunk in chunks],
        hits,
        embedder.threshold,
        target_distribution(n_tags for _, n_tags in templates.values()),
        vectors_per_chunk=pooled.shape[1],
        per_vector=TEMPLATES_PER_VECTOR,
    )
    return [{name: value for name, value in pair.items() if name != "similarity"} for pair in pairs]


def halving_outputs(inputs: Inputs) -> list:
    """halve and teacher_prompt on the articles (a short prompt limit, so that the prompt of a
    long first half is cut too)."""
    outputs = []
    for text in inputs.articles.values():
        first, second = continuations.halve(text)
        outputs.append(
            {"first": first, "second": second, "prompt": continuations.teacher_prompt(first, 2_000)}
        )
    return outputs


def packing_outputs(inputs: Inputs) -> list:
    """pack_shard, every recipe, over two SQuAD articles (Normans, Rhine: their paragraphs as one
    document each): their questions answered by their paragraphs are the instruction pairs, far
    more than fit, and the halves of each document its continuation."""
    paragraphs: dict[str, list[str]] = {}
    questions: dict[str, list[dict]] = {}
    for pair in squad.load_pairs(split=squad.HELD_OUT):
        if pair.kind == squad.POSITIVE and pair.article in PACKED_ARTICLES:
            found = paragraphs.setdefault(pair.article, [])
            if pair.paragraph not in found:
                found.append(pair.paragraph)
            questions.setdefault(pair.article, []).append(
                {
                    "sample_id": pair.question_id,
                    "instruction": pair.question,
                    "answer": pair.paragraph,
                }
            )
    documents = [(article, "\n\n".join(found)) for article, found in paragraphs.items()]
    halves = {doc_id: continuations.halve(text) for doc_id, text in documents}
    candidates = {
        "fineinstructions": questions,
        "non_instructional": {
            doc_id: [{"sample_id": doc_id, "instruction": first, "answer": second}]
            for doc_id, (first, second) in halves.items()
        },
        "standard": {},
    }
    tokenizer = load_training_tokenizer()
    outputs = []
    for recipe in RECIPES:
        rows, stats = pack_shard(documents, candidates[recipe], recipe, tokenizer, seed=0)
        outputs += [*rows, vars(stats)]
    return outputs


@dataclass(frozen=True)
class Golden:
    """One piece of versioned logic: its version constant (module.NAME), what its outputs are
    on the real inputs, and the version constants of what made those inputs."""

    name: str
    what: str
    version: str
    outputs: Callable[[Inputs], list]
    inputs_from: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        """Where the golden is stored in the repository."""
        return GOLDENS_DIR / f"{self.name}.json"


GENERICIZER_VERSION = "fi_method.templating.genericizer.RULES_VERSION"
INSTANTIATOR_VERSION = "fi_method.synthesis.instantiator.RULES_VERSION"
JUDGE_VERSION = "fi_method.synthesis.judge.RULES_VERSION"
CHUNKING_VERSION = "fi_method.retrieval.chunking.CHUNKING_VERSION"
HALVING_VERSION = "fi_method.synthesis.continuations.HALVING_VERSION"
GOLDENS = (
    Golden("genericizer", "the genericizer's rules", GENERICIZER_VERSION, genericizer_outputs),
    Golden("instantiator", "the instantiator's rules", INSTANTIATOR_VERSION, instantiator_outputs),
    Golden("judge", "the judge's rules", JUDGE_VERSION, judge_outputs),
    Golden(
        "templates",
        "collect_templates",
        "fi_method.templating.instruction_templates.TEMPLATES_VERSION",
        templates_outputs,
        (GENERICIZER_VERSION,),
    ),
    Golden(
        "pairs",
        "instantiate_by_rank, collect_instantiations and ground",
        "fi_method.synthesis.pairs.PAIRS_VERSION",
        pairs_outputs,
        (INSTANTIATOR_VERSION,),
    ),
    Golden(
        "judgements",
        "collect_judgements",
        "fi_method.synthesis.pairs.JUDGEMENTS_VERSION",
        judgements_outputs,
        (JUDGE_VERSION,),
    ),
    Golden(
        "queries", "filter_queries", "fi_method.templating.queries.QUERIES_VERSION", queries_outputs
    ),
    Golden(
        "documents",
        "clean_documents",
        "fi_method.retrieval.documents.DOCUMENTS_VERSION",
        documents_outputs,
    ),
    Golden("chunking", "chunk_document", CHUNKING_VERSION, chunking_outputs),
    Golden(
        "matching",
        "match_chunks, rank_templates and choose_templates",
        "fi_method.retrieval.matching.MATCHING_VERSION",
        matching_outputs,
        (CHUNKING_VERSION, GENERICIZER_VERSION),
    ),
    Golden("halving", "halve and teacher_prompt", HALVING_VERSION, halving_outputs),
    Golden(
        "packing",
        "pack_shard",
        "fi_method.corpus.packing.PACKING_VERSION",
        packing_outputs,
        (HALVING_VERSION,),
    ),
)


def version_of(constant: str) -> str:
    """The value of a version constant named `module.NAME`."""
    module, name = constant.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _sha256(value) -> str:
    return hashlib.sha256(_canonical(value).encode("utf-8")).hexdigest()


# Examples are for a reviewer's eye: long texts and token lists are shown in part.
EXAMPLE_CHARS = 400
EXAMPLE_ITEMS = 12


def _abridged(value):
    if isinstance(value, str) and len(value) > EXAMPLE_CHARS:
        return f"{value[:EXAMPLE_CHARS]}... ({len(value)} characters)"
    if isinstance(value, list | tuple):
        shown = [_abridged(item) for item in value[:EXAMPLE_ITEMS]]
        return shown + ([f"... ({len(value)} items)"] if len(value) > EXAMPLE_ITEMS else [])
    if isinstance(value, dict):
        return {str(key): _abridged(item) for key, item in value.items()}
    return value


def record(golden: Golden, outputs: list) -> dict:
    """What a golden file holds for `outputs` under the current versions."""
    return {
        "version": version_of(golden.version),
        "inputs_from": {constant: version_of(constant) for constant in golden.inputs_from},
        "outputs_sha256": _sha256(outputs),
        "output_sha256": [_sha256(output)[:16] for output in outputs],
        "examples": _abridged(json.loads(_canonical(outputs[:EXAMPLES]))),
    }


def moved_versions(golden: Golden, stored: dict, current: dict) -> list[str]:
    """The versions (the golden's own and its inputs') that differ from the stored ones."""
    before = {golden.version: stored["version"], **stored["inputs_from"]}
    now = {golden.version: current["version"], **current["inputs_from"]}
    return [
        f"{name} changed from {before.get(name)} to {value}"
        for name, value in now.items()
        if before.get(name) != value
    ]


def problem(golden: Golden, stored: dict | None, current: dict) -> str | None:
    """Why the stored golden does not match the current outputs and versions, or None."""
    if stored is None:
        return f"the golden of {golden.what} is missing: run {UPDATE_COMMAND}"
    moved = moved_versions(golden, stored, current)
    if moved:
        return (
            f"{'; '.join(moved)}, but the golden of {golden.what} ({golden.name}.json) was not "
            f"regenerated: run {UPDATE_COMMAND}"
        )
    if stored["outputs_sha256"] == current["outputs_sha256"]:
        return None
    before, now = stored["output_sha256"], current["output_sha256"]
    changed = [str(index) for index, (old, new) in enumerate(zip(before, now)) if old != new]
    which = [f"{len(changed)} of {len(now)}: {', '.join(changed[:10])}"] if changed else []
    if len(before) != len(now):
        which.append(f"there were {len(before)}, there are {len(now)}")
    upstream = ", ".join(
        f"{name} is still {value}" for name, value in current["inputs_from"].items()
    )
    return (
        f"the outputs of {golden.what} changed ({'; '.join(which)}) but {golden.version} is still "
        f"{current['version']}: bump it"
        + (
            f" (or, if its inputs changed, the version of what made them: {upstream})"
            if upstream
            else ""
        )
        + f", then run {UPDATE_COMMAND}"
    )


def check(golden: Golden, outputs: list, update: bool, directory: Path = GOLDENS_DIR) -> str | None:
    """Compare `outputs` with the golden stored in `directory`; with `update`, store them when
    the golden is missing or a version changed, never changed outputs under unchanged
    versions."""
    path = directory / f"{golden.name}.json"
    stored = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    current = record(golden, outputs)
    found = problem(golden, stored, current)
    if found is not None and update and (stored is None or moved_versions(golden, stored, current)):
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(current, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return None
    return found


@pytest.fixture(scope="module")
def inputs() -> Inputs:
    return Inputs()


@pytest.mark.parametrize("golden", GOLDENS, ids=lambda golden: golden.name)
def test_outputs_change_only_with_their_version(golden, inputs):
    found = check(golden, golden.outputs(inputs), os.environ.get(UPDATE_VARIABLE) == "1")
    assert found is None, found


def test_every_role_with_rules_has_a_golden_of_its_rules_version():
    goldens = {golden.name: golden for golden in GOLDENS}
    for role in declared_roles().values():
        if role.rules is not None:
            assert version_of(goldens[role.name].version) == role.rules.version, role.name


GOLDEN_OF = {golden.name: golden for golden in GOLDENS}


def test_a_rule_changed_under_the_same_version_is_named_with_its_version(inputs, monkeypatch):
    """A retuned threshold of the rules judge: every SQuAD pair under 200 words is now thin."""
    monkeypatch.setattr(rules_judge, "MIN_ANSWER_WORDS", 200)
    outputs = judge.ROLE.rules.answer(inputs.judge_items, RulesAids())
    found = check(GOLDEN_OF["judge"], outputs, update=False)
    assert found is not None
    assert found.startswith("the outputs of the judge's rules changed (")
    assert f"but {JUDGE_VERSION} is still {judge.RULES_VERSION}: bump it, then run" in found
    assert found.endswith(UPDATE_COMMAND)


def test_a_stage_changed_under_the_same_version_is_named_with_its_version(inputs, monkeypatch):
    """The training format loses a line break: every packed sample changes."""
    monkeypatch.setattr(packing, "PAIR_FORMAT", "Instruction: {instruction}\nAnswer: {answer}")
    found = check(GOLDEN_OF["packing"], packing_outputs(inputs), update=False)
    assert found is not None
    assert found.startswith("the outputs of pack_shard changed (")
    assert f"PACKING_VERSION is still {packing.PACKING_VERSION}: bump it" in found


def test_regenerating_stores_a_new_version_and_refuses_new_outputs_under_the_old(
    inputs, monkeypatch, tmp_path
):
    golden = GOLDEN_OF["halving"]
    shutil.copy(golden.path, tmp_path)
    outputs = halving_outputs(inputs)
    assert check(golden, outputs, update=False, directory=tmp_path) is None

    cut_elsewhere = [{**output, "prompt": output["prompt"][1:]} for output in outputs]
    refused = check(golden, cut_elsewhere, update=True, directory=tmp_path)
    current = continuations.HALVING_VERSION
    assert refused is not None and f"HALVING_VERSION is still {current}: bump it" in refused
    assert check(golden, outputs, update=False, directory=tmp_path) is None

    monkeypatch.setattr(continuations, "HALVING_VERSION", "next")
    stale = check(golden, cut_elsewhere, update=False, directory=tmp_path)
    assert f"HALVING_VERSION changed from {current} to next" in stale
    assert "was not regenerated" in stale
    assert check(golden, cut_elsewhere, update=True, directory=tmp_path) is None
    assert check(golden, cut_elsewhere, update=False, directory=tmp_path) is None
    assert json.loads((tmp_path / "halving.json").read_text())["version"] == "next"


def test_a_changed_version_of_a_stage_s_inputs_asks_for_its_golden_again(inputs, monkeypatch):
    monkeypatch.setattr(judge, "RULES_VERSION", "rules-99")
    found = check(GOLDEN_OF["judgements"], judgements_outputs(inputs), update=False)
    assert "RULES_VERSION changed from" in found and "to rules-99" in found
