"""The Embedder resource: sentence-transformers vectors, L2-normalised so cosine is a dot product."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from fi_method.retrieval.matching import GAUSSIAN_POOLING_K
from fi_method.retrieval.pooling import gaussian_pooling
from fi_resources.allocator import return_freed_memory
from fi_resources.models import MINILM, sentence_transformer_source

# Similarity thresholds per embedder. The paper's 0.865 belongs to its fine-tuned BGE-M3
# retriever and means nothing for another model. MiniLM's was calibrated with `fi calibrate`
# (fi_method.retrieval.matching.propose_threshold: half of all document vectors keep a candidate)
# on the full bundled sample: 3,327 chunks of 105 Wikipedia articles against 241 rules templates of
# the IFBench queries; best-match similarity p10 0.079, p50 0.173, p90 0.300.
CALIBRATED_THRESHOLDS = {
    "fineinstructions/instruction_template_retrieval_embedding": 0.865,
    MINILM: 0.17,
}


def default_similarity_threshold(model: str) -> float | None:
    """The calibrated threshold of a known embedder, named by id, by last path component, or by
    the path of its offline copy."""
    name = model.rstrip("/").split("/")[-1].lower()
    source = sentence_transformer_source(model)
    for known, threshold in CALIBRATED_THRESHOLDS.items():
        if name == known.split("/")[-1].lower() or source == sentence_transformer_source(known):
            return threshold
    return None


def torch_device(device: str) -> str:
    """`auto` means the GPU when there is one."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


EncoderDtype = Literal["auto", "bf16", "fp32"]


def resolved_dtype(dtype: EncoderDtype, device: str) -> str:
    """`auto` is bf16 on a GPU, where it runs several times faster than fp32 for vectors within a
    cosine of 0.999 of fp32's, and fp32 elsewhere (a CPU without bf16 matrix units is slower in
    bf16)."""
    if dtype == "auto":
        return "bf16" if device.startswith("cuda") else "fp32"
    return dtype


def encoder_dtype(dtype: EncoderDtype, device: str):
    """The torch dtype of the encoder's weights (`resolved_dtype`)."""
    import torch

    return {"bf16": torch.bfloat16, "fp32": torch.float32}[resolved_dtype(dtype, device)]


def _longest_first(texts: list[str]) -> np.ndarray:
    """Indices of `texts` by decreasing length in characters (a proxy for tokens): batches of
    similar lengths carry little padding, and the largest batch runs first, so one that does not
    fit in memory fails at once."""
    return np.argsort([-len(text) for text in texts], kind="stable")


def _in_original_order(rows_by_length, order: np.ndarray) -> np.ndarray:
    """Rows computed in `order` (a device tensor), copied to the host in one transfer and put back
    in the order of the texts."""
    sorted_rows = rows_by_length.cpu().numpy()
    rows = np.empty_like(sorted_rows)
    rows[order] = sorted_rows
    return rows


