"""The pre-training loop, top to bottom.

    python -m training.train --data corpus/ --out runs/tiny --preset tiny --steps 200
    torchrun --nproc_per_node 8 -m training.train --data corpus/ --out runs/1.8b --preset 1.8b \
        --tokenizer tok/ --seq-len 2048 --batch-size 8 --steps 20000 --compile --resume

What makes a step fast on a GPU: bf16 autocast; the loss computed a chunk of tokens at a time
inside the model (`--loss-chunk-tokens`), so a 128k vocabulary's logits never take a batch's worth
of memory; the whole model, loss included, compiled as one graph (`--compile`); AdamW's fused CUDA
kernel; and activation checkpointing only where memory needs it (`--activation-checkpointing`).

Metrics go to stdout (to the Dagster run's log instead, under Dagster Pipes) as one JSON object per
log step (see `emit_metrics`): step; loss (that step's mean over its counted targets); grad_norm
(before clipping); lr (the step's); tokens (seen so far, all ranks); tokens_per_s (all ranks, since
the previous line); mfu (per GPU, null where the peak is unknown, e.g. on the CPU); max_memory_gib
(the most GPU memory this rank's tensors took so far, null on the CPU); samples (reached so far,
the one the stream is in included). Everything else goes to
stderr. Under torchrun with more than one rank the model is sharded with FSDP2; checkpoints are
sharded (torch.distributed.checkpoint) and load on any number of ranks."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from training.config import TrainConfig, parse_config
from training.data import Batch, PackedSequences, max_token_id, stream_tokens
from training.export import write_hugging_face_folder
from training.model import Transformer, build_model, flops_per_token, model_config, parameter_count

log = logging.getLogger("training")

# Dense bf16 tensor-core peaks (SXM parts); MFU is reported against these.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}

METRICS_FILE = "metrics.jsonl"  # every logged step of the run, under --out
_CHECKPOINT_NAME = re.compile(r"^step_(\d{8})$")


# When Dagster launches the trainer (the trained_checkpoint asset, through Dagster Pipes), metrics
# also go to the run's log and the last ones become the asset's metadata; `dagster_pipes` is a
# small dependency-free package, imported only then.
_pipes = None
_last_metrics: dict = {}


def emit_metrics(metrics: dict, history: Path | None = None) -> None:
    """The one place metrics leave the trainer: a JSON line appended to `history` (the run's
    metrics.jsonl, for curves) and written to the Dagster run's log when Dagster Pipes launched
    it, or else to stdout. Not both: Dagster's console shows the run's log and the subprocess's
    stdout alike, so every line would show twice."""
    line = json.dumps(metrics)
    if history is not None:
        with history.open("a") as handle:
            handle.write(line + "\n")
    _last_metrics.update(metrics)
    if _pipes is not None:
        _pipes.log.info(line)
    else:
        print(line, flush=True)


def peak_flops(device: torch.device) -> float | None:
    """The device's peak bf16 FLOP/s, or None when unknown (the CPU included)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for model, peak in PEAK_BF16_FLOPS.items() if model in name), None)


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device), starting the process group when torchrun asks for >1 rank."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank() if world_size > 1 else 0), world_size, device


def vocabulary(config: TrainConfig) -> tuple[int, int, int]:
    """(vocab size, BOS id, EOS id): explicit settings first, then the tokenizer, then the data."""
    bos_id, eos_id, vocab_size = config.bos_id, config.eos_id, None
    if config.tokenizer is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer)
        vocab_size = len(tokenizer)
        bos_id = tokenizer.bos_token_id if bos_id is None else bos_id
        eos_id = tokenizer.eos_token_id if eos_id is None else eos_id
    if bos_id is None or eos_id is None:
        raise ValueError("set --bos-id and --eos-id, or give a --tokenizer that has them")
    if "vocab_size" in config.model:
        vocab_size = int(config.model["vocab_size"])
    if vocab_size is None:
        vocab_size = max(max_token_id(config.data), bos_id, eos_id) + 1
    return vocab_size, bos_id, eos_id


