"""document_chunks embeds a chunk again only when its text or the way vectors are made changed:
a new chunker (or an edited document) keeps the vectors of the chunks it left alone."""

import json

import dagster as dg
import numpy as np

from fi_assets.definitions import build_definitions
from fi_assets.ingestion import ingest_shards
from fi_method.samples import wikipedia_articles
from fi_resources import tables
from fi_resources.settings import get_settings


def chunk_again(monkeypatch, instance, **settings) -> tuple[dg.Definitions, dict]:
    """document_chunks[wiki] materialized under `settings` (FI_* variables); its metadata."""
    for name, value in settings.items():
        monkeypatch.setenv(f"FI_{name.upper()}", str(value))
    get_settings.cache_clear()
    defs = build_definitions(get_settings())
    result = dg.materialize(
        list(defs.assets),
        selection=["document_chunks"],
        partition_key="wiki",
        instance=instance,
        resources=defs.resources,
    )
    assert result.success
    (event,) = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    return defs, {key: value.value for key, value in metadata.items()}


def test_a_new_chunker_embeds_only_the_chunks_it_changed(fi_home, tmp_path, monkeypatch):
    articles = tmp_path / "wiki.jsonl"
    articles.write_text("".join(json.dumps(a) + "\n" for a in wikipedia_articles(limit=3)))
    defs = build_definitions(get_settings())
    storage = defs.resources["storage"]
    with dg.instance_for_test() as instance:
        list(ingest_shards(storage, "documents", str(articles), "wiki"))
        instance.add_dynamic_partitions("doc_shards", ["wiki"])
        assert dg.materialize(
            list(defs.assets),
            selection=["documents"],
            partition_key="wiki",
            instance=instance,
            resources=defs.resources,
        ).success

        _, first = chunk_again(monkeypatch, instance, max_chunk_tokens=128)
        before = storage.read_table(tables.DOCUMENT_CHUNKS, "wiki")
        assert first["vectors_reused"] == 0

        # Longer chunks: the short paragraphs that were chunks alone stay chunks alone.
        defs, second = chunk_again(monkeypatch, instance, max_chunk_tokens=200)
        after = storage.read_table(tables.DOCUMENT_CHUNKS, "wiki")
        kept = after.join(before, on="chunk_id", suffix="_before")
        assert 0 < kept.height < after.height
        assert second["vectors_reused"] == kept.height
        assert np.array_equal(kept["vectors"].to_numpy(), kept["vectors_before"].to_numpy())
        # What is new was embedded: it is what the embedder makes of its text.
        new = after.join(before, on="chunk_id", how="anti").head(4)
        embedded = defs.resources["embedder"].embed_pooled(new["text"].to_list())
        assert np.abs(new["vectors"].to_numpy() - embedded).max() < 1e-5

        # Vectors pooled with another K are made otherwise: none is reused.
        _, third = chunk_again(monkeypatch, instance, max_chunk_tokens=200, pooling_k=3)
        assert third["vectors_reused"] == 0
        assert storage.read_table(tables.DOCUMENT_CHUNKS, "wiki")["vectors"].dtype.shape[0] == 4
