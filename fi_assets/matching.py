"""document_chunks[d] and matched_pairs[d]: stage B. Chunks are embedded once (Gaussian pooling)
and stored with their vectors, so a change in the template index re-runs retrieval only, and a
new chunker embeds only the chunks it changed."""

import time
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pyarrow.parquet as pq

from fi_assets.checks import DOCUMENTS_MATCHED, check_result
from fi_assets.partitions import doc_shards, query_shards
from fi_assets.placement import on_gpu
from fi_assets.reporting import (
    distribution_chart,
    each_partition,
    markdown_preview,
    report_stage,
    write_stage,
)
from fi_assets.versions import upstream_partitions_tags
from fi_method.retrieval.chunking import CHUNKING_VERSION, chunk_document
from fi_method.retrieval.matching import (
    CANDIDATES_PER_VECTOR,
    MATCHING_VERSION,
    complexity_shares,
    match_chunks,
    target_distribution,
)
from fi_method.synthesis.quality import (
    MAX_UNMATCHED_DOCUMENT_SHARE,
    MIN_DOCUMENTS_FOR_A_SHARE,
    share_outside,
)
from fi_resources.embedder import Embedder
from fi_resources.settings import Settings
from fi_resources.storage import Storage
from fi_resources.tables import (
    DOCUMENT_CHUNKS,
    DOCUMENTS,
    INSTRUCTION_TEMPLATES,
    MATCHED_PAIRS,
    keys,
)
from fi_resources.template_index import TemplateIndex, table_name_for

# Nearest templates fetched per query vector before the threshold; enough that sampling by
# complexity has a choice, few enough that retrieval stays one cheap batched call.
# About half a minute of MiniLM on two CPU cores per progress line; a GPU's batches stay large.
CHUNKS_PER_PROGRESS_LINE = 512
# Documents chunked, embedded and written per batch: a chunk's K+1 vectors weigh ~9 KB with
# MiniLM, so a partition's would not fit; a batch's do.
CHUNK_BATCH_DOCUMENTS = 1_000
# Chunks whose vectors are searched at once (K+1 vectors each).
MATCH_BATCH_CHUNKS = 1_024


def chunk_vectors(chunks: pl.DataFrame) -> np.ndarray:
    """All query vectors of `document_chunks` rows, chunk by chunk, each chunk's K+1 in order
    (K as the chunks were pooled with: FI_POOLING_K)."""
    dimension = chunks["vectors"].dtype.shape[-1]
    return np.asarray(chunks["vectors"].to_numpy(), dtype=np.float32).reshape(-1, dimension)


@dg.asset(
    partitions_def=doc_shards,
    deps=["documents"],
    group_name="matching",
    kinds={"polars", "parquet", "sentence_transformers"},
    code_version=CHUNKING_VERSION,
    **on_gpu(),
    backfill_policy=dg.BackfillPolicy.single_run(),
    description="Documents split into chunks that fit the embedder (paragraph, then sentence "
    "boundaries; the embedder's own tokenizer), each embedded with Gaussian pooling into K+1 "
    "unit vectors (global mean, then K local vectors centred along the chunk; FI_POOLING_K, "
    "default 5). A rerun embeds only the chunks whose text changed: the others keep the vectors "
    "they had when the same model, K and dtype made them.",
)
def document_chunks(
    context: dg.AssetExecutionContext, storage: Storage, embedder: Embedder
) -> dg.MaterializeResult:
    return each_partition(context, lambda shard: _chunk_shard(context, shard, storage, embedder))


