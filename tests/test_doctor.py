"""`fi doctor`, the preflight: on the default settings every check passes on this machine's
shipped models; a broken setting fails its own check, with what to do next, and the command
exits 1 while the other checks still run."""

from typer.testing import CliRunner

from fi_assets.cli import app
from fi_resources.settings import get_settings

runner = CliRunner()


def doctor(monkeypatch, **settings):
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    return runner.invoke(app, ["doctor"])


def test_the_default_settings_pass_every_check(fi_home, monkeypatch):
    result = doctor(monkeypatch)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line[:4] in ("ok  ", "FAIL")]
    assert lines and all(line.startswith("ok  ") for line in lines)
    assert f"ok   data root: {fi_home.resolve()} is writable" in result.output
    assert "ok   judge: rules engine (offline, deterministic)" in result.output
    assert "dimension 384, window 256 tokens" in result.output


def test_broken_settings_fail_their_checks_with_the_next_step(fi_home, monkeypatch, free_port):
    url = f"http://127.0.0.1:{free_port}/v1"
    result = doctor(
        monkeypatch,
        FI_JUDGE_ENGINE="openai",
        FI_OPENAI_BASE_URL=url,
        FI_INSTANTIATOR_ENGINE="transformers",
        FI_INSTANTIATOR_MODEL="fineinstructions-missing/no-such-model",
        HF_HUB_OFFLINE="1",
    )
    assert result.exit_code == 1
    assert f"FAIL judge at {url}:" in result.output
    assert "-> start the server, or fix FI_OPENAI_BASE_URL" in result.output
    assert "FAIL instantiator model fineinstructions-missing/no-such-model" in result.output
    assert "hf download fineinstructions-missing/no-such-model" in result.output
    # The checks after a failure still ran.
    assert "ok   embedder:" in result.output
    assert "2 of 10 checks failed" in result.output


def test_a_local_model_reports_its_context_and_chat_template(fi_home, monkeypatch):
    """SmolLM2 ships offline: on transformers its config and tokenizer load."""
    result = doctor(
        monkeypatch,
        FI_GENERICIZER_ENGINE="transformers",
        FI_GENERICIZER_MODEL="HuggingFaceTB/SmolLM2-135M-Instruct",
    )
    assert result.exit_code == 0, result.output
    assert (
        "ok   genericizer model: HuggingFaceTB/SmolLM2-135M-Instruct: 8192 tokens of context, a chat template"
        in result.output
    )
