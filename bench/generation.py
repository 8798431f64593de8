"""Generation throughput of the `transformers` engine (fi_resources/engines.py) in the
instantiator role: output tokens/s on Llama-3.2-1B- and 3B-shaped models with random weights
(speed does not depend on them; end-of-sequence is disabled, so every answer is exactly
--new-tokens long), batch sizes swept (`auto`: the engine's own choice from free memory). Prompts
are the released instantiator's input (a template and a Wikipedia document as JSON), or the texts
of a --prompts file, cut to --prompt-tokens Llama-3 tokens. The time includes tokenisation, prefill and decoding, as a role
call pays them. The models are built on the device they run on (a random 1B Llama takes about a
minute to build on a CPU, seconds on a GPU). --decoding compares the engine's KV caches: dynamic
(eager decoding, the engine's default on a CPU) and static (on a GPU, generate compiles the
decoding step into CUDA graphs; the untimed warm-up run pays the compile).

Two yardsticks: vLLM's published offline throughput on one H100 (FACTS.md: ~16k output tokens/s
for a ~1B model, ~8.5k for ~4B, so at least that for 3B), and the compute limit, the time the
matmul FLOPs of the batch (2 x parameters x (prompt + new tokens) each) take at the device's
measured matmul speed. Prefill is compute-bound; decoding is bound by memory bandwidth, so on a
GPU the anchor is the yardstick that counts.

    python -m bench.generation --shapes 1b --batch-sizes 1 4 --new-tokens 16 --repeats 1   # CPU
    python -m bench.generation --shapes 1b 3b --batch-sizes 1 32 256 auto --new-tokens 256 \
        --repeats 1                                                        # a GPU, < 5 min
    python -m bench.generation --shapes 1b --batch-sizes 1 256 --new-tokens 256 \
        --decoding dynamic static                  # the goal: 1B, batch 256, >= 0.3 of vLLM

The weights go to a temporary folder (2.5 GB for 1B, 6.4 GB for 3B, one at a time): where the
temporary folder is small, point TMPDIR at a larger disk.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from bench.common import matmul_peak, median_seconds, parser, report, table
from fi_method.corpus.packing import load_training_tokenizer
from fi_method.roles import Request
from fi_resources.embedder import torch_device
from fi_resources.engines import EngineConfig, TransformersEngine

# Llama-3.2's published shapes (config.json of meta-llama/Llama-3.2-1B and -3B).
SHAPES = {
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
    },
    "3b": {
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
    },
}
VLLM_ANCHOR = {"1b": 16_000, "3b": 8_500}
DECODING = {"auto": None, "dynamic": False, "static": True}
TEMPLATE = "How does <fi>a process or mechanism</fi> work in <fi>a field</fi>?"


def random_llama(shape: str, folder: Path, device: str) -> str:
    """A random-weight Llama of `shape` with the Llama-3 tokenizer, built on `device` and saved
    in bf16, with no end-of-sequence token in its generation config."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(load_training_tokenizer().source)
    config = LlamaConfig(
        **SHAPES[shape],
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        rope_theta=500_000.0,
        max_position_embeddings=131_072,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=None,
    )
    torch.set_default_dtype(torch.bfloat16)
    try:
        # Initialising a billion weights takes the CPU about a minute and a GPU seconds.
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(torch.float32)
    model.generation_config.eos_token_id = None
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def instantiator_inputs(count: int) -> list[str]:
    """The released instantiator's input for `count` Wikipedia articles of the demo's sample
    (fewer when the sample has fewer)."""
    # Imported here: the instantiator's rules engine needs spaCy and wordfreq, and the sample
    # gensim, none of which a run on --prompts needs.
    from fi_method.samples import wikipedia_articles
    from fi_method.synthesis.instantiator import build_messages

    inputs = []
    for article in wikipedia_articles(limit=count):
        (message,) = build_messages(TEMPLATE, article["text"], "bare")
        inputs.append(message["content"])
    return inputs