def _chunk_shard(
    context: dg.AssetExecutionContext, shard: str, storage: Storage, embedder: Embedder
) -> dg.MaterializeResult:
    docs = storage.scan_table(DOCUMENTS, shard).select("doc_id", "text")
    n_documents = docs.select(pl.len()).collect().item()
    signature = embedder.vectors_signature
    before = VectorsBefore.of(storage, shard, signature)
    # The vectors' shape is the embedder's: they join the declared columns as an Array.
    columns = {name: kind for name, kind in DOCUMENT_CHUNKS.schema.items() if name != "vectors"}
    started = time.perf_counter()
    reused = 0
    with (
        storage.table_writer(DOCUMENT_CHUNKS, shard) as written,
        storage.rejects_writer(DOCUMENT_CHUNKS.name, shard) as rejected,
    ):
        for start in range(0, n_documents, CHUNK_BATCH_DOCUMENTS):
            batch = docs.slice(start, CHUNK_BATCH_DOCUMENTS).collect()
            chunks = [
                {"doc_id": doc_id, **vars(chunk), "embedded_with": signature}
                for doc_id, text in batch.iter_rows()
                for chunk in chunk_document(
                    doc_id, text, embedder.count_tokens, embedder.chunk_tokens
                )
            ]
            known = before.vectors(batch["doc_id"].to_list()) if before else {}
            fresh = [chunk for chunk in chunks if chunk["chunk_id"] not in known]
            reused += len(chunks) - len(fresh)
            embedded = _embed_with_progress(context, embedder, [c["text"] for c in fresh])
            vectors = np.empty((len(chunks), *embedded.shape[1:]), dtype=np.float32)
            by_id = known | dict(zip((c["chunk_id"] for c in fresh), embedded, strict=True))
            for row, chunk in enumerate(chunks):
                vectors[row] = by_id[chunk["chunk_id"]]
            frame = pl.DataFrame(chunks, schema=columns).with_columns(
                pl.Series("vectors", vectors, dtype=pl.Array(pl.Float32, vectors.shape[1:]))
            )
            written.write(frame)
            done = min(start + CHUNK_BATCH_DOCUMENTS, n_documents)
            elapsed = time.perf_counter() - started
            context.log.info(
                f"chunked and embedded {done}/{n_documents} documents ({written.rows} chunks, "
                f"{reused} of them with the vectors they had, ~"
                f"{(n_documents - done) * elapsed / done:.0f}s left)"
            )
    return report_stage(
        written,
        rejected,
        shard,
        ["chunk_id", "doc_id", "position", "n_tokens", "text"],
        {
            "documents": n_documents,
            "chunks_per_document": round(written.rows / max(n_documents, 1), 2),
            "vectors_reused": reused,
            "embedder": embedder.model,
        },
    )


class VectorsBefore:
    """The vectors this partition's chunks had before this run, where the same model, K and dtype
    (`signature`) made them: a new chunker or an edited document keeps the vectors of every chunk
    whose text it left alone. Read a row group at a time: a batch's documents sit in one or two
    row groups, as the table follows the documents' order."""

    def __init__(self, path: Path, signature: str):
        self._file = pq.ParquetFile(path)
        self._signature = signature
        self._groups_of: dict[str, list[int]] = {}
        for group in range(self._file.num_row_groups):
            doc_ids = self._file.read_row_group(group, columns=["doc_id"]).column(0)
            for doc_id in set(doc_ids.to_pylist()):
                self._groups_of.setdefault(doc_id, []).append(group)

    @classmethod
    def of(cls, storage: Storage, shard: str, signature: str) -> "VectorsBefore | None":
        """The partition's previous chunks; None on a first run, or for a table written before
        chunks recorded what made their vectors."""
        path = storage.table_path(DOCUMENT_CHUNKS, shard)
        if not path.exists() or "embedded_with" not in pq.read_schema(path).names:
            return None
        return cls(path, signature)

    def vectors(self, doc_ids: list[str]) -> dict[str, np.ndarray]:
        """The vectors of the chunks of `doc_ids`, by chunk id (which hashes the document id and
        the chunk's text)."""
        groups = sorted({group for doc_id in doc_ids for group in self._groups_of.get(doc_id, [])})
        columns = ["doc_id", "chunk_id", "embedded_with", "vectors"]
        vectors: dict[str, np.ndarray] = {}
        # One group at a time: documents in another order than before spread over many groups.
        for group in groups:
            found = pl.from_arrow(self._file.read_row_group(group, columns=columns)).filter(
                pl.col("doc_id").is_in(doc_ids) & (pl.col("embedded_with") == self._signature)
            )
            vectors.update(zip(found["chunk_id"], found["vectors"].to_numpy(), strict=True))
        return vectors


