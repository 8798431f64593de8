"""The run's configuration: one dataclass, and a command line generated from it.

Every field is a flag (`--seq-len 1024`, `--answer-only-loss`, `--no-answer-only-loss`). The model
is a preset (`--preset 1.8b`) whose fields can each be overridden with `--model.FIELD VALUE`
(e.g. `--model.dim 128 --model.tie_embeddings true`)."""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, dataclass, field, fields

from training.model import ACTIVATION_CHECKPOINTING, PRESETS, ModelConfig


def _option(default, help: str, choices: tuple[str, ...] | None = None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    data: list[str] = field(metadata={"help": "Parquet files or directories of them"})
    out: str = field(metadata={"help": "run directory: checkpoints/, hf/, train_config.json"})
    preset: str = _option("tiny", f"model preset: {', '.join(PRESETS)}")
    model: dict = field(default_factory=dict, metadata={"help": "overrides of preset fields"})
    tokenizer: str | None = _option(
        None, "tokenizer folder: gives the vocabulary size and BOS/EOS ids, copied into hf/"
    )
    bos_id: int | None = _option(None, "BOS token id (default: the tokenizer's)")
    eos_id: int | None = _option(None, "EOS token id (default: the tokenizer's)")
    seq_len: int = _option(2048, "tokens per packed sequence")
    batch_size: int = _option(8, "sequences per rank per micro-batch")
    grad_accum: int = _option(1, "micro-batches per optimizer step")
    answer_only_loss: bool = _option(False, "train only on answer tokens (loss_mask = 1)")
    document_masking: bool = _option(
        False, "attend within a document only, with positions restarting at each document"
    )
    steps: int = _option(1000, "optimizer steps of the whole run (sets the schedule)")
    max_epochs: int | None = _option(
        None,
        "passes over the data at most: a run whose steps need more tokens is refused before it "
        "starts (1: never repeat a sample; fewer steps train on a seeded subset); default: no cap",
    )
    stop_after: int | None = _option(
        None, "end this invocation after this many steps, checkpointed (resume with --resume)"
    )
    lr: float = _option(3e-4, "peak learning rate")
    min_lr_ratio: float = _option(0.1, "final learning rate as a fraction of the peak")
    warmup_steps: int = _option(100, "linear warm-up steps")
    weight_decay: float = _option(0.1, "AdamW weight decay (matrices only, not norms)")
    beta1: float = _option(0.9, "AdamW beta1")
    beta2: float = _option(0.95, "AdamW beta2")
    grad_clip: float = _option(1.0, "maximum global gradient norm")
    seed: int = _option(0, "seed of the initialisation and the data shuffle")
    compile: bool = _option(False, "torch.compile the whole model, loss included")
    # "none" by default: recomputation buys memory with time, which only pays when the batch
    # would not fit otherwise (the chunked loss and, on several GPUs, FSDP's sharded weights and
    # optimizer state already leave room). When it does not fit, "selective" is the first to try:
    # it recomputes no matmul, so it costs little time; "full" frees the most, for a third more
    # FLOPs.
    activation_checkpointing: str = _option(
        "none",
        "recompute activations in the backward pass instead of keeping them: none; selective "
        "(keep matmul and attention outputs, recompute the ops between them); full (keep only "
        "each block's input)",
        ACTIVATION_CHECKPOINTING,
    )
    loss_chunk_tokens: int = _option(
        1024,
        "tokens whose logits the output layer and cross-entropy compute at a time, so a batch's "
        "logits never exist at once; 0 computes them all at once",
    )
    log_every: int = _option(10, "steps between JSON metric lines on stdout")
    checkpoint_every: int = _option(500, "steps between checkpoints (one is also kept at the end)")
    keep_checkpoints: int = _option(2, "most recent checkpoints kept; 0 keeps all")
    resume: bool = _option(False, "continue from the latest checkpoint under --out, if any")
    save: bool = _option(
        True,
        "write checkpoints and the final Hugging Face export; --no-save runs keep only the "
        "metrics (benchmarks)",
    )
    hf_dtype: str = _option("float32", "dtype of the exported Hugging Face weights")

    def __post_init__(self):
        if self.activation_checkpointing not in ACTIVATION_CHECKPOINTING:
            raise ValueError(
                f"activation_checkpointing must be one of {ACTIVATION_CHECKPOINTING}, "
                f"not {self.activation_checkpointing!r}"
            )


def _flag_type(annotation) -> tuple[type, bool]:
    """The scalar type of a field and whether it takes a list."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.train", description="Pre-train a Llama-style model."
    )
    hints = typing.get_type_hints(TrainConfig)
    for spec in fields(TrainConfig):
        if spec.name == "model":
            continue
        flag_type, is_list = _flag_type(hints[spec.name])
        keywords: dict = {"dest": spec.name, "help": spec.metadata["help"]}
        if spec.default is MISSING:
            keywords["required"] = True
        else:
            keywords["default"] = spec.default
        if flag_type is bool:
            keywords["action"] = argparse.BooleanOptionalAction
        else:
            keywords.update(type=flag_type, nargs="+" if is_list else None)
            keywords["choices"] = spec.metadata.get("choices")
        parser.add_argument(f"--{spec.name.replace('_', '-')}", **keywords)
    for spec in fields(ModelConfig):
        parser.add_argument(
            f"--model.{spec.name}",
            dest=f"model.{spec.name}",
            default=argparse.SUPPRESS,
            help=f"override the preset's {spec.name}",
        )
    return parser


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """A TrainConfig from command-line arguments (sys.argv when None)."""
    values = vars(build_parser().parse_args(argv))
    overrides = {
        name.removeprefix("model."): values.pop(name) for name in list(values) if "." in name
    }
    return TrainConfig(**values, model=overrides)
