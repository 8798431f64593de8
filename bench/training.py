"""Trainer throughput: tokens/s and MFU of `python -m training.train` for the model presets (1.8b
is the paper's model), per batch size, torch.compile on/off and activation checkpointing mode,
against the device's limit. The limit is the tokens/s at which the model's FLOPs (6N plus
attention, training/model.py flops_per_token) would use the whole peak: the published bf16 peak on
a known GPU (the trainer's own MFU), a measured float32 matmul on the CPU. The trainer runs in bf16
autocast on a GPU.

Data: random token ids in the packed format, a Llama-3 vocabulary (128,256), so the output layer
costs what it costs in the real runs. tokens/s is the median over the logged steps after the first
two (compilation and warm-up); "first step s" is the first step's time, compilation included.
The trainer runs with --no-save (no checkpoint, no export: a 1.8b checkpoint with its optimizer
state is 22 GB, its export 7 GB) and each configuration's run directory is deleted as soon as it
is measured. "peak GiB" is the most GPU memory the trainer's tensors took.

    python -m bench.training --presets tiny 150m --seq-len 256 --batch-size 2 --steps 6   # CPU

The GPU commands are sized to finish in under 5 minutes each: one trainer process per
configuration, whose start-up and compilation take most of its time, then 10 steps. On one H100,
the goal of 45 % MFU for the 1.8b preset at seq 2048 (if batch 8 reads "out of memory", the next
run is `--batch-size 8 --recompute selective`):

    python -m bench.training --presets 1.8b --seq-len 2048 --batch-size 4 8 --compile on \\
        --recompute none --steps 10

and the 150m preset, compiled, in each activation checkpointing mode:

    python -m bench.training --presets 150m --seq-len 2048 --batch-size 16 --compile on \\
        --recompute none selective full --steps 10
"""

from __future__ import annotations

import itertools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from bench.common import matmul_peak, parser, report, table
from fi_resources.embedder import torch_device
from training.model import ACTIVATION_CHECKPOINTING, flops_per_token, model_config, parameter_count
from training.train import peak_flops

VOCAB = 128_256
SAMPLE_TOKENS = 1000


def random_corpus(folder: Path, tokens: int, seed: int = 0) -> Path:
    """Packed samples of random ids, `tokens` in all."""
    generator = np.random.default_rng(seed)
    count = tokens // SAMPLE_TOKENS + 1
    ids = generator.integers(3, VOCAB, (count, SAMPLE_TOKENS), dtype=np.int32)
    folder.mkdir(parents=True, exist_ok=True)
    samples = pa.table(
        {
            "doc_id": [f"d{i}" for i in range(count)],
            "input_ids": pa.FixedSizeListArray.from_arrays(ids.ravel(), SAMPLE_TOKENS).cast(
                pa.list_(pa.int32())
            ),
            "loss_mask": pa.FixedSizeListArray.from_arrays(
                np.ones(ids.size, dtype=np.int8), SAMPLE_TOKENS
            ).cast(pa.list_(pa.int8())),
        }
    )
    pq.write_table(samples, folder / "samples.parquet")
    return folder


def run_trainer(
    data: Path, out: Path, preset: str, args, batch_size: int, compile_: bool, recompute: str
) -> list[dict] | None:
    """The trainer's JSON metric lines for one configuration (None when it ran out of memory)."""
    command = [
        sys.executable,
        "-m",
        "training.train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--preset",
        preset,
        "--model.vocab_size",
        str(VOCAB),
        "--bos-id",
        "1",
        "--eos-id",
        "2",
        "--seq-len",
        str(args.seq_len),
        "--batch-size",
        str(batch_size),
        "--steps",
        str(args.steps),
        "--warmup-steps",
        "1",
        "--log-every",
        "1",
        "--no-save",
        "--compile" if compile_ else "--no-compile",
        "--activation-checkpointing",
        recompute,
    ]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        if "out of memory" in done.stderr.lower():
            return None
        raise RuntimeError(f"trainer failed:\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    arguments = parser(__doc__.split("\n\n")[0])
    arguments.add_argument("--presets", nargs="+", default=["tiny", "150m"])
    arguments.add_argument("--seq-len", type=int, default=256)
    arguments.add_argument("--batch-size", type=int, nargs="+", default=[2])
    arguments.add_argument("--steps", type=int, default=6)
    arguments.add_argument("--compile", choices=["off", "on", "both"], default="both")
    arguments.add_argument(
        "--recompute",
        nargs="+",
        choices=ACTIVATION_CHECKPOINTING,
        default=list(ACTIVATION_CHECKPOINTING),
        help="activation checkpointing modes to measure",
    )
    args = arguments.parse_args()
    device = torch_device(args.device)
    peak, peak_label = peak_flops(torch.device(device)), "published bf16 peak"
    if peak is None:  # the CPU, or a GPU the trainer has no published peak for
        precision = "bf16" if device.startswith("cuda") else "fp32"
        peak, peak_label = matmul_peak(device), f"measured {precision} matmul"
    switch = {"off": [False], "on": [True], "both": [False, True]}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        tokens = args.steps * max(args.batch_size) * args.seq_len * 2
        data = random_corpus(Path(scratch) / "data", tokens)
        for preset, batch_size, compile_, recompute in itertools.product(
            args.presets, args.batch_size, switch[args.compile], args.recompute
        ):
            architecture = model_config(preset, VOCAB, {"max_seq_len": args.seq_len})
            per_token = flops_per_token(architecture, args.seq_len)
            limit = peak / per_token
            out = Path(scratch) / "run"
            try:
                lines = run_trainer(data, out, preset, args, batch_size, compile_, recompute)
            finally:
                shutil.rmtree(out, ignore_errors=True)
            setup = [
                preset,
                f"{parameter_count(architecture) / 1e6:,.0f}M",
                batch_size,
                "on" if compile_ else "off",
                recompute,
            ]
            if lines is None:
                rows.append(setup + ["out of memory", "-", "-", "-", "-", f"{limit:,.0f}"])
                continue
            steady = [line["tokens_per_s"] for line in lines[2:]] or [lines[-1]["tokens_per_s"]]
            speed = statistics.median(steady)
            first_step = batch_size * args.seq_len / lines[0]["tokens_per_s"]
            memory = lines[-1].get("max_memory_gib")
            rows.append(
                setup
                + [speed, speed * per_token / 1e12, speed / limit, first_step]
                + ["-" if memory is None else memory, limit]
            )
    columns = [
        "preset",
        "params",
        "batch",
        "compile",
        "act. ckpt",
        "tokens/s",
        "TFLOP/s",
        f"MFU ({peak_label})",
        "first step s",
        "peak GiB",
        "limit tokens/s",
    ]
    body = table(columns, rows) + (
        f"\n\nseq_len {args.seq_len}, {args.steps} steps; "
        f"peak {peak / 1e12:.3g} TFLOP/s ({peak_label})."
    )
    report("training", device, "Trainer throughput", body, args.save)


if __name__ == "__main__":
    main()