def prompts_of(texts: list[str], count: int, tokens: int, tokenizer) -> list[str]:
    """`count` prompts of exactly `tokens` tokens, cut from `texts` in turn."""
    texts = (texts * (count // len(texts) + 1))[:count]
    return [
        tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids[:tokens])
        for text in texts
    ]


def batch_size(text: str) -> int | None:
    """A --batch-sizes value: a number of prompts, or `auto` (None), the engine's choice."""
    return None if text == "auto" else int(text)


def decoding_label(engine: TransformersEngine) -> str:
    """How the engine decodes now: its KV cache, and whether generate compiles the step."""
    if not engine.static_cache:
        return "dynamic cache, eager"
    return "static cache, compiled" if engine.device.startswith("cuda") else "static cache, eager"


def measure(shape: str, engine: TransformersEngine, args, texts, device: str, peak: float):
    """One row per decoding mode and batch size: throughput, time, and the two yardsticks."""
    parameters = sum(p.numel() for p in engine.hf_model.parameters())
    rows = []
    for decoding in args.decoding:
        for batch in args.batch_sizes:
            engine.config = engine.config.model_copy(
                update={"batch_size": batch, "static_cache": DECODING[decoding]}
            )
            # The engine sizes an auto batch by its longest prompt: the tokens asked and the BOS.
            count = batch or engine.auto_batch_size(args.prompt_tokens + 1, args.new_tokens)
            prompts = prompts_of(texts, count, args.prompt_tokens, engine.tokenizer)
            requests = [Request(prompt=prompt) for prompt in prompts]
            seconds = median_seconds(
                lambda requests=requests: list(engine.generate(requests, args.new_tokens)),
                args.repeats,
            )
            speed = count * args.new_tokens / seconds
            anchor = f"{speed / VLLM_ANCHOR[shape]:.3f}" if device.startswith("cuda") else "- (CPU)"
            flops = 2 * parameters * (args.prompt_tokens + args.new_tokens) * count
            rows.append(
                [
                    f"Llama-3.2-{shape.upper()} shape",
                    decoding_label(engine),
                    count if batch else f"auto ({count})",
                    speed,
                    seconds,
                    flops / peak / seconds,
                    anchor,
                ]
            )
    return rows


def main() -> None:
    import torch

    arguments = parser(__doc__.split("\n\n")[0])
    arguments.add_argument("--shapes", nargs="+", default=["1b"], choices=sorted(SHAPES))
    arguments.add_argument("--batch-sizes", type=batch_size, nargs="+", default=[1, 4])
    arguments.add_argument("--prompt-tokens", type=int, default=512)
    arguments.add_argument("--new-tokens", type=int, default=16)
    arguments.add_argument(
        "--decoding",
        nargs="+",
        default=["auto"],
        choices=sorted(DECODING),
        help="the engine's KV cache: dynamic (eager decoding), static (on a GPU, generate "
        "compiles the decoding step into CUDA graphs), or auto, the engine's default: static on "
        "a GPU only",
    )
    arguments.add_argument(
        "--prompts",
        help="a JSON file holding a list of prompt texts to cut prompts from (default: the "
        "instantiator's inputs for the Wikipedia sample)",
    )
    args = arguments.parse_args()
    device = torch_device(args.device)
    peak = matmul_peak(device)
    if args.prompts:
        texts = json.loads(Path(args.prompts).read_text(encoding="utf-8"))
    else:
        texts = instantiator_inputs(max(b or 256 for b in args.batch_sizes))
    rows = []
    built = []
    for shape in args.shapes:
        # One model on disk at a time: the temporary folder of a GPU machine may be small.
        with tempfile.TemporaryDirectory() as scratch:
            started = time.perf_counter()
            folder = random_llama(shape, Path(scratch) / shape, device)
            built.append(f"{shape} {time.perf_counter() - started:.0f} s")
            engine = TransformersEngine(
                EngineConfig(engine="transformers", model=folder, home=scratch, device=device)
            )
            engine.load()
            rows += measure(shape, engine, args, texts, device, peak)
            del engine
        # The next shape's model gets this one's memory, and compiles of its own.
        torch.compiler.reset()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    columns = [
        "model",
        "decoding",
        "batch",
        "output tokens/s",
        "s per batch",
        "vs compute limit",
        "vs vLLM anchor (H100)",
    ]
    body = table(columns, rows) + (
        f"\n\n{args.prompt_tokens}-token prompts, {args.new_tokens} new tokens each, greedy; "
        f"measured matmul {peak / 1e12:.3g} TFLOP/s; random models built and saved in "
        f"{', '.join(built)}."
    )
    report("generation", device, "Generation throughput (transformers engine)", body, args.save)


if __name__ == "__main__":
    main()
