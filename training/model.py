"""A Llama-style decoder: RMSNorm, rotary embeddings, grouped-query attention through
`scaled_dot_product_attention`, SwiGLU feed-forward. The rotary layout (halves, not interleaved
pairs) and the RMSNorm arithmetic follow Hugging Face's `LlamaForCausalLM`, so the export is a pure
renaming of weights.

For training, the model's forward pass also computes the loss (`targets=`): the output projection
and the cross-entropy run a chunk of tokens at a time (`linear_cross_entropy`), so the logits of a
whole batch, 4 GB in fp32 for 8k tokens of a 128k vocabulary, never exist at once."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts


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


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """The summed, masked cross-entropy of `hidden @ weight.T`, one chunk of tokens at a time.

    The gradients are computed in the forward pass, while each chunk's logits exist (as Liger
    Kernel's fused linear cross-entropy does), and the backward pass only scales them by the
    incoming gradient: no matmul is recomputed, and neither the logits nor their gradient are
    ever held for more than one chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, loss_mask, chunk_tokens):
        device = hidden.device.type
        # The matmuls run in autocast's dtype, as F.linear would under autocast; autocast is then
        # switched off so that every cast below is explicit.
        dtype = (
            torch.get_autocast_dtype(device)
            if torch.is_autocast_enabled(device)
            else torch.promote_types(hidden.dtype, weight.dtype)
        )
        wants_gradients = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        with torch.autocast(device, enabled=False):
            matrix = weight.to(dtype)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_hidden = torch.empty_like(hidden) if wants_gradients else None
            # fp32 across chunks: the weight's gradient sums every chunk's contribution.
            grad_weight = torch.zeros_like(weight, dtype=torch.float32) if wants_gradients else None
            for start in range(0, hidden.shape[0], chunk_tokens):
                rows = slice(start, start + chunk_tokens)
                inputs = hidden[rows].to(dtype)
                target = targets[rows, None]
                counts = loss_mask[rows, None].to(torch.float32)
                logits = (inputs @ matrix.T).float()
                log_normaliser = logits.logsumexp(dim=-1, keepdim=True)
                total += ((log_normaliser - logits.gather(1, target)) * counts).sum()
                if wants_gradients:
                    # d loss / d logits = (softmax - one_hot(target)) * mask, built in place.
                    grad_logits = logits.sub_(log_normaliser).exp_()
                    grad_logits.scatter_add_(1, target, torch.full_like(counts, -1.0))
                    grad_logits = grad_logits.mul_(counts).to(dtype)
                    grad_hidden[rows] = grad_logits @ matrix
                    grad_weight += grad_logits.T @ inputs
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (
            grad_hidden * grad_total,
            (grad_weight * grad_total).to(ctx.weight_dtype),
            None,
            None,
            None,
        )


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    loss_mask: torch.Tensor,
    chunk_tokens: int,
) -> torch.Tensor:
    """Cross-entropy of the logits `hidden @ weight.T` ([tokens, dim] @ [dim, vocab]) against
    `targets` [tokens], summed over the tokens where `loss_mask` [tokens] is true. Logits are
    computed in fp32 from autocast's matmul dtype, as `F.linear` then `.float()` gives them.

    `chunk_tokens` > 0 computes `chunk_tokens` tokens' logits at a time and their gradients at
    once (the backward pass only scales them); 0 materialises every token's logits and lets
    autograd differentiate `F.cross_entropy`, the reference the chunked path is tested against."""
    if chunk_tokens <= 0:
        losses = F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="none")
        return (losses * loss_mask).sum()
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, loss_mask, chunk_tokens)


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


ACTIVATION_CHECKPOINTING = ("none", "selective", "full")

# What "selective" activation checkpointing keeps: the outputs of the matmuls and of attention,
# the ops whose recomputation would cost FLOPs. Norms, rotary embeddings, SiLU, the gate product
# and dtype casts are recomputed in the backward pass: together they hold more activation memory
# than the matmuls' outputs, and recomputing them costs memory bandwidth, not FLOPs.
_KEPT_BY_SELECTIVE = [
    torch.ops.aten.mm.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
]
_keep_matmuls_and_attention = functools.partial(
    create_selective_checkpoint_contexts, _KEPT_BY_SELECTIVE
)


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
        # Training settings, not architecture (set by the trainer, never saved with the weights).
        # Activation checkpointing recomputes each block's activations in the backward pass instead
        # of keeping them, in training only: "none" keeps everything; "selective" keeps the
        # matmuls' and attention's outputs and recomputes the cheap ops between them; "full" keeps
        # only each block's input and recomputes the whole block, a third more FLOPs.
        self.activation_checkpointing = "none"
        # Tokens per chunk of the output projection and cross-entropy (0: all at once). 1024
        # tokens of a 128k vocabulary are 0.5 GB of fp32 logits, and still a large matmul.
        self.loss_chunk_tokens = 1024

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
        targets: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [batch, seq, vocab]; or, given `targets` [batch, seq], the cross-entropy summed
        over the targets where `loss_mask` [batch, seq] is true (every target when None), with
        the logits computed a chunk at a time (`loss_chunk_tokens`). `positions` [batch, seq]
        picks each token's rotary angle (default 0..seq-1); `document_ids` [batch, seq] restricts
        attention to the same document."""
        length = tokens.shape[1]
        if positions is None:
            cos, sin = self.rope_cos[:length], self.rope_sin[:length]
        else:
            cos, sin = self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]
        attn_mask = None if document_ids is None else document_attention_mask(document_ids)
        x = self.tok_embeddings(tokens)
        for layer in self.layers:
            x = self._run_block(layer, x, cos, sin, attn_mask)
        x = self.norm(x)
        weight = self.tok_embeddings.weight if self.output is None else self.output.weight
        if targets is None:
            return F.linear(x, weight)
        if loss_mask is None:
            loss_mask = torch.ones_like(targets, dtype=torch.bool)
        return linear_cross_entropy(
            x.flatten(0, 1), weight, targets.flatten(), loss_mask.flatten(), self.loss_chunk_tokens
        )

    def _run_block(self, layer: Block, x, cos, sin, attn_mask) -> torch.Tensor:
        """One block, its activations kept or recomputed as `activation_checkpointing` says."""
        mode = self.activation_checkpointing if self.training else "none"
        if mode == "none":
            return layer(x, cos, sin, attn_mask)
        if mode == "full":
            return checkpoint(layer, x, cos, sin, attn_mask, use_reentrant=False)
        keep = _keep_matmuls_and_attention
        return checkpoint(layer, x, cos, sin, attn_mask, use_reentrant=False, context_fn=keep)


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
