"""Text-generation engines: chat messages in, completions out. An engine knows nothing of roles;
a role (fi_method.genericizer, ...) builds the messages and parses what comes back, so the
`transformers` and `vllm` engines share every prompt and parser."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

Messages = list[dict[str, str]]
Progress = Callable[[int, int], None]


class TransformersEngine:
    """Greedy, batched generation with Hugging Face transformers on CPU or GPU."""

    def __init__(self, model: str, device: str, models_dir: Path, batch_size: int = 8):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from fi_resources.models import causal_lm_source

        source = causal_lm_source(model, models_dir)
        self.device = device
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        # Decoder-only models continue from the right end of the prompt: pad on the left.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype).to(device).eval()

    def generate(
        self,
        conversations: Sequence[Messages],
        max_new_tokens: int,
        progress: Progress | None = None,
    ) -> list[str]:
        """Answers to chat conversations, each formatted by the model's chat template."""
        prompts = [
            self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            for messages in conversations
        ]
        # The chat template writes the BOS itself.
        return self._complete(prompts, max_new_tokens, False, progress)

    def complete(
        self, prompts: Sequence[str], max_new_tokens: int, progress: Progress | None = None
    ) -> list[str]:
        """Raw continuations of text prompts (a pre-trained model without a chat template), each
        prompt after the tokenizer's BOS."""
        return self._complete(prompts, max_new_tokens, True, progress)

    def _truncation(self, max_new_tokens: int) -> dict:
        """Keep prompt and answer within the model's window, cutting the prompt's start: a
        small pre-trained model's window (256 tokens for the demo's) is shorter than many
        benchmark questions."""
        window = getattr(self.model.config, "max_position_embeddings", None)
        if not window or window <= max_new_tokens:
            return {}
        self.tokenizer.truncation_side = "left"
        return {"truncation": True, "max_length": window - max_new_tokens}

    def _complete(
        self,
        prompts: Sequence[str],
        max_new_tokens: int,
        add_special_tokens: bool,
        progress: Progress | None,
    ) -> list[str]:
        import torch

        outputs: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            encoded = self.tokenizer(
                list(prompts[start : start + self.batch_size]),
                return_tensors="pt",
                padding=True,
                add_special_tokens=add_special_tokens,
                **self._truncation(max_new_tokens),
            ).to(self.device)
            with torch.inference_mode():
                generated = self.model.generate(
                    **encoded,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new_tokens = generated[:, encoded["input_ids"].shape[1] :]
            outputs.extend(self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
            if progress is not None:
                progress(len(outputs), len(prompts))
        return outputs


class VLLMEngine:
    """Greedy generation with vLLM (GPU). Needs the `vllm` extra: pip install -e '.[vllm]'."""

    def __init__(self, model: str, models_dir: Path):
        try:
            from vllm import LLM
        except ImportError as error:
            raise RuntimeError(
                "the vllm engine needs vLLM on a CUDA machine: pip install -e '.[vllm]'"
            ) from error
        self.llm = LLM(model=model, download_dir=str(models_dir))

    def generate(
        self,
        conversations: Sequence[Messages],
        max_new_tokens: int,
        progress: Progress | None = None,
    ) -> list[str]:
        return self._greedy(self.llm.chat, conversations, max_new_tokens, progress)

    def complete(
        self, prompts: Sequence[str], max_new_tokens: int, progress: Progress | None = None
    ) -> list[str]:
        """Raw continuations of text prompts (a pre-trained model without a chat template)."""
        return self._greedy(self.llm.generate, prompts, max_new_tokens, progress)

    @staticmethod
    def _greedy(method, inputs: Sequence, max_new_tokens: int, progress: Progress | None):
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        results = method(list(inputs), params, use_tqdm=True)
        if progress is not None:
            progress(len(results), len(inputs))
        return [result.outputs[0].text for result in results]
