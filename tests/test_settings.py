"""Engines and models are chosen by configuration: the working directory's fi.toml, then the data
root's (where `fi demo` records its training cap), overridden by FI_* variables."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pydantic
import pytest
from typer.testing import CliRunner

from fi_assets.cli import DEMO_TRAINING_TOKENS, app, record_demo_budget
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
        "|transformers:HuggingFaceTB/SmolLM2-135M-Instruct|budget=grows-with-input"
        "|decoding=greedy|max_new_tokens=256|structured=transformers" in versions
    )


def test_the_template_search_settings_reach_the_index(fi_home, monkeypatch):
    monkeypatch.setenv("FI_TEMPLATE_SEARCH", "approximate")
    monkeypatch.setenv("FI_SEARCH_NPROBES", "20")
    Path("fi.toml").write_text("approximate_search_from = 5000\n")  # in the working directory
    index = build_definitions(get_settings()).resources["index"]
    assert (index.search_kind, index.nprobes, index.approximate_from) == ("approximate", 20, 5000)


def test_an_unknown_engine_is_refused(fi_home, monkeypatch):
    monkeypatch.setenv("FI_GENERICIZER_ENGINE", "gpt")
    get_settings.cache_clear()
    with pytest.raises(pydantic.ValidationError, match="rules"):
        get_settings()


def test_the_data_roots_file_holds_under_the_working_directorys_and_the_environment(
    fi_home, tmp_path, monkeypatch
):
    fi_home.mkdir()
    (fi_home / "fi.toml").write_text("max_training_tokens = 20480\nmin_judge_score = 3\n")
    (tmp_path / "fi.toml").write_text("min_judge_score = 5\n")
    settings = get_settings()
    assert (settings.max_training_tokens, settings.min_judge_score) == (20480, 5)
    monkeypatch.setenv("FI_MAX_TRAINING_TOKENS", "4096")
    get_settings.cache_clear()
    assert get_settings().max_training_tokens == 4096


def test_the_demo_records_its_training_cap_for_later_commands(fi_home, monkeypatch):
    monkeypatch.delenv("FI_MAX_TRAINING_TOKENS", raising=False)
    monkeypatch.delenv("FI_TRAINING_TOKENS", raising=False)
    settings = record_demo_budget(get_settings())
    assert settings.max_training_tokens == DEMO_TRAINING_TOKENS
    # A later command, in a new process, reads it from the data root.
    get_settings.cache_clear()
    assert get_settings().max_training_tokens == DEMO_TRAINING_TOKENS
    text = (fi_home / "fi.toml").read_text()
    assert text.count("max_training_tokens") == 1 and text.startswith("# fi demo:")
    # Run again, it records nothing twice; a budget the user set is left alone.
    record_demo_budget(get_settings())
    assert (fi_home / "fi.toml").read_text() == text
    (fi_home / "fi.toml").unlink()
    monkeypatch.setenv("FI_TRAINING_TOKENS", "1000")
    get_settings.cache_clear()
    assert record_demo_budget(get_settings()).max_training_tokens is None
    assert not (fi_home / "fi.toml").exists()


@pytest.mark.parametrize(
    ("variables", "in_file", "expected"),
    [
        (
            {"FI_JUDGE_ENGINE": "bogus"},
            "",
            (
                "FI_JUDGE_ENGINE='bogus' (environment): input should be 'rules', 'transformers', "
                "'vllm' or 'openai'"
            ),
        ),
        ({}, "min_judge_score = 9\n", "FI_MIN_JUDGE_SCORE=9 ({file}): input should be less than"),
        (
            {"FI_TEMPLATE_SEARCH": "fast"},
            "",
            (
                "FI_TEMPLATE_SEARCH='fast' (environment): input should be 'exact', 'approximate' "
                "or 'auto'"
            ),
        ),
        ({}, "search_nprobes = 0\n", "FI_SEARCH_NPROBES=0 ({file}): input should be greater than"),
        (
            {"FI_GENERICIZER_ENGINE": "openai", "FI_OPENAI_BASE_URL": "localhost:8000"},
            "",
            "FI_OPENAI_BASE_URL: 'localhost:8000' is not an http(s) URL with a host",
        ),
    ],
)
def test_an_invalid_setting_is_one_line_naming_its_variable_value_and_source(
    fi_home, tmp_path, monkeypatch, variables, in_file, expected
):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "fi.toml").write_text(in_file)
    result = CliRunner().invoke(app, ["sql", "select 1"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith("error: invalid setting: ")
    assert expected.format(file=tmp_path / "fi.toml") in lines[0]


@pytest.mark.parametrize(
    "command", [["materialize", "judged_pairs"], ["remove", "queries", "q1"], ["calibrate"]]
)
def test_a_bad_setting_is_one_line_in_a_fresh_process_too(fi_home, command):
    """The commands that load the asset definitions, whose module reads the settings as it
    loads: in a process of their own (as a user runs them) the bad setting is still one line
    and exit 2, not a traceback."""
    run = subprocess.run(
        [sys.executable, "-m", "fi_assets.cli", *command],
        env=os.environ | {"FI_JUDGE_ENGINE": "bogus"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [
        (
            "error: invalid setting: FI_JUDGE_ENGINE='bogus' (environment): input should be 'rules', "
            "'transformers', 'vllm' or 'openai'"
        )
    ]
