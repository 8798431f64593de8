"""The Embedder resource: sentence-transformers vectors, L2-normalised so cosine is a dot product."""

from __future__ import annotations

import numpy as np
from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from fi_resources.models import MINILM, sentence_transformer_source


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

    def embed(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        """float32 array of shape (len(texts), dimension), each row of unit length."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.encoder().encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        )
        return vectors.astype(np.float32, copy=False)
