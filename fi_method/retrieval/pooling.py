"""Stage B Gaussian pooling: one document's token embeddings become a global vector plus K local
vectors, each centred on an evenly spaced point of the document, so that a template can match a
passage in the middle of a long document and not only its average.

Token positions are 1-based (t = 1..T, as in the paper), and the centres c_k = k/(K+1) * T use the
same scale, so with T real tokens they split the document into K+1 equal steps. Real tokens are a
left-aligned prefix of each row (right padding, as sentence-transformers produces)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fi_method.retrieval.matching import GAUSSIAN_POOLING_K

# Defaults from the paper: a Gaussian width of sigma * T with sigma = 0.05, and alpha = 1.0, i.e.
# local vectors are not blended with the global one (K: fi_method.retrieval.matching).
GAUSSIAN_POOLING_SIGMA = 0.05
GAUSSIAN_POOLING_ALPHA = 1.0


def _check_every_row_has_a_token(attention_mask: torch.Tensor) -> None:
    if bool((attention_mask.sum(dim=-1) == 0).any()):
        raise ValueError("every document needs at least one real token in its attention mask")


def _batched_gaussian_weights(attention_mask: torch.Tensor, k: int, sigma: float) -> torch.Tensor:
    """Normalised weights (batch, k, seq) for right-padded rows of an attention mask."""
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    real_tokens = attention_mask.bool()
    lengths = real_tokens.sum(dim=-1).to(torch.float32)  # (batch,)
    device = attention_mask.device
    positions = torch.arange(1, attention_mask.shape[-1] + 1, device=device, dtype=torch.float32)
    fractions = torch.arange(1, k + 1, device=device, dtype=torch.float32) / (k + 1)
    centres = fractions[None, :, None] * lengths[:, None, None]  # (batch, k, 1)
    widths = sigma * lengths[:, None, None]
    log_weights = -0.5 * ((positions[None, None, :] - centres) / widths) ** 2
    # Normalising in log space: for short documents every exp() underflows to zero in float32
    # (one token, centre 1/6, width 0.05 gives exp(-139)), and the softmax still picks the nearest.
    log_weights = log_weights.masked_fill(~real_tokens[:, None, :], float("-inf"))
    return torch.softmax(log_weights, dim=-1)


def gaussian_weights(
    length: int,
    seq_len: int,
    k: int = GAUSSIAN_POOLING_K,
    sigma: float = GAUSSIAN_POOLING_SIGMA,
) -> torch.Tensor:
    """Weights (k, seq_len) of the k local vectors for a document of `length` real tokens padded
    to `seq_len`; each row sums to 1 and is zero on padding."""
    attention_mask = (torch.arange(seq_len) < length)[None, :]
    _check_every_row_has_a_token(attention_mask)
    return _batched_gaussian_weights(attention_mask, k, sigma)[0]


def gaussian_pooling(
    token_embeddings: torch.Tensor,
    attention_mask: torch.Tensor,
    k: int = GAUSSIAN_POOLING_K,
    sigma: float = GAUSSIAN_POOLING_SIGMA,
    alpha: float = GAUSSIAN_POOLING_ALPHA,
    check_mask: bool = True,
) -> torch.Tensor:
    """Pool token embeddings (batch, seq, dim) under an attention mask (batch, seq) into
    (batch, k + 1, dim) float32 vectors: the masked mean first, then the k blended local vectors
    (1 - alpha) * global + alpha * local_k, each L2-normalised. Runs on the embeddings' device.

    Raises ValueError when a row of the mask has no real token. That check reads the mask back
    from its device, which waits for all queued work there: `check_mask=False` skips it for a
    caller that checked the mask before moving it (a row without tokens then gives NaN)."""
    embeddings = token_embeddings.to(torch.float32)
    mask = attention_mask.to(device=embeddings.device, dtype=torch.float32)
    if check_mask:
        _check_every_row_has_a_token(mask)
    mean_weights = mask / mask.sum(dim=-1, keepdim=True)
    weights = torch.cat(
        [mean_weights[:, None, :], _batched_gaussian_weights(mask, k, sigma)], dim=1
    )
    # One batched product gives the global mean and the k local vectors together.
    pooled = torch.bmm(weights, embeddings)  # (batch, k + 1, dim)
    global_vector = pooled[:, :1]
    blended = (1.0 - alpha) * global_vector + alpha * pooled[:, 1:]
    return F.normalize(torch.cat([global_vector, blended], dim=1), dim=-1)
