"""Engines and models are chosen by configuration: fi.toml, overridden by FI_* variables."""

import dagster as dg
import pydantic
import pytest

from fi_assets.definitions import build_definitions
from fi_resources.settings import get_settings


def test_config_file_then_environment(fi_home, tmp_path, monkeypatch):
    (tmp_path / "fi.toml").write_text(
        'genericizer_engine = "transformers"\n'
        'genericizer_model = "HuggingFaceTB/SmolLM2-135M-Instruct"\n'
        'embedder_model = "BAAI/bge-m3"\n'
    )
    settings = get_settings()
    assert (settings.genericizer_engine, settings.embedder_model) == ("transformers", "BAAI/bge-m3")

    monkeypatch.setenv(
        "FI_EMBEDDER_MODEL", "fineinstructions/instruction_template_retrieval_embedding"
    )
    get_settings.cache_clear()
    settings = get_settings()
    assert settings.embedder_model == "fineinstructions/instruction_template_retrieval_embedding"
    assert settings.home == fi_home

    defs = build_definitions(settings)
    genericizer = defs.resources["genericizer"]
    assert (genericizer.engine, genericizer.model) == (
        "transformers",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    )
    versions = defs.resolve_asset_graph().get(dg.AssetKey("instruction_templates")).code_version
    assert (
        "|transformers:HuggingFaceTB/SmolLM2-135M-Instruct|decoding=greedy|max_new_tokens=256"
        "|structured=transformers" in versions
    )


def test_an_unknown_engine_is_refused(fi_home, monkeypatch):
    monkeypatch.setenv("FI_GENERICIZER_ENGINE", "gpt")
    get_settings.cache_clear()
    with pytest.raises(pydantic.ValidationError, match="rules"):
        get_settings()
