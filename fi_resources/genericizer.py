"""The genericizer role (query -> template + compatible document description) on one of three
engines. `rules` runs in-process; `transformers` and `vllm` share one prompt and one parser."""

from __future__ import annotations

from collections.abc import Callable

from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from fi_method.genericizer import (
    RELEASED_TEMPLATIZER,
    GenericizedQuery,
    build_messages,
    parse_output,
    prompt_style_for,
)
from fi_method.rules_genericizer import rules_genericize
from fi_method.templates import TemplateError
from fi_resources.embedder import torch_device
from fi_resources.settings import Engine, get_settings

RULES_MODEL = "rules"


class Genericizer(ConfigurableResource):
    """Turns queries into templates. Each result is a GenericizedQuery or the ValueError (with a
    `reason`) explaining why that query produced none."""

    engine: Engine = Field("rules", description="rules, transformers or vllm")
    model: str = Field(RELEASED_TEMPLATIZER, description="HF id or path (ignored by rules)")
    device: str = Field("auto")
    batch_size: int = Field(8, ge=1)
    max_new_tokens: int = Field(256, ge=16)

    _backend = PrivateAttr(default=None)

    @property
    def model_name(self) -> str:
        return RULES_MODEL if self.engine == "rules" else self.model

    def _generator(self):
        if self._backend is None:
            models_dir = get_settings().home / "models"
            if self.engine == "transformers":
                from fi_resources.engines import TransformersEngine

                self._backend = TransformersEngine(
                    self.model, torch_device(self.device), models_dir, self.batch_size
                )
            else:
                from fi_resources.engines import VLLMEngine

                self._backend = VLLMEngine(self.model, models_dir)
        return self._backend

    def genericize(
        self, queries: list[str], progress: Callable[[int, int], None] | None = None
    ) -> list[GenericizedQuery | ValueError]:
        if self.engine == "rules":
            return [_rules_or_error(query) for query in queries]
        style = prompt_style_for(self.model)
        conversations = [build_messages(query, style) for query in queries]
        outputs = self._generator().generate(conversations, self.max_new_tokens, progress)
        return [_parsed_or_error(text) for text in outputs]


def _rules_or_error(query: str) -> GenericizedQuery | ValueError:
    try:
        return rules_genericize(query)
    except TemplateError as error:
        return error


def _parsed_or_error(text: str) -> GenericizedQuery | ValueError:
    try:
        return parse_output(text)
    except ValueError as error:
        return error