def shard_with_fsdp(model: Transformer, device: torch.device, world_size: int) -> None:
    """FSDP2: each block is one all-gather unit, the root holds embeddings, norm and output."""
    mesh = dist.device_mesh.init_device_mesh(device.type, (world_size,))
    precision = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if device.type == "cuda"
        else MixedPrecisionPolicy()
    )
    for layer in model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=precision)
    fully_shard(model, mesh=mesh, mp_policy=precision)


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: decaying norm gains only fights the model.

    On a GPU it is the fused kernel: the update of fp32 weights and two moments is memory-bound,
    and one pass over them beats the several of the default multi-tensor update. On the CPU it is
    the default update, the one the CPU tests pin the loss curve with."""
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    vectors = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [
            {"params": matrices, "weight_decay": config.weight_decay},
            {"params": vectors, "weight_decay": 0.0},
        ],
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        fused=matrices[0].device.type == "cuda",
    )


def learning_rate_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up to the peak, then cosine decay to min_lr_ratio of it at the last step."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (
        1 + math.cos(math.pi * progress)
    )


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint: only finished ones carry a step_NNNNNNNN name."""
    root = out / "checkpoints"
    found = [p for p in root.iterdir() if _CHECKPOINT_NAME.match(p.name)] if root.exists() else []
    return max(found, key=lambda p: p.name, default=None)


def save_checkpoint(
    out: Path,
    step: int,
    model: Transformer,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train_state: dict,
    keep: int,
) -> Path:
    """Write every rank's shards into a temporary directory, then rename it: a crash mid-write
    never leaves a partial checkpoint under a name `latest_checkpoint` would pick."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    root = out / "checkpoints"
    final, temporary = root / f"step_{step:08d}", root / f".partial_step_{step:08d}"
    if rank == 0:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    _barrier()
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save(
        {"model": model_state, "optimizer": optimizer_state},
        checkpoint_id=temporary,
        no_dist=not dist.is_initialized(),
    )
    random_state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        random_state["cuda"] = torch.cuda.get_rng_state()
    torch.save(random_state, temporary / f"rng_rank{rank}.pt")
    if rank == 0:
        state = {**train_state, "step": step, "scheduler": scheduler.state_dict()}
        (temporary / "train_state.json").write_text(json.dumps(state, indent=2))
        (temporary / "model_config.json").write_text(json.dumps(asdict(model.config), indent=2))
    _barrier()
    if rank == 0:
        if final.exists():
            shutil.rmtree(temporary)
        else:
            temporary.rename(final)
        finished = sorted(p for p in root.iterdir() if _CHECKPOINT_NAME.match(p.name))
        for stale in finished[:-keep] if keep > 0 else []:
            shutil.rmtree(stale)
    _barrier()
    return final


def load_checkpoint(
    checkpoint: Path,
    model: Transformer,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict:
    """Restore model, optimizer, scheduler and this rank's RNG; return the train state."""
    saved_config = json.loads((checkpoint / "model_config.json").read_text())
    if saved_config != asdict(model.config):
        raise ValueError(f"{checkpoint} holds a different model: {saved_config}")
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=checkpoint)
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )
    train_state = json.loads((checkpoint / "train_state.json").read_text())
    scheduler.load_state_dict(train_state["scheduler"])
    rank = dist.get_rank() if dist.is_initialized() else 0
    random_file = checkpoint / f"rng_rank{rank}.pt"
    if random_file.exists():
        random_state = torch.load(random_file, weights_only=True)
        torch.set_rng_state(random_state["cpu"])
        if "cuda" in random_state and torch.cuda.is_available():
            torch.cuda.set_rng_state(random_state["cuda"])
    return train_state


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(value)
    return value


def clip_gradients(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """Clip to the global gradient norm and return it (a full tensor even when sharded)."""
    parameters = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in parameters], foreach=True)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm, foreach=True)
    return norm


