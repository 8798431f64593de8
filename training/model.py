"""A Llama-style decoder: RMSNorm, rotary embeddings, grouped-query attention through
`scaled_dot_product_attention`, SwiGLU feed-forward. The rotary layout (halves, not interleaved
pairs) and the RMSNorm arithmetic follow Hugging Face's `LlamaForCausalLM`, so the export is a pure
renaming of weights."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class ModelConfig:
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    ffn_dim: int = 128
    vocab_size: int = 0
    max_seq_len: int = 4096
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


# Nominal sizes: 20m-300m count the transformer blocks (a 128k vocabulary would dwarf them), 1.8b
# and 7b are the totals their papers quote. 1.8b is the FineInstructions paper's model.
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128),
    "20m": ModelConfig(dim=384, n_layers=12, n_heads=6, n_kv_heads=6, ffn_dim=1024),
    "150m": ModelConfig(dim=1024, n_layers=12, n_heads=16, n_kv_heads=16, ffn_dim=2816),
    "300m": ModelConfig(dim=1024, n_layers=24, n_heads=16, n_kv_heads=16, ffn_dim=2816),
    "1.8b": ModelConfig(dim=2048, n_layers=25, n_heads=16, n_kv_heads=16, ffn_dim=5632),
    "7b": ModelConfig(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, ffn_dim=11008),
}


def model_config(preset: str, vocab_size: int, overrides: dict | None = None) -> ModelConfig:
    """The preset with `vocab_size` and any field overrides applied (values are cast to the
    field's type, so strings from a command line work)."""
    types = {f.name: type(f.default) for f in fields(ModelConfig)}
    cast = {}
    for name, value in (overrides or {}).items():
        if name not in types:
            raise ValueError(f"unknown model field {name!r}; known: {sorted(types)}")
        if types[name] is bool and isinstance(value, str):
            value = value.lower() in ("1", "true", "yes")
        cast[name] = types[name](value)
    config = replace(PRESETS[preset], **{"vocab_size": vocab_size, **cast})
    if config.dim % config.n_heads or config.n_heads % config.n_kv_heads:
        raise ValueError("dim must divide by n_heads, and n_heads by n_kv_heads")
    return config


def parameter_count(config: ModelConfig, include_embedding: bool = True) -> int:
    """Parameters of the model; without the input embedding, which is a lookup and costs no
    FLOPs (the output projection always counts, tied or not)."""
    kv_width = config.n_kv_heads * config.head_dim
    attention = 2 * config.dim * config.dim + 2 * config.dim * kv_width
    block = attention + 3 * config.dim * config.ffn_dim + 2 * config.dim
    matrix = config.vocab_size * config.dim
    total = config.n_layers * block + config.dim + matrix
    if include_embedding and not config.tie_embeddings:
        total += matrix
    return total


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token, PaLM's 6N + 12·layers·dim·seq_len: forward and backward of every
    matmul weight, plus the attention scores and their weighted sum (full, not causal-halved)."""
    n = parameter_count(config, include_embedding=False)
    return 6 * n + 12 * config.n_layers * config.dim * seq_len


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In fp32 and cast back before the weight, as Hugging Face's LlamaRMSNorm does.
        hidden = x.float()
        hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * hidden.to(x.dtype)


def rotary_tables(config: ModelConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every position up to max_seq_len, each [max_seq_len, head_dim]."""
    half = torch.arange(0, config.head_dim, 2, device=device, dtype=torch.float32)
    inverse_frequency = 1.0 / (config.rope_theta ** (half / config.head_dim))
    positions = torch.arange(config.max_seq_len, device=device, dtype=torch.float32)
    angles = torch.outer(positions, inverse_frequency)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads = config.n_heads, config.n_kv_heads
        self.head_dim = config.head_dim
        self.wq = nn.Linear(config.dim, config.n_heads * config.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False)

    def forward(self, x, cos, sin, attn_mask):
        batch, length, _ = x.shape
        q = self.wq(x).view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None, enable_gqa=True
        )
        return self.wo(out.transpose(1, 2).reshape(batch, length, -1))


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(config.dim, config.ffn_dim, bias=False)
        self.w3 = nn.Linear(config.dim, config.ffn_dim, bias=False)
        self.w2 = nn.Linear(config.ffn_dim, config.dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(self, x, cos, sin, attn_mask):
        x = x + self.attention(self.attention_norm(x), cos, sin, attn_mask)
        return x + self.feed_forward(self.ffn_norm(x))


def document_attention_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """Block-diagonal causal mask [batch, 1, seq, seq]: True where a query may attend a key, i.e.
    the key is not later and belongs to the same document."""
    length = document_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=document_ids.device).tril()
    same_document = document_ids[:, :, None] == document_ids[:, None, :]
    return (same_document & causal)[:, None]


