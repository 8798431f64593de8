"""The LanceDB index: replacing a shard touches only that shard, and reruns are idempotent."""

import lancedb
import numpy as np
import pytest
import torch

from fi_method.retrieval.template_search import unit_rows
from fi_resources import template_index
from fi_resources.template_index import TemplateIndex, load_resident, table_name_for


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
    monkeypatch.setattr("fi_method.retrieval.template_search.SEARCH_BLOCK_ROWS", 64)
    monkeypatch.setattr("fi_method.retrieval.template_search.RESCORED_PAIRS", 7)
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


@pytest.mark.parametrize("resident", [False, True])
@pytest.mark.parametrize("block_rows", [2, 3, 1000])
def test_ties_are_broken_by_template_id_whatever_the_write_order_and_blocks(
    tmp_path, monkeypatch, block_rows, resident
):
    """Templates with one document description share a vector: which of them make the cut must
    not depend on how the table was written or read."""
    monkeypatch.setattr("fi_method.retrieval.template_search.SEARCH_BLOCK_ROWS", block_rows)
    monkeypatch.setattr("fi_method.retrieval.template_search.CPU_SCORE_BLOCK_ELEMENTS", block_rows)
    shared = unit_vectors(1, seed=5)[0]
    others = unit_vectors(4, seed=6)
    query = shared[None, :]
    results = []
    for attempt, order in enumerate([("x", "y"), ("y", "x")]):
        index = TemplateIndex(uri=str(tmp_path / f"db{attempt}"), device="cpu", resident=resident)
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


def write_shards(index, shards=3, per_shard=150, name="t"):
    for shard in range(shards):
        ids = [f"{shard}-{i}" for i in range(per_shard)]
        index.replace_shard(name, f"s{shard}", rows(*ids), unit_vectors(per_shard, seed=shard))


def test_resident_search_finds_what_the_streamed_search_finds(tmp_path, monkeypatch):
    # 450 templates in blocks of 64, each scored against 3 of the 7 queries at a time.
    monkeypatch.setattr("fi_method.retrieval.template_search.SEARCH_BLOCK_ROWS", 64)
    monkeypatch.setattr("fi_method.retrieval.template_search.CPU_SCORE_BLOCK_ELEMENTS", 3 * 64)
    uri = str(tmp_path / "lancedb")
    streamed = TemplateIndex(uri=uri, device="cpu", resident=False)
    write_shards(streamed)
    resident = TemplateIndex(uri=uri, device="cpu", resident=True)
    queries = unit_vectors(7, seed=99) * 3.0
    for limit in (1, 5, 500):
        assert resident.search("t", queries, limit) == streamed.search("t", queries, limit)
    assert streamed._resident_tables == {} and set(resident._resident_tables) == {"t"}


def near_duplicate_templates(tmp_path):
    """Templates closer to each other than fp16 can tell apart: 40 small moves of one vector,
    with shared vectors among them, so that only float32 scores order them."""
    base = unit_vectors(1, seed=3)[0]
    moves = np.random.default_rng(4).normal(scale=2e-4, size=(40, 8)).astype(np.float32)
    vectors = base + moves
    vectors[10:14] = vectors[9]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = TemplateIndex(uri=str(tmp_path / "lancedb"), device="cpu", resident=False)
    ids = [f"n{i:02d}" for i in range(40)]
    index.replace_shard("t", "a", rows(*ids[:25]), vectors[:25])
    index.replace_shard("t", "b", rows(*ids[25:]), vectors[25:])
    queries = np.concatenate([base[None], vectors[[9, 30]], unit_vectors(2, seed=7)])
    return index, queries


def test_fp16_scoring_gives_the_float32_result(tmp_path, monkeypatch):
    # 40 templates in blocks of 16, each scored against 2 of the 5 queries at a time.
    monkeypatch.setattr("fi_method.retrieval.template_search.SEARCH_BLOCK_ROWS", 16)
    monkeypatch.setattr("fi_method.retrieval.template_search.CPU_SCORE_BLOCK_ELEMENTS", 2 * 16)
    index, queries = near_duplicate_templates(tmp_path)
    table = lancedb.connect(index.uri).open_table("t")
    normalised = torch.from_numpy(unit_rows(queries))
    fp16 = load_resident(table, "cpu", torch.float16)
    assert fp16.scoring.dtype == torch.float16
    for limit in (1, 3, 12):
        expected = index.search("t", queries, limit)
        found = fp16.search(normalised, limit)
        assert [(h["query_index"], h["template_id"]) for h in found] == [
            (h["query_index"], h["template_id"]) for h in expected
        ]
        assert found == expected


