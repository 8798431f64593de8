"""Export to a Hugging Face `LlamaForCausalLM` folder: config.json, model.safetensors and, when
given, the tokenizer. The model already computes exactly what Llama does, so only names change.

Standalone: python -m training.export --checkpoint RUN/checkpoints/step_00001000 --out RUN/hf"""

from __future__ import annotations

import argparse
import json
import re
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from transformers import AutoTokenizer, LlamaConfig

from training.model import ModelConfig, Transformer, build_model

_RENAMES = [
    (r"tok_embeddings\.", "model.embed_tokens."),
    (r"layers\.(\d+)\.attention\.w([qkvo])\.", r"model.layers.\1.self_attn.\2_proj."),
    (r"layers\.(\d+)\.feed_forward\.w1\.", r"model.layers.\1.mlp.gate_proj."),
    (r"layers\.(\d+)\.feed_forward\.w3\.", r"model.layers.\1.mlp.up_proj."),
    (r"layers\.(\d+)\.feed_forward\.w2\.", r"model.layers.\1.mlp.down_proj."),
    (r"layers\.(\d+)\.attention_norm\.", r"model.layers.\1.input_layernorm."),
    (r"layers\.(\d+)\.ffn_norm\.", r"model.layers.\1.post_attention_layernorm."),
    (r"norm\.", "model.norm."),
    (r"output\.", "lm_head."),
]


def hugging_face_name(name: str) -> str:
    """Our parameter name as Hugging Face Llama spells it."""
    for pattern, replacement in _RENAMES:
        renamed, found = re.subn(f"^{pattern}", replacement, name)
        if found:
            return renamed
    raise KeyError(f"no Hugging Face name for {name}")


def write_hugging_face_folder(
    state_dict: dict[str, torch.Tensor],
    config: ModelConfig,
    folder: Path,
    bos_id: int,
    eos_id: int,
    tokenizer: str | None = None,
    dtype: str = "float32",
) -> None:
    """Write a folder `AutoModelForCausalLM.from_pretrained` loads as LlamaForCausalLM."""
    folder.mkdir(parents=True, exist_ok=True)
    torch_dtype = getattr(torch, dtype)
    tensors = {
        hugging_face_name(name): tensor.detach().to("cpu", torch_dtype).contiguous()
        for name, tensor in state_dict.items()
    }
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.dim,
        intermediate_size=config.ffn_dim,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps,
        rope_theta=config.rope_theta,
        tie_word_embeddings=config.tie_embeddings,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        torch_dtype=dtype,
        architectures=["LlamaForCausalLM"],
    ).save_pretrained(folder)
    if tokenizer is not None:
        AutoTokenizer.from_pretrained(tokenizer).save_pretrained(folder)


def load_checkpoint_model(checkpoint: Path) -> tuple[Transformer, dict]:
    """The model of a checkpoint directory, on the CPU in fp32, and the checkpoint's train state
    (step, data position, token ids)."""
    checkpoint = Path(checkpoint)
    config = ModelConfig(**json.loads((checkpoint / "model_config.json").read_text()))
    model = build_model(config, torch.device("cpu"), seed=0)
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=checkpoint, no_dist=True)
    model.load_state_dict(state["model"])
    return model, json.loads((checkpoint / "train_state.json").read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export a checkpoint as a Hugging Face folder.")
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # single process
    model, train_state = load_checkpoint_model(args.checkpoint)
    write_hugging_face_folder(
        model.state_dict(),
        model.config,
        args.out,
        train_state["bos_id"],
        train_state["eos_id"],
        args.tokenizer,
        args.dtype,
    )


if __name__ == "__main__":
    main()