def summed_loss(model: Transformer, batch: Batch, document_masking: bool, autocast) -> torch.Tensor:
    """Cross-entropy summed over the targets that count; normalised by the caller, which knows
    how many count in the whole global batch. The model computes it, so that the logits are
    computed a chunk at a time, within FSDP's all-gather of the output layer and within the
    compiled graph."""
    with autocast:
        return model(
            batch.tokens,
            positions=batch.positions if document_masking else None,
            document_ids=batch.document_ids if document_masking else None,
            targets=batch.targets,
            loss_mask=batch.loss_mask,
        )


def train_step(
    model: Transformer,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batches: list[Batch],
    config: TrainConfig,
    autocast,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """One optimizer step over this rank's micro-batches. Returns this rank's summed loss, the
    global count of targets that count (at least 1), the gradient norm before clipping and the
    learning rate the step used."""
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    counted = _all_reduce_sum(sum(b.loss_mask.sum() for b in batches).float()).clamp(min=1)
    # The loss is a mean over every counted target of the global batch, whichever rank and
    # micro-batch holds it; FSDP averages gradients over ranks, hence the world_size.
    scale = world_size / counted
    loss_sum = torch.zeros((), device=counted.device)
    for index, batch in enumerate(batches):
        if world_size > 1:
            # Reduce-scatter gradients once, after the last micro-batch.
            model.set_requires_gradient_sync(index == len(batches) - 1)
        loss = summed_loss(model, batch, config.document_masking, autocast)
        (loss * scale).backward()
        loss_sum += loss.detach()
    grad_norm = clip_gradients(model, config.grad_clip)
    learning_rate = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, counted, grad_norm, learning_rate


def check_enough_data(config: TrainConfig, tokens_per_step: int) -> None:
    """Refuse, before any step, a run whose steps need more tokens than `max_epochs` passes over
    its data hold. Sequences overlap by one token, so `steps` steps read one token more than they
    train on."""
    if config.max_epochs is None:
        return
    needed = config.steps * tokens_per_step + 1
    available = config.max_epochs * stream_tokens(config.data)
    if needed > available:
        raise ValueError(
            f"{config.steps} steps of {tokens_per_step:,} tokens need {needed:,} tokens of data; "
            f"{config.max_epochs} epoch(s) of {config.data} hold {available:,} (BOS/EOS "
            f"included): lower --steps, or raise --max-epochs to repeat data"
        )


def train(config: TrainConfig) -> Path:
    """Run (or continue) training as configured; returns the last checkpoint's directory (None
    when nothing was saved)."""
    rank, world_size, device = setup_distributed()
    out = Path(config.out)
    vocab_size, bos_id, eos_id = vocabulary(config)
    architecture = model_config(
        config.preset, vocab_size, {"max_seq_len": config.seq_len, **config.model}
    )
    if config.seq_len > architecture.max_seq_len:
        raise ValueError(f"seq_len {config.seq_len} exceeds max_seq_len {architecture.max_seq_len}")
    parallelize = (
        (lambda model: shard_with_fsdp(model, device, world_size)) if world_size > 1 else None
    )
    model = build_model(architecture, device, config.seed, parallelize)
    model.activation_checkpointing = config.activation_checkpointing
    model.loss_chunk_tokens = config.loss_chunk_tokens
    if config.compile:
        # The whole model, not block by block: the embedding, final norm and chunked loss (the
        # 128k-vocabulary softmax is the largest elementwise work of a step) fuse too, and
        # nothing runs eagerly between blocks. In place, so state-dict names do not change.
        model.compile()
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, config)
    )
    data = PackedSequences(
        config.data,
        config.seq_len,
        config.batch_size,
        bos_id,
        eos_id,
        config.answer_only_loss,
        config.seed,
        max_epochs=config.max_epochs,
    )
    tokens_per_step = world_size * config.grad_accum * config.batch_size * config.seq_len
    check_enough_data(config, tokens_per_step)
    step, checkpoint = 0, None
    if config.resume and (checkpoint := latest_checkpoint(out)) is not None:
        train_state = load_checkpoint(checkpoint, model, optimizer, scheduler)
        step = train_state["step"]
        data.load_state_dict(train_state["data"])
        log.info("resumed from %s at step %d", checkpoint, step)
    history = out / METRICS_FILE
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(asdict(config), indent=2))
        if step == 0:  # a fresh run starts a fresh curve; a resumed one continues it
            history.unlink(missing_ok=True)
    log.info(
        "%s: %.1fM parameters, %d rank(s) on %s",
        config.preset,
        parameter_count(architecture) / 1e6,
        world_size,
        device,
    )

    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    flops_per_step_per_rank = flops_per_token(architecture, config.seq_len) * tokens_per_step
    flops_per_step_per_rank /= world_size
    peak = peak_flops(device)
    last_step = (
        config.steps if config.stop_after is None else min(config.steps, step + config.stop_after)
    )
    log_clock, steps_since_log = time.perf_counter(), 0
    model.train()
    while step < last_step:
        batches = [data.next_batch().to(device) for _ in range(config.grad_accum)]
        loss_sum, counted, grad_norm, learning_rate = train_step(
            model, optimizer, scheduler, batches, config, autocast
        )
        step += 1
        steps_since_log += 1

        if step % config.log_every == 0 or step == last_step:
            mean_loss = (_all_reduce_sum(loss_sum) / counted).item()
            elapsed = time.perf_counter() - log_clock
            tokens_per_second = tokens_per_step * steps_since_log / elapsed
            achieved = flops_per_step_per_rank * steps_since_log / elapsed
            if rank == 0:
                emit_metrics(
                    {
                        "step": step,
                        "loss": mean_loss,
                        "grad_norm": grad_norm.item(),
                        "lr": learning_rate,
                        "tokens": step * tokens_per_step,
                        "samples": data.samples_seen,
                        "tokens_per_s": tokens_per_second,
                        "mfu": None if peak is None else achieved / peak,
                        "max_memory_gib": (
                            torch.cuda.max_memory_allocated(device) / 2**30
                            if device.type == "cuda"
                            else None
                        ),
                    },
                    history,
                )
            log_clock, steps_since_log = time.perf_counter(), 0
        if config.save and (step % config.checkpoint_every == 0 or step == last_step):
            train_state = {"data": data.state_dict(), "bos_id": bos_id, "eos_id": eos_id}
            started = time.perf_counter()
            checkpoint = save_checkpoint(
                out, step, model, optimizer, scheduler, train_state, config.keep_checkpoints
            )
            log_clock += time.perf_counter() - started  # throughput excludes checkpointing
            log.info("checkpoint %s", checkpoint)

    if config.save and step == config.steps:
        full_state = get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if rank == 0:
            write_hugging_face_folder(
                full_state,
                architecture,
                out / "hf",
                bos_id,
                eos_id,
                config.tokenizer,
                config.hf_dtype,
            )
            log.info("exported %s", out / "hf")
    _last_metrics["samples_per_epoch"] = data.samples_per_epoch
    _barrier()
    return checkpoint


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s: %(message)s",
    )
    # A single process checkpoints without a process group, as intended; DCP warns each time.
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    # Growable CUDA memory segments: a large batch otherwise fails on fragmentation while enough
    # memory is free. Read when CUDA first allocates, so set before; a user's setting wins.
    if not {"PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"} & set(os.environ):
        os.environ["PYTORCH_ALLOC_CONF"] = "expandable_segments:True"
    config = parse_config(argv)
    global _pipes
    if "DAGSTER_PIPES_CONTEXT" in os.environ and os.environ.get("RANK", "0") == "0":
        from dagster_pipes import open_dagster_pipes

        _pipes = open_dagster_pipes()
    try:
        checkpoint = train(config)
        if _pipes is not None:
            _pipes.report_asset_materialization(
                metadata={
                    **{k: v for k, v in _last_metrics.items() if v is not None},
                    "checkpoint": str(checkpoint),
                    "hf_export": str(Path(config.out) / "hf"),
                    "metrics_history": str(Path(config.out) / METRICS_FILE),
                }
            )
    finally:
        if _pipes is not None:
            _pipes.close()
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
