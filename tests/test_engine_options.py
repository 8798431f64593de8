"""Engine options are declared once (EngineOptions, with each engine's batch size in
EngineSettings), and what marks an asset stale is what the call cache keys calls by:

- every engine setting, set by its FI_* variable or its fi.toml key, reaches what the engine is
  given (its EngineConfig);
- a parameter an engine adds to its calls' spec changes both the cache key and the version of
  the role's assets (`role_version`), on every engine;
- a setting changes a role's version exactly when it changes the spec its calls are cached
  under, and then it changes their keys too."""

import os
from pathlib import Path

import pytest

from fi_method.roles import RulesAids
from fi_resources import engines
from fi_resources.engines import ENGINES, EngineConfig, EngineOptions, VLLMEngine
from fi_resources.roles import Genericizer, Judge, role_resource, role_version
from fi_resources.settings import EngineSettings, Settings, get_settings

README = Path(__file__).parents[1] / "README.md"
# Nothing listens there: no call is made, only specs and keys are built.
UNREACHABLE_SERVER = "http://127.0.0.1:9/v1"
# A value of every engine setting other than its default.
CHANGED = {
    "device": "cpu",
    "max_new_tokens": 64,
    "structured_outputs": False,
    "vllm_gpu_memory_share": 0.5,
    "vllm_tensor_parallel_size": 2,
    "vllm_max_model_len": 4096,
    "vllm_dtype": "bfloat16",
    "openai_base_url": "http://127.0.0.1:10/v1",
    "openai_max_concurrency": 3,
    "openai_timeout_s": 30.0,
    "openai_requests_per_minute": 120,
    "openai_max_retries": 1,
    "openai_failover_s": 5.0,
    "openai_structured": "vllm",
    "generation_batch_size": 4,
    "vllm_batch_size": 64,
    "rules_batch_size": 16,
}
# Per engine, the settings that decide a judge's outputs there (its calls' spec).
DECIDE_OUTPUTS = {
    "rules": set(),
    "transformers": {"max_new_tokens", "structured_outputs"},
    "vllm": {"max_new_tokens", "structured_outputs", "vllm_dtype"},
    "openai": {"max_new_tokens", "structured_outputs", "openai_structured"},
}
PAIR = {
    "instruction": "What does a surface's albedo measure?",
    "answer": "The share of incoming sunlight the surface reflects.",
    "document": "Albedo is the fraction of sunlight that is diffusely reflected by a body.",
    "template": "What does <fi>a property</fi> measure?",
}


@pytest.fixture
def environment(fi_home, monkeypatch):
    """No FI_* variable but a temporary FI_HOME and the openai engine's URL, no fi.toml."""
    for name in list(os.environ):
        if name.startswith("FI_") and name != "FI_HOME":
            monkeypatch.delenv(name)
    monkeypatch.setenv("FI_OPENAI_BASE_URL", UNREACHABLE_SERVER)
    return monkeypatch


def judge_on(engine: str, settings: Settings | None = None, **changed) -> Settings:
    """The settings with the judge on `engine` and `changed` set."""
    settings = settings or Settings()
    return Settings(**{**settings.model_dump(), "judge_engine": engine, **changed})


def engine_config(settings: Settings) -> EngineConfig:
    return role_resource(Judge, settings).engine_config()


def test_the_table_changes_every_engine_setting():
    assert set(CHANGED) == set(EngineSettings.model_fields)
    defaults = EngineSettings()
    assert [name for name, value in CHANGED.items() if getattr(defaults, name) == value] == []


@pytest.mark.parametrize("name", list(CHANGED))
def test_every_engine_setting_reaches_what_the_engine_is_given(name, environment):
    variable = f"FI_{name.upper()}"
    assert f"`{variable}`" in README.read_text(encoding="utf-8"), "documented under its name"
    before = {engine: engine_config(judge_on(engine)) for engine in ENGINES}
    environment.setenv(variable, str(CHANGED[name]))
    after = {engine: engine_config(judge_on(engine)) for engine in ENGINES}
    changed_on = [engine for engine in ENGINES if after[engine] != before[engine]]
    if name in EngineOptions.model_fields:
        # Every engine is given every engine option, as set.
        assert changed_on == list(ENGINES)
        assert {engine: getattr(after[engine], name) for engine in ENGINES} == dict.fromkeys(
            ENGINES, CHANGED[name]
        )
    else:
        # An engine's batch size is the batch size of a role on it.
        assert changed_on, f"{variable} reaches no engine"
        assert {engine: after[engine].batch_size for engine in changed_on} == dict.fromkeys(
            changed_on, CHANGED[name]
        )


