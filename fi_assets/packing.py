"""packed_corpus[doc_shard x recipe]: stage E. Each recipe's training samples of one document
shard, packed token for token against the shard's documents, tokenized for the trainer."""

from pathlib import Path

import dagster as dg
import polars as pl

from fi_assets.checks import NO_EVAL_LEAK, check_result
from fi_assets.partitions import (
    DOC_SHARD,
    RECIPE,
    by_doc_shard,
    doc_shard_recipes,
    storage_partition,
)
from fi_assets.reporting import write_stage
from fi_method.corpus.budget import ShardTokens
from fi_method.corpus.decontamination import default_index
from fi_method.corpus.packing import (
    FINEINSTRUCTIONS,
    NON_INSTRUCTIONAL,
    PACKING_VERSION,
    RECIPES,
    load_training_tokenizer,
    pack_shard,
)
from fi_method.synthesis.quality import PAPER_PAIRS_PER_DOCUMENT, leaked_eval_items
from fi_resources.settings import Settings
from fi_resources.storage import Storage
from fi_resources.tables import (
    CONTINUATIONS,
    DOCUMENTS,
    INSTANTIATED_PAIRS,
    JUDGED_PAIRS,
    PACKED_CORPUS,
)


def training_files(storage: Storage, recipe: str, heldout_shard: str) -> dict[str, Path]:
    """doc shard -> the recipe's packed file, for every shard but `heldout_shard` (what the
    recipe trains on, and what `fi export` writes)."""
    suffix = f".{recipe}.parquet"
    files = {
        path.name[: -len(suffix)]: path
        for path in storage.partition_files(PACKED_CORPUS)
        if path.name.endswith(suffix)
    }
    files.pop(heldout_shard, None)
    return files


def packed_counts(storage: Storage, heldout_shard: str) -> list[ShardTokens]:
    """Tokens and samples each recipe packed on each training shard (all but `heldout_shard`),
    from the packed files themselves."""
    counts = []
    for recipe in RECIPES:
        for shard, path in sorted(training_files(storage, recipe, heldout_shard).items()):
            samples, tokens = (
                pl.scan_parquet(path).select(pl.len(), pl.col("n_tokens").sum()).collect().row(0)
            )
            counts.append(ShardTokens(shard, recipe, int(tokens or 0), int(samples)))
    return counts


def _candidates(storage: Storage, shard: str, recipe: str) -> dict[str, list[dict]]:
    """doc_id -> the recipe's candidate samples: kept judged pairs, or continuations."""
    if recipe == FINEINSTRUCTIONS:
        kept = storage.read_table(JUDGED_PAIRS, shard).filter(pl.col("kept")).select("pair_id")
        frame = kept.join(storage.read_table(INSTANTIATED_PAIRS, shard), on="pair_id").select(
            "doc_id", pl.col("pair_id").alias("sample_id"), "instruction", "answer"
        )
    elif recipe == NON_INSTRUCTIONAL:
        frame = storage.read_table(CONTINUATIONS, shard).select(
            "doc_id", pl.col("continuation_id").alias("sample_id"), "instruction", "answer"
        )
    else:
        return {}
    grouped: dict[str, list[dict]] = {}
    for row in frame.iter_rows(named=True):
        grouped.setdefault(row.pop("doc_id"), []).append(row)
    return grouped


@dg.asset(
    partitions_def=doc_shard_recipes,
    ins={
        table.name: dg.AssetIn(table.key, partition_mapping=by_doc_shard, dagster_type=dg.Nothing)
        for table in (DOCUMENTS, JUDGED_PAIRS, INSTANTIATED_PAIRS, CONTINUATIONS)
    },
    group_name="packing",
    kinds={"polars", "parquet"},
    code_version=PACKING_VERSION,
    check_specs=[NO_EVAL_LEAK],
    description="Stage E: a recipe's samples of one document shard, formatted `Instruction: ...\\n\\n"
    "Answer: ...` and packed token for token: a document's budget is its own token count under "
    "the training tokenizer (FI_TRAINING_TOKENIZER, default Llama-3); samples are drawn at random "
    "(seeded by doc_id) while they fit and the leftover rolls over to the next document. "
    "`standard` is the documents themselves. Rows carry input_ids and a per-token answer mask. "
    "The metadata shows the recipe's tokens against the documents' (token_ratio_to_documents): "
    "a shard short of them is data, not a failure; recipes are held to the same token count "
    "where they train (training_budget).",
)
def packed_corpus(
    context: dg.AssetExecutionContext, storage: Storage, settings: dg.ResourceParam[Settings]
) -> dg.MaterializeResult:
    dimensions = context.partition_key.keys_by_dimension
    shard, recipe = dimensions[DOC_SHARD], dimensions[RECIPE]
    tokenizer = load_training_tokenizer(settings.training_tokenizer)
    documents = storage.read_table(DOCUMENTS, shard).select("doc_id", "text")
    rows, stats = pack_shard(
        documents.rows(),
        _candidates(storage, shard, recipe),
        recipe,
        tokenizer,
        settings.packing_seed,
    )
    frame = PACKED_CORPUS.frame({**row, "doc_shard": shard} for row in rows)
    return write_stage(
        storage,
        PACKED_CORPUS,
        storage_partition(context.partition_key),
        frame,
        [],
        ["recipe", "doc_id", "n_tokens", "text"],
        {
            "tokenizer": tokenizer.name,
            "document_tokens": stats.document_tokens,
            "packed_tokens": stats.packed_tokens,
            "token_ratio_to_documents": round(stats.token_ratio, 4),
            "residual_tokens": stats.residual_tokens,
            "samples": stats.n_samples,
            "candidates": stats.n_candidates,
            "samples_per_document_mean": round(stats.samples_per_document_mean, 3),
            "samples_per_document_paper": PAPER_PAIRS_PER_DOCUMENT,
            "samples_per_document": {str(k): v for k, v in stats.samples_per_document.items()},
            "documents_without_samples": stats.documents_without_samples,
            "samples_cut_to_budget": stats.samples_cut_to_budget,
        },
        checks=[
            check_result(
                NO_EVAL_LEAK,
                frame.height,
                *leaked_eval_items(frame.select("sample_id", "text").to_dicts(), default_index()),
            ),
        ],
    )