class Transformer(nn.Module):
    """Build it on the meta device, shard it if needed, move it with `to_empty`, then call
    `init_weights`: no rank ever materialises the whole model twice."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        # Tied: the logits reuse the embedding matrix directly, which stays correct after
        # `to_empty` and sharding (a shared Parameter object would not).
        self.output = (
            None if config.tie_embeddings else nn.Linear(config.dim, config.vocab_size, bias=False)
        )
        cos, sin = rotary_tables(config, torch.device("meta"))
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        # Activation checkpointing: keep only each block's input in training and recompute the
        # block in the backward pass (a third more FLOPs for far less activation memory).
        self.activation_checkpointing = False

    @torch.no_grad()
    def init_weights(self) -> None:
        """Normal(0, init_std) weights, residual output projections scaled by 1/sqrt(2·layers)
        (GPT-2) so the residual stream does not grow with depth; norms at one."""
        std = self.config.init_std
        self.rope_cos, self.rope_sin = rotary_tables(self.config, self.rope_cos.device)
        nn.init.normal_(self.tok_embeddings.weight, std=std)
        for layer in self.layers:
            for linear in (layer.attention.wq, layer.attention.wk, layer.attention.wv):
                nn.init.normal_(linear.weight, std=std)
            for linear in (layer.feed_forward.w1, layer.feed_forward.w3):
                nn.init.normal_(linear.weight, std=std)
            for linear in (layer.attention.wo, layer.feed_forward.w2):
                nn.init.normal_(linear.weight, std=std / math.sqrt(2 * self.config.n_layers))
            layer.attention_norm.weight.fill_(1.0)
            layer.ffn_norm.weight.fill_(1.0)
        self.norm.weight.fill_(1.0)
        if self.output is not None:
            nn.init.normal_(self.output.weight, std=std)

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [batch, seq, vocab]. `positions` [batch, seq] picks each token's rotary angle
        (default 0..seq-1); `document_ids` [batch, seq] restricts attention to the same document."""
        length = tokens.shape[1]
        if positions is None:
            cos, sin = self.rope_cos[:length], self.rope_sin[:length]
        else:
            cos, sin = self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]
        attn_mask = None if document_ids is None else document_attention_mask(document_ids)
        x = self.tok_embeddings(tokens)
        for layer in self.layers:
            if self.activation_checkpointing and self.training:
                x = checkpoint(layer, x, cos, sin, attn_mask, use_reentrant=False)
            else:
                x = layer(x, cos, sin, attn_mask)
        x = self.norm(x)
        if self.output is None:
            return F.linear(x, self.tok_embeddings.weight)
        return self.output(x)


def build_model(
    config: ModelConfig,
    device: torch.device,
    seed: int,
    parallelize: Callable[[Transformer], None] | None = None,
) -> Transformer:
    """An initialised model on `device`. `parallelize` (e.g. FSDP sharding) runs while the model
    is still on the meta device, so each rank only ever allocates its own shard."""
    with torch.device("meta"):
        model = Transformer(config)
    if parallelize is not None:
        parallelize(model)
    model.to_empty(device=device)
    torch.manual_seed(seed)
    model.init_weights()
    return model