def test_every_engine_setting_is_read_from_its_fi_toml_key(environment, tmp_path):
    def toml(value) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        return f'"{value}"' if isinstance(value, str) else str(value)

    (tmp_path / "fi.toml").write_text(
        "".join(f"{name} = {toml(value)}\n" for name, value in CHANGED.items())
    )
    environment.delenv("FI_OPENAI_BASE_URL")
    settings = Settings()
    assert {name: getattr(settings, name) for name in CHANGED} == CHANGED


def test_the_api_key_stays_out_of_the_engine_s_config_and_the_resource(environment):
    secret = "sk-never-in-config"
    environment.setenv("FI_OPENAI_API_KEY", secret)
    resource = role_resource(Judge, judge_on("openai"))
    assert secret not in repr(resource.engine_config()) + repr(resource)
    assert resource.engine_config().openai_api_key_env == "FI_OPENAI_API_KEY"


def _spec_key_version(settings: Settings):
    """What the judge's calls are cached under, one call's key, and the judge's version."""
    resource = role_resource(Judge, settings)
    aids = RulesAids(embedder_model=settings.embedder_model)
    (key,) = resource.cache_keys([PAIR], aids)
    return resource.call_spec(aids), key, role_version("judge", settings)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_parameter_an_engine_adds_changes_the_cache_key_and_the_version(
    engine, environment, monkeypatch
):
    """As if the engine's code began to key its calls by one more parameter: nothing else is
    edited, and the role's assets go stale with its cached answers."""
    settings = judge_on(engine)
    spec, key, version = _spec_key_version(settings)
    engine_class = engines._CLASSES[engine]
    params = engine_class.params
    monkeypatch.setattr(
        engine_class, "params", lambda self, role: {**params(self, role), "temperature": 0.7}
    )
    new_spec, new_key, new_version = _spec_key_version(settings)
    assert new_spec.params == {**spec.params, "temperature": 0.7}
    assert new_key != key
    assert new_version != version and "temperature=0.7" in new_version


@pytest.mark.parametrize("engine", ENGINES)
def test_a_setting_changes_the_version_exactly_when_it_changes_the_calls_spec(engine, environment):
    base = judge_on(engine)
    spec, key, version = _spec_key_version(base)
    deciding = set()
    for name, value in CHANGED.items():
        new_spec, new_key, new_version = _spec_key_version(judge_on(engine, base, **{name: value}))
        assert (new_version != version) == (new_spec != spec), name
        if new_spec != spec:
            assert new_key != key, name
            deciding.add(name)
    assert deciding == DECIDE_OUTPUTS[engine]


def test_a_role_s_own_vllm_options_reach_its_llm_and_no_other(environment, tmp_path):
    """A judge larger than one GPU: `[vllm_roles.judge]` in fi.toml shards it over two GPUs with
    its own context length and dtype; the genericizer keeps the engines' options. What vLLM's
    `LLM()` is given is read from the engine (`llm_kwargs`), no vLLM needed."""
    (tmp_path / "fi.toml").write_text(
        "judge_engine = 'vllm'\ngenericizer_engine = 'vllm'\nvllm_max_model_len = 4096\n"
        "[vllm_roles.judge]\ntensor_parallel_size = 2\nmax_model_len = 8192\n"
        "dtype = 'bfloat16'\n"
    )
    environment.chdir(tmp_path)
    get_settings.cache_clear()
    settings = get_settings()
    judge = VLLMEngine(role_resource(Judge, settings).engine_config()).llm_kwargs()
    templater = VLLMEngine(role_resource(Genericizer, settings).engine_config()).llm_kwargs()
    assert (judge["tensor_parallel_size"], judge["max_model_len"], judge["dtype"]) == (
        2,
        8192,
        "bfloat16",
    )
    assert (templater["tensor_parallel_size"], templater["max_model_len"]) == (1, 4096)
    assert templater["dtype"] == "auto" and templater["model"] == settings.genericizer_model
    # Another dtype decides the judge's outputs: its calls are keyed apart.
    toml = tmp_path / "fi.toml"
    toml.write_text(toml.read_text().replace("dtype = 'bfloat16'\n", ""))
    get_settings.cache_clear()
    assert role_version("judge", get_settings()) != role_version("judge", settings)
