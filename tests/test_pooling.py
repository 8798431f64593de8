import math

import pytest
import torch

from fi_method.retrieval.matching import GAUSSIAN_POOLING_K
from fi_method.retrieval.pooling import gaussian_pooling, gaussian_weights

TOKENS = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0]]


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector]


def _hand_weights(length: int, k: int, sigma: float) -> list[list[float]]:
    rows = []
    for index in range(1, k + 1):
        centre = index / (k + 1) * length
        raw = [
            math.exp(-0.5 * ((t - centre) / (sigma * length)) ** 2) for t in range(1, length + 1)
        ]
        rows.append([w / sum(raw) for w in raw])
    return rows


def test_gaussian_weights_match_the_formula_and_ignore_padding():
    weights = gaussian_weights(length=4, seq_len=6, k=2, sigma=0.5)
    expected = [row + [0.0, 0.0] for row in _hand_weights(4, k=2, sigma=0.5)]
    assert torch.allclose(weights, torch.tensor(expected), atol=1e-6)


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.0])
def test_pooling_matches_a_hand_computation(alpha):
    weights = _hand_weights(4, k=2, sigma=0.5)
    global_vector = [sum(token[d] for token in TOKENS) / 4 for d in range(2)]
    expected = [_unit(global_vector)]
    for row in weights:
        local = [sum(w * token[d] for w, token in zip(row, TOKENS)) for d in range(2)]
        expected.append(_unit([(1 - alpha) * g + alpha * x for g, x in zip(global_vector, local)]))

    pooled = gaussian_pooling(torch.tensor([TOKENS]), torch.ones(1, 4), k=2, sigma=0.5, alpha=alpha)
    assert pooled.shape == (1, 3, 2)
    assert pooled.dtype == torch.float32
    assert torch.allclose(pooled[0], torch.tensor(expected), atol=1e-6)


def test_padding_with_garbage_does_not_change_the_result():
    alone = gaussian_pooling(torch.tensor([TOKENS]), torch.ones(1, 4), k=2, sigma=0.5, alpha=0.5)
    padded_tokens = torch.cat([torch.tensor([TOKENS]), torch.full((1, 3, 2), 1e6)], dim=1)
    padded_mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]])
    padded = gaussian_pooling(padded_tokens, padded_mask, k=2, sigma=0.5, alpha=0.5)
    assert torch.allclose(alone, padded, atol=1e-6)


def test_each_local_vector_attends_to_its_own_fifth():
    regions, tokens_per_region = 5, 20
    region_of_token = torch.arange(regions * tokens_per_region) // tokens_per_region
    embeddings = torch.eye(regions)[region_of_token][None]  # fifth r points along axis r
    pooled = gaussian_pooling(embeddings, torch.ones(1, regions * tokens_per_region))

    assert pooled.shape == (1, GAUSSIAN_POOLING_K + 1, regions)
    assert torch.allclose(pooled[0, 0], torch.full((regions,), 1 / math.sqrt(regions)), atol=1e-6)
    assert pooled[0, 1:].argmax(dim=-1).tolist() == list(range(regions))


def test_norms_are_one_and_a_batch_equals_each_document_alone():
    torch.manual_seed(0)
    embeddings = torch.randn(2, 9, 3)
    mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4])
    batched = gaussian_pooling(embeddings, mask, alpha=0.5)

    assert torch.allclose(batched.norm(dim=-1), torch.ones(2, GAUSSIAN_POOLING_K + 1), atol=1e-6)
    first = gaussian_pooling(embeddings[:1], mask[:1], alpha=0.5)
    second = gaussian_pooling(embeddings[1:, :5], mask[1:, :5], alpha=0.5)
    assert torch.allclose(batched, torch.cat([first, second]), atol=1e-6)


def test_a_single_token_document_gives_that_token_everywhere():
    token = torch.tensor([3.0, 4.0])
    embeddings = torch.stack([token, torch.tensor([9.0, -9.0])])[None]
    pooled = gaussian_pooling(embeddings, torch.tensor([[1, 0]]))
    assert torch.allclose(pooled[0], torch.tensor([0.6, 0.8]).expand(GAUSSIAN_POOLING_K + 1, 2))


def test_an_empty_mask_is_rejected():
    with pytest.raises(ValueError, match="real token"):
        gaussian_pooling(torch.ones(2, 3, 2), torch.tensor([[1, 1, 0], [0, 0, 0]]))


def test_bf16_embeddings_are_pooled_in_float32():
    """A bf16 encoder's token embeddings pool like the same values given in float32."""
    torch.manual_seed(1)
    embeddings = torch.randn(3, 40, 16).to(torch.bfloat16)
    mask = (torch.arange(40)[None, :] < torch.tensor([[40], [23], [2]])).long()
    pooled = gaussian_pooling(embeddings, mask)
    assert pooled.dtype == torch.float32
    assert torch.allclose(pooled, gaussian_pooling(embeddings.float(), mask), atol=1e-6)


def test_skipping_the_mask_check_changes_nothing_for_a_valid_mask():
    torch.manual_seed(2)
    embeddings = torch.randn(2, 9, 3)
    mask = torch.tensor([[1] * 9, [1] * 4 + [0] * 5])
    checked = gaussian_pooling(embeddings, mask, alpha=0.5)
    assert torch.equal(gaussian_pooling(embeddings, mask, alpha=0.5, check_mask=False), checked)