class Embedder(ConfigurableResource):
    """Embeds text with a sentence-transformers model. The model loads once per process, on first
    use. Default: all-MiniLM-L6-v2 (shipped offline); the paper's retriever is
    `fineinstructions/instruction_template_retrieval_embedding`."""

    model: str = Field(MINILM, description="sentence-transformers model id or path")
    device: str = Field("auto", description="torch device, or auto")
    batch_size: int = Field(64, ge=1)
    similarity_threshold: float | None = Field(
        None, description="cosine threshold for template retrieval; default: calibrated per model"
    )
    max_chunk_tokens: int | None = Field(
        None, description="tokens per document chunk; default: the model's window less 2 specials"
    )
    pooling_k: int = Field(GAUSSIAN_POOLING_K, ge=1, description="local vectors per chunk")
    dtype: EncoderDtype = Field(
        "auto", description="encoder weights: bf16, fp32, or auto (bf16 on a GPU, else fp32)"
    )

    _encoder = PrivateAttr(default=None)

    def encoder(self):
        """The SentenceTransformer, loaded on first use on `device` with `dtype` weights."""
        if self._encoder is None:
            from sentence_transformers import SentenceTransformer

            device = torch_device(self.device)
            self._encoder = SentenceTransformer(
                sentence_transformer_source(self.model),
                device=device,
                model_kwargs={"dtype": encoder_dtype(self.dtype, device)},
            ).eval()
        return self._encoder

    @property
    def vectors_signature(self) -> str:
        """What a chunk's vectors depend on besides its text: the model, the pooling's K and the
        weights' dtype. Stored beside the vectors, so that a rerun reuses only vectors that it
        would make the same way."""
        dtype = resolved_dtype(self.dtype, torch_device(self.device))
        return f"{self.model}|k={self.pooling_k}|{dtype}"

    @property
    def dimension(self) -> int:
        """The width of the model's sentence vectors."""
        return int(self.encoder().get_embedding_dimension())

    def _forward_batches(self, texts: list[str]) -> Iterator[tuple[int, dict]]:
        """(first row, model outputs) of each batch of `texts`, in their order, the outputs
        (padded `token_embeddings`, `attention_mask`, `sentence_embedding`) left on the device.

        This loop never waits for the device (sentence-transformers' encode copies each batch
        in with a wait and each result out), so on a GPU the next batch is tokenized while the
        current one runs."""
        import torch

        encoder = self.encoder()
        for start in range(0, len(texts), self.batch_size):
            features = encoder.preprocess(texts[start : start + self.batch_size])
            # Checked here, on the host, where reading the mask costs no wait for the device.
            if bool((features["attention_mask"].sum(dim=-1) == 0).any()):
                raise ValueError("the tokenizer gives no token for a text: nothing to embed")
            on_device = {
                name: value.to(encoder.device, non_blocking=True)
                if isinstance(value, torch.Tensor)
                else value
                for name, value in features.items()
            }
            yield start, encoder(on_device)

    def embed(self, texts: list[str]) -> np.ndarray:
        """float32 array of shape (len(texts), dimension), each row of unit length: the model's
        own sentence vector (its pooling), in the order of `texts`."""
        import torch

        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        order = _longest_first(texts)
        rows = None
        with torch.inference_mode():
            for start, outputs in self._forward_batches([texts[i] for i in order]):
                vectors = torch.nn.functional.normalize(
                    outputs["sentence_embedding"].float(), dim=-1
                )
                if rows is None:
                    rows = vectors.new_empty((len(texts), vectors.shape[-1]))
                rows[start : start + len(vectors)] = vectors
        return _in_original_order(rows, order)

    @property
    def threshold(self) -> float:
        """The retrieval threshold: configured, else the calibrated one of this model."""
        threshold = self.similarity_threshold or default_similarity_threshold(self.model)
        if threshold is None:
            raise ValueError(
                f"no calibrated similarity threshold for embedder {self.model!r}: run "
                "`fi calibrate` and set FI_SIMILARITY_THRESHOLD"
            )
        return threshold

    @property
    def chunk_tokens(self) -> int:
        """How many tokens (without special tokens) one chunk may hold."""
        return self.max_chunk_tokens or int(self.encoder().max_seq_length) - 2

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` under the model's tokenizer, special tokens left out."""
        return len(
            self.encoder().tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        )

    def embed_pooled(self, texts: list[str]) -> np.ndarray:
        """Gaussian pooling (fi_method.retrieval.pooling) over each text's token embeddings:
        float32 array of shape (len(texts), pooling_k + 1, dimension), global mean first, every
        vector of unit length, in the order of `texts`.

        Texts run longest first in padded batches; the pooling runs on the device, batch by
        batch, into one array there that is copied to the host once at the end (on a GPU, its
        (len(texts), pooling_k + 1, dimension) float32 must fit beside the model)."""
        import torch

        if not texts:
            return np.zeros((0, self.pooling_k + 1, self.dimension), dtype=np.float32)
        order = _longest_first(texts)
        rows = None
        with torch.inference_mode():
            for start, outputs in self._forward_batches([texts[i] for i in order]):
                pooled = gaussian_pooling(
                    outputs["token_embeddings"],
                    outputs["attention_mask"],
                    k=self.pooling_k,
                    check_mask=False,
                )
                if rows is None:
                    rows = pooled.new_empty((len(texts), *pooled.shape[1:]))
                rows[start : start + len(pooled)] = pooled
        vectors = _in_original_order(rows, order)
        # The batches' activations, a new shape each, leave holes the allocator would keep.
        return_freed_memory()
        return vectors
