"""Embedding throughput of stage B: the Embedder's Gaussian-pooled chunk vectors (what
document_chunks computes: K+1 = 6 vectors per chunk) against plain `SentenceTransformer.encode`
(one mean-pooled vector) on the same chunks, so the ratio is the cost of our pooling.

Models: MiniLM (shipped offline) and an encoder of BGE-M3's shape (XLM-RoBERTa large: 24 layers,
1024 wide, 16 heads, 4096 FFN, 250,002-token vocabulary) with random weights and MiniLM's
tokenizer; speed does not depend on the weights. Chunks are real Wikipedia text (the demo's
sample), cut to the requested tokens by the pipeline's own chunker. The compute limit is the time
the encoder's matmul FLOPs (2 x its non-embedding parameters per token) take at the device's
measured matmul speed.

    python -m bench.embedding                      # CPU sizes
    python -m bench.embedding --chunks 4096 --chunk-tokens 512 --batch-size 128   # a GPU
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import matmul_peak, median_seconds, parser, report, table
from fi_method.chunking import chunk_document
from fi_method.samples import wikipedia_articles
from fi_resources.embedder import Embedder, torch_device
from fi_resources.models import MINILM, sentence_transformer_source

BGE_M3_SHAPE = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "max_position_embeddings": 8194,
    "vocab_size": 250_002,
    "type_vocab_size": 1,
}


def bge_m3_sized(folder: Path) -> str:
    """A random-weight encoder of BGE-M3's shape, saved with MiniLM's tokenizer."""
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaModel

    tokenizer = AutoTokenizer.from_pretrained(sentence_transformer_source(MINILM))
    config = XLMRobertaConfig(**BGE_M3_SHAPE, pad_token_id=tokenizer.pad_token_id)
    XLMRobertaModel(config).save_pretrained(folder)
    tokenizer.model_max_length = 8192
    tokenizer.save_pretrained(folder)
    return str(folder)


def chunks_of(embedder: Embedder, count: int, tokens: int) -> list[str]:
    """`count` chunks of up to `tokens` tokens of the Wikipedia sample, in article order."""
    chunks: list[str] = []
    for article in wikipedia_articles():
        for chunk in chunk_document(article["id"], article["text"], embedder.count_tokens, tokens):
            chunks.append(chunk.text)
    if len(chunks) < count:  # the sample is finite: repeat it
        chunks = chunks * (count // len(chunks) + 1)
    return chunks[:count]


def matmul_parameters(encoder) -> int:
    """The encoder's parameters that cost FLOPs: all but the embedding lookups."""
    return sum(p.numel() for name, p in encoder.named_parameters() if "embeddings" not in name)


def measure(name: str, model: str, device: str, args, peak: float) -> list[list]:
    """Rows of one model: plain encode, then the Embedder, on the same chunks."""
    embedder = Embedder(model=model, device=device, batch_size=args.batch_size)
    tokens = min(args.chunk_tokens, embedder.chunk_tokens)
    chunks = chunks_of(embedder, args.chunks, tokens)
    total_tokens = sum(embedder.count_tokens(chunk) for chunk in chunks)
    encoder = embedder.encoder()
    plain = median_seconds(
        lambda: encoder.encode(chunks, batch_size=args.batch_size, show_progress_bar=False),
        args.repeats,
    )
    pooled = median_seconds(lambda: embedder.embed_pooled(chunks), args.repeats)
    limit = 2 * matmul_parameters(encoder) * total_tokens / peak
    return [
        [
            name,
            path,
            tokens,
            len(chunks) / seconds,
            total_tokens / seconds,
            seconds / plain,
            limit / seconds,
        ]
        for path, seconds in (("encode", plain), ("Embedder (Gaussian pooling)", pooled))
    ]


def main() -> None:
    arguments = parser(__doc__.split("\n\n")[0])
    arguments.add_argument("--models", nargs="+", default=["minilm", "bge-m3-sized"])
    arguments.add_argument("--chunks", type=int, default=128, help="chunks embedded per repeat")
    arguments.add_argument("--chunk-tokens", type=int, default=256)
    arguments.add_argument("--batch-size", type=int, default=32)
    args = arguments.parse_args()
    device = torch_device(args.device)
    peak = matmul_peak(device)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models:
            model = MINILM if name == "minilm" else bge_m3_sized(Path(scratch) / name)
            rows += measure(name, model, device, args, peak)
    columns = [
        "model",
        "path",
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
