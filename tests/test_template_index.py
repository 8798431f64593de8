"""The LanceDB index: replacing a shard touches only that shard, and reruns are idempotent."""

import lancedb
import numpy as np
import pytest

from fi_resources.template_index import TemplateIndex, table_name_for


def rows(*ids):
    return [
        {
            "template_id": i,
            "query_id": f"q{i}",
            "template": f"What is <fi>topic {i}</fi>?",
            "compatible_document_description": f"A document about topic {i}.",
            "n_tags": 1,
        }
        for i in ids
    ]


def unit_vectors(count, dimension=8, seed=0):
    vectors = np.random.default_rng(seed).normal(size=(count, dimension)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_replace_shard_is_exact_and_leaves_other_shards_alone(tmp_path):
    index = TemplateIndex(uri=str(tmp_path / "lancedb"))
    table = table_name_for("sentence-transformers/all-MiniLM-L6-v2")
    assert table == "templates__all_minilm_l6_v2"
    index.replace_shard(table, "a", rows("1", "2"), unit_vectors(2))
    index.replace_shard(table, "b", rows("1", "9"), unit_vectors(2, seed=1))
    index.replace_shard(table, "a", rows("2", "3"), unit_vectors(2, seed=2))
    index.replace_shard(table, "a", rows("2", "3"), unit_vectors(2, seed=2))
    stored = lancedb.connect(str(tmp_path / "lancedb")).open_table(table).to_arrow()
    by_shard = {}
    for shard, template_id in zip(
        stored["shard"].to_pylist(), stored["template_id"].to_pylist(), strict=True
    ):
        by_shard.setdefault(shard, set()).add(template_id)
    assert by_shard == {"a": {"2", "3"}, "b": {"1", "9"}}
    assert index.count(table) == 4 and index.count(table, "a") == 2

    index.replace_shard(table, "a", [], np.zeros((0, 8), dtype=np.float32))
    assert index.count(table, "a") == 0 and index.count(table, "b") == 2


def test_a_different_dimension_under_the_same_name_is_refused(tmp_path):
    index = TemplateIndex(uri=str(tmp_path / "lancedb"))
    index.replace_shard("templates__x", "a", rows("1"), unit_vectors(1, dimension=8))
    with pytest.raises(ValueError, match="8-d vectors, the embedder gives 4-d"):
        index.replace_shard("templates__x", "a", rows("1"), unit_vectors(1, dimension=4))


def test_search_finds_what_lancedb_flat_search_finds_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr("fi_resources.template_index.SEARCH_BLOCK_ROWS", 64)
    index = TemplateIndex(uri=str(tmp_path / "lancedb"), device="cpu")
    for shard in range(3):  # 3 x 150 templates: several blocks, blocks across shards
        ids = [f"{shard}-{i}" for i in range(150)]
        index.replace_shard("t", f"s{shard}", rows(*ids), unit_vectors(150, seed=shard))
    queries = unit_vectors(7, seed=99) * 3.0  # unnormalised queries score the same
    hits = index.search("t", queries, limit=5)
    reference = (
        lancedb.connect(str(tmp_path / "lancedb"))
        .open_table("t")
        .search(queries)
        .distance_type("cosine")
        .limit(5)
        .to_arrow()
    )
    expected = {}
    for q, t, d in zip(
        reference["query_index"].to_pylist(),
        reference["template_id"].to_pylist(),
        reference["_distance"].to_pylist(),
        strict=True,
    ):
        expected.setdefault(q, []).append((t, 1.0 - d))
    found = {}
    for hit in hits:
        found.setdefault(hit["query_index"], []).append((hit["template_id"], hit["similarity"]))
    assert found.keys() == expected.keys() == set(range(7))
    for q in range(7):
        assert [t for t, _ in found[q]] == [t for t, _ in expected[q]]
        assert [s for _, s in found[q]] == pytest.approx([s for _, s in expected[q]], abs=1e-5)
    assert all(hit["n_tags"] == 1 for hit in hits)
    assert index.search("t", queries[:0], limit=5) == [] == index.search("absent", queries, 5)


@pytest.mark.parametrize("block_rows", [2, 3, 1000])
def test_ties_are_broken_by_template_id_whatever_the_write_order_and_blocks(
    tmp_path, monkeypatch, block_rows
):
    """Templates with one document description share a vector: which of them make the cut must
    not depend on how the table was written or read."""
    monkeypatch.setattr("fi_resources.template_index.SEARCH_BLOCK_ROWS", block_rows)
    shared = unit_vectors(1, seed=5)[0]
    others = unit_vectors(4, seed=6)
    query = shared[None, :]
    results = []
    for attempt, order in enumerate([("x", "y"), ("y", "x")]):
        index = TemplateIndex(uri=str(tmp_path / f"db{attempt}"), device="cpu")
        shards = {
            "x": (rows("t7", "t2", "o1", "o2"), np.stack([shared, shared, others[0], others[1]])),
            "y": (rows("t5", "t9", "t1", "o3"), np.stack([shared, shared, shared, others[2]])),
        }
        for shard in order:
            index.replace_shard("t", shard, *shards[shard])
        results.append([(h["template_id"], h["similarity"]) for h in index.search("t", query, 3)])
    assert results[0] == results[1]
    assert [t for t, _ in results[0]] == ["t1", "t2", "t5"]
    assert all(s == pytest.approx(1.0) for _, s in results[0])
