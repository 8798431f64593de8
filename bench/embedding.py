"""Embedding throughput of stage B: the Embedder's Gaussian-pooled chunk vectors (what
document_chunks computes: K+1 = 6 vectors per chunk) and its sentence vectors (what template_index
computes) against plain `SentenceTransformer.encode` (one mean-pooled vector) of the same encoder,
loaded once in the Embedder's dtype (bf16 on a GPU, fp32 on the CPU), on the same chunks, so the
ratio is the cost of our batching and pooling.

Models: MiniLM (shipped offline) and an encoder of BGE-M3's shape (XLM-RoBERTa large: 24 layers,
1024 wide, 16 heads, 4096 FFN, 250,002-token vocabulary) with random weights, built on the target
device, and MiniLM's tokenizer (or --tokenizer's); speed does not depend on the weights.
`minilm-sized` is MiniLM's shape with random weights, for a machine without the shipped copy. Chunks are real Wikipedia
text (the demo's sample), cut to the requested tokens by the pipeline's own chunker. The compute
limit is the time the encoder's matmul FLOPs (2 x its non-embedding parameters per token) take at
the device's measured matmul speed in the encoder's dtype. The paths take turns in each repeat,
so that a shared machine's changing load falls on all of them alike.

--baseline names a copy of an earlier fi_resources/embedder.py (816d1d2 holds the one that pooled
the unpadded per-text tensors of encode(output_value="token_embeddings")); its embed_pooled runs
on the same loaded encoder, so only the pooling path differs.

    python -m bench.embedding --chunks 32 --repeats 1                    # CPU sizes
    git show 816d1d2:fi_resources/embedder.py > /tmp/old_embedder.py
    python -m bench.embedding --device cuda --chunks 4096 --chunk-tokens 256 --batch-size 128 \\
        --baseline /tmp/old_embedder.py                                  # a GPU, ~4 min
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import interleaved, load_module, matmul_peak, parser, report, table
from fi_method.retrieval.chunking import chunk_document
from fi_method.samples import wikipedia_articles
from fi_resources.embedder import Embedder, encoder_dtype, torch_device
from fi_resources.models import MINILM, sentence_transformer_source

# Random-weight encoders by name: their model class and published shape. BGE-M3 is XLM-RoBERTa
# large; MiniLM (all-MiniLM-L6-v2) is a 6-layer BERT, here for machines without the shipped copy.
RANDOM_SHAPES = {
    "bge-m3-sized": (
        "XLMRoberta",
        {
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "intermediate_size": 4096,
            "max_position_embeddings": 8194,
            "vocab_size": 250_002,
            "type_vocab_size": 1,
        },
    ),
    "minilm-sized": (
        "Bert",
        {
            "hidden_size": 384,
            "num_hidden_layers": 6,
            "num_attention_heads": 12,
            "intermediate_size": 1536,
            "max_position_embeddings": 512,
            "vocab_size": 30_522,
            "type_vocab_size": 2,
        },
    ),
}


def random_encoder(name: str, folder: Path, device: str, dtype, tokenizer_source: str) -> str:
    """A random-weight encoder of RANDOM_SHAPES[name], initialised on `device` and saved in
    `dtype` (the Embedder's, so that loading converts nothing) with the tokenizer of
    `tokenizer_source`."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    family, shape = RANDOM_SHAPES[name]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    config = getattr(transformers, f"{family}Config")(**shape, pad_token_id=tokenizer.pad_token_id)
    with torch.device(device):
        model = getattr(transformers, f"{family}Model")(config)
    model.to(dtype).save_pretrained(folder)
    del model
    # XLM-RoBERTa's positions start after the padding index (2), BERT's at 0.
    offset = 2 if family == "XLMRoberta" else 0
    tokenizer.model_max_length = shape["max_position_embeddings"] - offset
    tokenizer.save_pretrained(folder)
    return str(folder)


def chunks_of(embedder: Embedder, count: int, tokens: int) -> list[str]:
    """`count` chunks of up to `tokens` tokens of the Wikipedia sample, in article order."""
    chunks: list[str] = []
    for article in wikipedia_articles():
        for chunk in chunk_document(article["id"], article["text"], embedder.count_tokens, tokens):
            chunks.append(chunk.text)
            if len(chunks) == count:
                return chunks
    return (chunks * (count // len(chunks) + 1))[:count]  # the sample is finite: repeat it


def matmul_parameters(encoder) -> int:
    """The encoder's parameters that cost FLOPs: all but the embedding lookups."""
    return sum(p.numel() for name, p in encoder.named_parameters() if "embeddings" not in name)


def measure(name: str, model: str, device: str, args, peak: float, baseline) -> list[list]:
    """Rows of one model: plain encode, then the Embedder's paths, on the same chunks."""
    embedder = Embedder(model=model, device=device, batch_size=args.batch_size, dtype=args.dtype)
    tokens = min(args.chunk_tokens, embedder.chunk_tokens)
    chunks = chunks_of(embedder, args.chunks, tokens)
    total_tokens = sum(embedder.count_tokens(chunk) for chunk in chunks)
    encoder = embedder.encoder()
    works = {
        "encode": lambda: encoder.encode(
            chunks, batch_size=args.batch_size, show_progress_bar=False
        ),
        "Embedder.embed": lambda: embedder.embed(chunks),
        "Embedder.embed_pooled (Gaussian pooling)": lambda: embedder.embed_pooled(chunks),
    }
    if baseline is not None:
        before = baseline.Embedder(model=model, device=device, batch_size=args.batch_size)
        before._encoder = encoder
        works[f"embed_pooled of {Path(args.baseline).name}"] = lambda: before.embed_pooled(chunks)
    seconds = {name: median for name, (median, _) in interleaved(works, args.repeats, 1).items()}
    limit = 2 * matmul_parameters(encoder) * total_tokens / peak
    dtype = str(next(encoder.parameters()).dtype).removeprefix("torch.")
    return [
        [
            name,
            path,
            dtype,
            tokens,
            len(chunks) / elapsed,
            total_tokens / elapsed,
            elapsed / seconds["encode"],
            limit / elapsed,
        ]
        for path, elapsed in seconds.items()
    ]


def main() -> None:
    arguments = parser(__doc__.split("\n\n")[0])
    arguments.add_argument(
        "--models",
        nargs="+",
        default=["minilm", "bge-m3-sized"],
        choices=["minilm", *RANDOM_SHAPES],
        help="minilm: the shipped model; the others: random weights of that shape",
    )
    arguments.add_argument(
        "--tokenizer",
        help="tokenizer folder or id of the random-weight encoders (default: MiniLM's)",
    )
    arguments.add_argument("--chunks", type=int, default=128, help="chunks embedded per repeat")
    arguments.add_argument("--chunk-tokens", type=int, default=256)
    arguments.add_argument("--batch-size", type=int, default=32)
    arguments.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    arguments.add_argument("--baseline", help="an earlier embedder.py to compare with")
    args = arguments.parse_args()
    import torch

    device = torch_device(args.device)
    dtype = encoder_dtype(args.dtype, device)
    peak = matmul_peak(device, "bf16" if dtype == torch.bfloat16 else "fp32")
    baseline = load_module(args.baseline, "baseline_embedder") if args.baseline else None
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models:
            if name == "minilm":
                model = MINILM
            else:
                tokenizer = args.tokenizer or sentence_transformer_source(MINILM)
                model = random_encoder(name, Path(scratch) / name, device, dtype, tokenizer)
            rows += measure(name, model, device, args, peak, baseline)
    columns = [
        "model",
        "path",
        "weights",
        "max tokens/chunk",
        "chunks/s",
        "tokens/s",
        "time / encode's",
        "vs compute limit",
    ]
    body = table(columns, rows) + f"\n\nmeasured matmul {peak / 1e12:.3g} TFLOP/s."
    report("embedding", device, "Embedding throughput", body, args.save)


if __name__ == "__main__":
    main()
