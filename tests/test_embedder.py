"""The Embedder's batched path (padded batches sorted by length, Gaussian pooling on the device)
gives the vectors of the straightforward one, in the order of the texts, in fp32 and in bf16."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from fi_method.retrieval.pooling import gaussian_pooling
from fi_method.samples import wikipedia_articles
from fi_resources.embedder import Embedder, encoder_dtype

POOLING_K = 5


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Lengths from 1 token to past MiniLM's 256-token window, long and short interleaved so
    that sorting by length moves every text."""
    first, second = (article["text"] for article in wikipedia_articles(limit=2))
    return [
        "Hi.",
        first[:1500],
        "What is the capital of France?",
        second[:600],
        "",
        first[2000:2300],
        "Photosynthesis turns light into chemical energy.",
        second[600:1400],
    ]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(device="cpu", batch_size=3, pooling_k=POOLING_K)


@pytest.fixture(scope="module")
def bf16_embedder() -> Embedder:
    return Embedder(device="cpu", batch_size=3, pooling_k=POOLING_K, dtype="bf16")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def pooled_one_text_at_a_time(embedder: Embedder, texts: list[str]) -> np.ndarray:
    """What embed_pooled computed before: each text's unpadded token embeddings from
    encode(output_value="token_embeddings"), pooled on their own."""
    token_embeddings = embedder.encoder().encode(
        texts, batch_size=1, output_value="token_embeddings", show_progress_bar=False
    )
    return np.stack(
        [
            gaussian_pooling(tokens[None].float(), torch.ones(1, len(tokens)), k=POOLING_K)[0]
            .cpu()
            .numpy()
            for tokens in token_embeddings
        ]
    )


def test_pooled_vectors_match_each_text_pooled_on_its_own(embedder, texts):
    pooled = embedder.embed_pooled(texts)
    reference = pooled_one_text_at_a_time(embedder, texts)
    assert pooled.shape == (len(texts), POOLING_K + 1, embedder.dimension)
    assert pooled.dtype == np.float32
    assert cosines(pooled, reference).min() >= 0.9999
    assert np.allclose(pooled, reference, atol=1e-4)
    assert np.allclose(np.linalg.norm(pooled, axis=-1), 1.0, atol=1e-5)


def test_sentence_vectors_match_encode(embedder, texts):
    vectors = embedder.embed(texts)
    reference = embedder.encoder().encode(
        texts, batch_size=1, normalize_embeddings=True, show_progress_bar=False
    )
    assert vectors.shape == (len(texts), embedder.dimension)
    assert vectors.dtype == np.float32
    assert np.allclose(vectors, reference, atol=1e-5)


@pytest.mark.parametrize("method", ["embed", "embed_pooled"])
def test_rows_follow_the_texts_whatever_their_lengths(embedder, texts, method):
    embed = getattr(embedder, method)
    vectors = embed(texts)
    reversed_vectors = embed(texts[::-1])
    assert np.allclose(vectors, reversed_vectors[::-1], atol=1e-5)
    for row, text in enumerate(texts):
        assert np.allclose(vectors[row], embed([text])[0], atol=1e-5)
    # Distinct texts get distinct vectors, so a row in the wrong place would be seen.
    similarities = cosines(vectors[:, None], vectors[None, :])
    assert similarities[~np.eye(len(texts), dtype=bool)].max() < 0.99


@pytest.mark.parametrize("method", ["embed", "embed_pooled"])
def test_bf16_weights_give_the_fp32_vectors(embedder, bf16_embedder, texts, method):
    assert next(bf16_embedder.encoder().parameters()).dtype == torch.bfloat16
    vectors = getattr(bf16_embedder, method)(texts)
    assert vectors.dtype == np.float32
    assert cosines(vectors, getattr(embedder, method)(texts)).min() >= 0.999


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("method", ["embed", "embed_pooled"])
def test_on_a_gpu_the_bf16_encoder_gives_the_cpu_vectors(embedder, texts, method):
    gpu = Embedder(device="cuda", batch_size=3, pooling_k=POOLING_K)
    assert next(gpu.encoder().parameters()).dtype == torch.bfloat16
    assert cosines(getattr(gpu, method)(texts), getattr(embedder, method)(texts)).min() >= 0.999


def test_weights_are_bf16_on_a_gpu_and_fp32_on_the_cpu_unless_chosen(embedder):
    assert encoder_dtype("auto", "cuda") == torch.bfloat16
    assert encoder_dtype("auto", "cuda:1") == torch.bfloat16
    assert encoder_dtype("auto", "cpu") == torch.float32
    assert encoder_dtype("fp32", "cuda") == torch.float32
    assert next(embedder.encoder().parameters()).dtype == torch.float32


def test_no_texts_give_empty_arrays_of_the_right_shape(embedder):
    assert embedder.embed([]).shape == (0, embedder.dimension)
    assert embedder.embed_pooled([]).shape == (0, POOLING_K + 1, embedder.dimension)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_memory_goes_back_to_the_system():
    """Blocks freed between live ones stay resident until the allocator is asked to give them
    back: what embedding batch after batch of new shapes leaves behind."""
    program = """
from fi_resources.allocator import return_freed_memory

def resident_mb():
    status = open("/proc/self/status").read()
    return int(status.split("VmRSS:")[1].split()[0]) // 1024

blocks = [bytearray(64 * 1024) for _ in range(4000)]
kept = blocks[::16]
del blocks
before = resident_mb()
return_freed_memory()
print(before - resident_mb())
"""
    run = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    assert int(run.stdout) > 150, "of ~240 MB freed between live blocks, MB given back"
