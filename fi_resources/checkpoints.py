"""Trained checkpoints as evaluation reads them: where a recipe's Hugging Face export lives, a
hash of its weights (part of every cache key of its generations), and the answer-token negative
log-likelihood of held-out pairs."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

WEIGHTS_FILE = "model.safetensors"


def export_folder(home: Path, recipe: str) -> Path:
    """The Hugging Face export of a recipe's trained checkpoint; a clear error when it is not
    there yet."""
    folder = Path(home) / "checkpoints" / recipe / "hf"
    if not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"no trained checkpoint for recipe {recipe} in {folder}: materialize "
            f"trained_checkpoint[{recipe}] first"
        )
    return folder


def weights_hash(folder: Path) -> str:
    """A content hash of the exported weights."""
    digest = hashlib.sha256()
    with (Path(folder) / WEIGHTS_FILE).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def answer_nll(
    folder: Path, samples: Sequence[tuple[list[int], list[int]]], device: str
) -> tuple[float, int]:
    """(summed negative log-likelihood in nats, number of scored tokens) of the answer tokens of
    `samples`, each (input_ids, loss_mask) as packing tokenizes it, read after the model's BOS as
    in training. A sample longer than the model's window is cut to it."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).to(device)
    model.eval()
    window = model.config.max_position_embeddings
    total, count = 0.0, 0
    with torch.inference_mode():
        for ids, mask in samples:
            tokens = torch.tensor([[model.config.bos_token_id, *ids][:window]], device=device)
            targets_mask = torch.tensor(mask[: tokens.shape[1] - 1], device=device).bool()
            logits = model(tokens).logits[0, :-1].float()
            losses = torch.nn.functional.cross_entropy(logits, tokens[0, 1:], reduction="none")
            total += losses[targets_mask].sum().item()
            count += int(targets_mask.sum().item())
    return total, count
