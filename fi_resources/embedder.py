"""The Embedder resource: sentence-transformers vectors, L2-normalised so cosine is a dot product."""

from __future__ import annotations

import numpy as np
from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from fi_method.matching import GAUSSIAN_POOLING_K
from fi_method.pooling import gaussian_pooling
from fi_resources.models import MINILM, sentence_transformer_source

# Similarity thresholds per embedder. The paper's 0.865 belongs to its fine-tuned BGE-M3
# retriever and means nothing for another model. MiniLM's was calibrated with `fi calibrate`
# (fi_method.matching.propose_threshold: half of all document vectors keep a candidate) on the
# full bundled sample: 3,327 chunks of 105 Wikipedia articles against 241 rules templates of the
# IFBench queries; best-match similarity p10 0.079, p50 0.173, p90 0.300.
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

    _encoder = PrivateAttr(default=None)

    def encoder(self):
        if self._encoder is None:
            from sentence_transformers import SentenceTransformer

            self._encoder = SentenceTransformer(
                sentence_transformer_source(self.model), device=torch_device(self.device)
            )
        return self._encoder

    @property
    def dimension(self) -> int:
        return int(self.encoder().get_embedding_dimension())

    def embed(self, texts: list[str]) -> np.ndarray:
        """float32 array of shape (len(texts), dimension), each row of unit length."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.encoder().encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return vectors.astype(np.float32, copy=False)

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
        return len(
            self.encoder().tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        )

    def embed_pooled(self, texts: list[str]) -> np.ndarray:
        """Gaussian pooling (fi_method.pooling) over each text's token embeddings: float32 array
        of shape (len(texts), pooling_k + 1, dimension), global mean first, every vector of unit length."""
        import torch

        rows = []
        for start in range(0, len(texts), self.batch_size):
            token_embeddings = self.encoder().encode(
                texts[start : start + self.batch_size],
                batch_size=self.batch_size,
                output_value="token_embeddings",
                convert_to_numpy=False,
                show_progress_bar=False,
            )
            lengths = [len(t) for t in token_embeddings]
            padded = torch.nn.utils.rnn.pad_sequence(
                [t.float() for t in token_embeddings], batch_first=True
            )
            mask = torch.arange(padded.shape[1])[None, :] < torch.tensor(lengths)[:, None]
            rows.append(
                gaussian_pooling(padded, mask.to(padded.device), k=self.pooling_k).cpu().numpy()
            )
        if not rows:
            return np.zeros((0, self.pooling_k + 1, self.dimension), dtype=np.float32)
        return np.concatenate(rows).astype(np.float32, copy=False)