def _embed_with_progress(
    context: dg.AssetExecutionContext, embedder: Embedder, texts: list[str]
) -> np.ndarray:
    """Gaussian-pooled vectors of `texts`, a block at a time, logging how far it got: embedding
    a shard takes minutes on a CPU."""
    started = time.perf_counter()
    blocks = [embedder.embed_pooled(texts[:0])]
    for start in range(0, len(texts), CHUNKS_PER_PROGRESS_LINE):
        blocks.append(embedder.embed_pooled(texts[start : start + CHUNKS_PER_PROGRESS_LINE]))
        done = min(start + CHUNKS_PER_PROGRESS_LINE, len(texts))
        elapsed = time.perf_counter() - started
        context.log.info(
            f"embedded {done}/{len(texts)} chunks of this batch ({done / elapsed:.1f}/s)"
        )
    return np.concatenate(blocks)


def _histogram(values, bins: int = 10) -> str:
    if len(values) == 0:
        return "no candidate above the threshold"
    counts, edges = np.histogram(values, bins=bins)
    return "\n".join(
        ["| similarity | candidates |", "|---|---|"]
        + [
            f"| {lo:.3f}-{hi:.3f} | {n} |"
            for lo, hi, n in zip(edges[:-1], edges[1:], counts, strict=True)
        ]
    )


@dg.asset(
    partitions_def=doc_shards,
    deps=[
        *keys(DOCUMENT_CHUNKS),
        dg.AssetDep("template_index", partition_mapping=dg.AllPartitionMapping()),
        # Its n_tags distribution weighs the sampling of candidates.
        dg.AssetDep(INSTRUCTION_TEMPLATES.key, partition_mapping=dg.AllPartitionMapping()),
    ],
    group_name="matching",
    kinds={"lancedb", "polars", "parquet"},
    code_version=MATCHING_VERSION,
    **on_gpu(),
    backfill_policy=dg.BackfillPolicy.single_run(),
    check_specs=[DOCUMENTS_MATCHED],
    description="Templates matched to each passage (chunk) of a document: every chunk vector "
    "queries the LanceDB index (one batched call); candidates above the embedder's similarity "
    "threshold are sampled, seeded by chunk_id, with weight target(n_tags) / candidates(n_tags) so "
    "the chosen complexity follows the real-chat templates; one template per vector (rank 0), K+1 "
    "per passage, so a long document gets templates in proportion to its length, each followed by "
    "alternates (rank 1..FI_TEMPLATES_PER_VECTOR - 1) that instantiation tries when it does not fit.",
)
def matched_pairs(
    context: dg.AssetExecutionContext,
    storage: Storage,
    embedder: Embedder,
    index: TemplateIndex,
    settings: dg.ResourceParam[Settings],
) -> dg.MaterializeResult:
    return each_partition(
        context,
        lambda shard: _match_shard(
            context, shard, storage, embedder, index, settings.templates_per_vector
        ),
    )