def test_the_resident_copy_is_kept_until_the_table_changes(tmp_path, monkeypatch):
    loads = []
    load = template_index.load_resident

    def counted(table, *args, **kwargs):
        loads.append(table.version)
        return load(table, *args, **kwargs)

    monkeypatch.setattr(template_index, "load_resident", counted)
    uri = str(tmp_path / "lancedb")
    index = TemplateIndex(uri=uri, device="cpu", resident=True)
    write_shards(index, shards=2, per_shard=20)
    query = unit_vectors(1, seed=42)
    first = index.search("t", query, 3)
    assert index.search("t", query, 3) == first
    assert len(loads) == 1

    # Another writer (another process) adds the query's own vector: the next search sees it.
    TemplateIndex(uri=uri).replace_shard("t", "s9", rows("exact"), query)
    after = index.search("t", query, 3)
    assert len(loads) == 2 and loads[1] > loads[0]
    assert after[0]["template_id"] == "exact" and after[0]["similarity"] == pytest.approx(1.0)
    assert after[1:] == first[:2]

    index.replace_shard("t", "s9", [], np.zeros((0, 8), dtype=np.float32))
    assert index.search("t", query, 3) == first
    assert len(loads) == 3


@pytest.mark.parametrize("resident", [False, True])
def test_vectors_are_stored_at_unit_length_so_similarities_are_cosines(tmp_path, resident):
    index = TemplateIndex(uri=str(tmp_path / "lancedb"), device="cpu", resident=resident)
    vectors = unit_vectors(3, seed=8) * np.array([[5.0], [0.2], [1.0]], dtype=np.float32)
    index.replace_shard("t", "a", rows("long", "short", "unit"), vectors)
    stored = index.shard_vectors("t", "a")
    assert np.allclose(np.linalg.norm(np.stack(list(stored.values())), axis=1), 1.0, atol=1e-6)
    hits = index.search("t", vectors[:2] * 7.0, limit=1)
    assert [(h["template_id"], h["similarity"]) for h in hits] == [("long", 1.0), ("short", 1.0)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_table_resident_on_the_gpu_gives_the_cpu_result(tmp_path):
    """On a GPU a table that fits is resident by default and scored in fp16, then rescored."""
    spread = TemplateIndex(uri=str(tmp_path / "spread"), device="cpu", resident=False)
    write_shards(spread)
    close, close_queries = near_duplicate_templates(tmp_path)
    for cpu, queries in ((spread, unit_vectors(7, seed=99)), (close, close_queries)):
        gpu = TemplateIndex(uri=cpu.uri, device="cuda")
        for limit in (1, 5, 12):
            assert gpu.search("t", queries, limit) == cpu.search("t", queries, limit)
        assert gpu._resident_tables["t"].scoring.dtype == torch.float16


def clustered_unit_vectors(count, centres, dimension=384, noise=0.6, seed=0):
    """Unit vectors drawn around fixed random centres, as embeddings cluster by topic: a uniform
    cloud has no near neighbours for an index to find."""
    generator = np.random.default_rng(seed)
    picks = generator.integers(0, len(centres), count)
    vectors = centres[picks] + noise * generator.standard_normal((count, dimension))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def vector_index_stats(uri, name="t"):
    """The index's statistics as another process would read them now (None: no index)."""
    return lancedb.connect(uri).open_table(name).index_stats(template_index.VECTOR_INDEX)


def by_query(hits):
    found = {}
    for hit in hits:
        found.setdefault(hit["query_index"], []).append(hit)
    return found


def test_approximate_search_finds_most_exact_neighbours_with_their_exact_similarities(tmp_path):
    """At the paper's 150 probes the index keeps recall@10 high on clustered templates, and its
    candidates are rescored exactly: a pair found has the exact search's similarity."""
    centres = np.random.default_rng(12345).standard_normal((300, 384))
    templates = clustered_unit_vectors(20_000, centres, seed=1)
    queries = clustered_unit_vectors(200, centres, noise=0.3, seed=2)
    uri = str(tmp_path / "lancedb")
    exact = TemplateIndex(uri=uri, device="cpu", resident=False, search_kind="exact")
    for shard in range(4):
        part = slice(shard * 5_000, (shard + 1) * 5_000)
        ids = [f"{shard}-{i}" for i in range(5_000)]
        exact.replace_shard("t", f"s{shard}", rows(*ids), templates[part])
    approximate = TemplateIndex(uri=uri, search_kind="approximate")
    assert approximate.search_kind_for("t") == "approximate (IVF_HNSW_SQ, 150 probes)"

    found = by_query(approximate.search("t", queries, 10))
    truth = by_query(exact.search("t", queries, 100))
    assert found.keys() == truth.keys() == set(range(200))
    exact_similarity = {
        (q, hit["template_id"]): hit["similarity"] for q, hits in truth.items() for hit in hits
    }
    recalls = []
    for q, hits in found.items():
        assert len(hits) == 10
        assert [h["similarity"] for h in hits] == sorted(
            (h["similarity"] for h in hits), reverse=True
        )
        assert all(h["similarity"] == exact_similarity[q, h["template_id"]] for h in hits)
        nearest = {h["template_id"] for h in truth[q][:10]}
        recalls.append(len(nearest & {h["template_id"] for h in hits}) / 10)
    assert np.mean(recalls) >= 0.9


def test_auto_search_is_approximate_from_the_size_set(tmp_path):
    """Libraries below `approximate_from` stay exact, and so the same on every run."""
    index = TemplateIndex(uri=str(tmp_path / "lancedb"), approximate_from=300, nprobes=20)
    assert index.search_kind_for("t") == "exact"  # no table yet
    write_shards(index, shards=2, per_shard=150)
    assert index.search_kind_for("t") == "approximate (IVF_HNSW_SQ, 20 probes)"
    larger = TemplateIndex(uri=index.uri, approximate_from=301)
    assert larger.search_kind_for("t") == "exact"
    forced = TemplateIndex(uri=index.uri, approximate_from=300, search_kind="exact")
    assert forced.search_kind_for("t") == "exact"


def test_approximate_search_sees_shards_written_after_the_index_and_not_removed_ones(tmp_path):
    """Rows written after the index was built are folded into it on the next search, and a
    removed shard's rows are never returned, though the index holds them."""
    uri = str(tmp_path / "lancedb")
    index = TemplateIndex(uri=uri, search_kind="approximate")
    table = table_name_for("all-MiniLM-L6-v2")
    write_shards(index, shards=4, per_shard=500, name=table)
    probe = unit_vectors(1, seed=42)
    before = index.search(table, probe, 3)
    assert vector_index_stats(uri, table).num_indexed_rows == 2_000

    index.replace_shard(table, "late", rows("late"), probe)
    hits = index.search(table, probe, 3)
    assert hits[0]["template_id"] == "late" and hits[0]["similarity"] == pytest.approx(1.0)
    assert hits[1:] == before[:2]
    stats = vector_index_stats(uri, table)
    assert (stats.num_indexed_rows, stats.num_unindexed_rows) == (2_001, 0)

    assert index.delete_shard("late") == 1
    assert index.search(table, probe, 3) == before
    assert all(hit["template_id"] != "late" for hit in index.search(table, probe, 2_001))


def test_a_table_too_small_for_an_index_is_searched_exact_in_approximate_mode(tmp_path):
    """Ten templates, some sharing a vector: the exact search's tie-break by template id holds,
    and no index is trained on them."""
    uri = str(tmp_path / "lancedb")
    exact = TemplateIndex(uri=uri, device="cpu", search_kind="exact")
    shared = unit_vectors(1, seed=5)
    vectors = np.concatenate([np.repeat(shared, 4, axis=0), unit_vectors(6, seed=6)])
    exact.replace_shard("t", "a", rows(*[f"t{i}" for i in (7, 2, 5, 9, 1, 3, 4, 6, 8, 0)]), vectors)
    approximate = TemplateIndex(uri=uri, search_kind="approximate")
    assert approximate.search_kind_for("t") == "exact"
    queries = np.concatenate([shared, unit_vectors(3, seed=7)])
    for limit in (1, 3, 10):
        assert approximate.search("t", queries, limit) == exact.search("t", queries, limit)
    assert [h["template_id"] for h in approximate.search("t", shared, 3)] == ["t2", "t5", "t7"]
    assert vector_index_stats(uri) is None