def _match_shard(
    context: dg.AssetExecutionContext,
    shard: str,
    storage: Storage,
    embedder: Embedder,
    index: TemplateIndex,
    templates_per_vector: int,
) -> dg.MaterializeResult:
    # The chunks' ids are read whole; their vectors a batch at a time.
    chunks = storage.scan_table(DOCUMENT_CHUNKS, shard)
    listed = chunks.select("doc_id").collect()
    vectors_per_chunk = chunks.collect_schema()["vectors"].shape[0]
    # The library's complexities, counted without reading its templates.
    templates = storage.scan_all(INSTRUCTION_TEMPLATES)
    counts = (
        {} if templates is None else dict(templates.group_by("n_tags").len().collect().iter_rows())
    )
    target = complexity_shares(counts) if counts else {}
    threshold = embedder.threshold
    name = table_name_for(embedder.model)
    frames, similarities = [], []
    # A batch of chunks at a time: a search's hits (CANDIDATES_PER_VECTOR per vector) are many
    # times the pairs chosen from them, so only one batch's are held. Each chunk's sampling is
    # seeded by its chunk_id, so the batches choose what one search of the shard would.
    for start in range(0, listed.height, MATCH_BATCH_CHUNKS):
        batch = chunks.slice(start, MATCH_BATCH_CHUNKS).collect()
        hits = index.search(name, chunk_vectors(batch), CANDIDATES_PER_VECTOR)
        batch_pairs, batch_similarities = match_chunks(
            batch.select("doc_id", "chunk_id", "position").rows(),
            hits,
            threshold,
            target,
            vectors_per_chunk=vectors_per_chunk,
            per_vector=templates_per_vector,
        )
        frames.append(MATCHED_PAIRS.frame(batch_pairs))
        # As float32 (the vectors' own precision): a shard's candidates number in the millions.
        similarities.append(np.asarray(batch_similarities, dtype=np.float32))
        done = min(start + MATCH_BATCH_CHUNKS, listed.height)
        context.log.info(f"matched {done}/{listed.height} chunks")
    frame = (pl.concat(frames) if frames else MATCHED_PAIRS.frame([])).sort(
        "doc_id", "rank", "vector_index", "chunk_id"
    )
    chosen = frame.filter(pl.col("rank") == 0)
    n_documents = listed["doc_id"].n_unique()
    chosen_tags = target_distribution(chosen["n_tags"].to_list()) if chosen.height else {}
    return write_stage(
        storage,
        MATCHED_PAIRS,
        shard,
        frame,
        [],
        ["doc_id", "template_id", "similarity", "vector_index", "n_tags", "rank"],
        {
            "similarity_threshold": threshold,
            "embedder": embedder.model,
            "template_search": index.search_kind_for(table_name_for(embedder.model)),
            "documents": n_documents,
            "documents_with_a_match": frame["doc_id"].n_unique(),
            "share_of_documents_matched": round(
                frame["doc_id"].n_unique() / max(n_documents, 1), 4
            ),
            "matches_per_document": round(chosen.height / max(n_documents, 1), 3),
            "templates_per_vector": templates_per_vector,
            "alternates": frame.height - chosen.height,
            "similarity_histogram": dg.MetadataValue.md(
                _histogram(np.concatenate(similarities) if similarities else [])
            ),
            "similarity_chart": distribution_chart(
                chosen["similarity"].to_list(), "similarity of chosen templates"
            ),
            "n_tags_chosen_vs_target": dg.MetadataValue.md(
                markdown_preview(
                    pl.DataFrame(
                        [
                            {
                                "n_tags": k,
                                "target": round(target.get(k, 0.0), 3),
                                "chosen": round(chosen_tags.get(k, 0.0), 3),
                            }
                            for k in sorted(set(target) | set(chosen_tags))
                        ],
                        schema={"n_tags": pl.Int64, "target": pl.Float64, "chosen": pl.Float64},
                    ),
                    ["n_tags", "target", "chosen"],
                    rows=100,
                )
            ),
        },
        upstream_partitions_tags(context.instance, {"template_index": query_shards.name}),
        checks=[
            check_result(
                DOCUMENTS_MATCHED,
                n_documents,
                share_outside(
                    "documents without a template above the threshold",
                    n_documents - frame["doc_id"].n_unique(),
                    n_documents,
                    0.0,
                    MAX_UNMATCHED_DOCUMENT_SHARE,
                    f"is FI_SIMILARITY_THRESHOLD ({threshold}) right for {embedder.model}? "
                    "`fi calibrate` proposes one",
                    MIN_DOCUMENTS_FOR_A_SHARE,
                ),
            )
        ],
    )
