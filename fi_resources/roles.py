"""The model roles as Dagster resources: one generic path calls any role (fi_method's declared
`Role`s) on any engine (fi_resources.engines) through the model-call cache, so nothing is ever
computed twice. A resource class per role only names its role and carries the thresholds its
step applies."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from fi_method.evaluation import benchmarks
from fi_method.roles import Role, RulesAids
from fi_method.synthesis import continuations, instantiator, judge
from fi_method.synthesis.excerpts import MIN_EXCERPT_RATIO
from fi_method.templating import genericizer
from fi_resources.engines import (
    RULES_MODEL,
    Engine,
    EngineConfig,
    EngineName,
    EngineOptions,
    load_engine,
)
from fi_resources.model_calls import CallResult, CallSpec, ModelCallCache, open_model_call_cache
from fi_resources.settings import ROLE_SETTINGS, Settings

Progress = Callable[[int, int, int], None]
# Who is calling, for the cache's audit columns: (run_id, partition).
Caller = tuple[str | None, str | None]


def declared_roles() -> dict[str, Role]:
    """Every role of the method, by name, as its module declares it now."""
    roles = (
        genericizer.ROLE,
        instantiator.ROLE,
        judge.ROLE,
        continuations.ROLE,
        benchmarks.CANDIDATE,
        benchmarks.BENCHMARK_JUDGE,
    )
    return {role.name: role for role in roles}


class RoleModel(ConfigurableResource, EngineOptions):
    """One role's engine and model, with the engines' options (EngineOptions, declared there
    once). The engine is built on the first call, or on the first request for a spec or keys;
    its model loads on the first call that misses the cache. The openai engine's API key is read
    from the environment variable `openai_api_key_env` names, so it never appears in run config,
    logs or the cache."""

    ROLE_NAME: ClassVar[str]

    engine: EngineName = Field("rules", description="rules, transformers, vllm or openai")
    model: str = Field("", description="HF id, local path or served model name (not rules)")
    home: str = Field(description="the data root, FI_HOME: model weights and the call cache")
    batch_size: int = Field(
        8,
        ge=1,
        description="inputs per batch (per generate call for vllm, per dispatch for openai); "
        "each answer is cached as soon as it returns",
    )
    model_calls_url: str | None = Field(
        None, description="PostgreSQL URL of the model-call cache; default: SQLite in FI_HOME"
    )
    openai_api_key_env: str = Field("FI_OPENAI_API_KEY")

    _engine: Engine | None = PrivateAttr(default=None)

    @property
    def role(self) -> Role:
        return declared_roles()[self.ROLE_NAME]

    @property
    def model_name(self) -> str:
        return RULES_MODEL if self.engine == "rules" else self.model or self.role.default_model

    @property
    def label(self) -> str:
        """engine:model, or just rules."""
        return "rules" if self.engine == "rules" else f"{self.engine}:{self.model_name}"

    @property
    def is_llm(self) -> bool:
        return self.engine != "rules"

    @property
    def cache(self) -> ModelCallCache:
        return open_model_call_cache(Path(self.home), self.model_calls_url)

    def engine_config(self, aids: RulesAids | None = None) -> EngineConfig:
        """What the role's engine is given: every engine option as this resource holds it, and
        what is settled for the role: its model, output budget and batch size."""
        batch_size = self.batch_size
        if self.engine == "openai":
            # A dispatch must keep every allowed request in flight.
            batch_size = max(batch_size, 16 * self.openai_max_concurrency)
        settled = {
            "engine": self.engine,
            "model": self.model_name,
            "home": self.home,
            "batch_size": batch_size,
            "max_new_tokens": self.max_new_tokens or self.role.max_new_tokens,
            "openai_api_key_env": self.openai_api_key_env,
            "aids": aids or RulesAids(),
        }
        return EngineConfig(**(self.engine_options() | settled))

    def call_spec(self, aids: RulesAids | None = None, params: dict | None = None) -> CallSpec:
        """What, besides each input, decides the role's outputs, as the call cache keys them:
        the role's version on the engine, the engine, the model and the engine's parameters,
        with `params`. No model loads for it. Assets' code versions are made of it too
        (`role_version`), so what makes a cached answer stale makes its asset stale."""
        return self._spec(self._built_engine(aids), params)

    def call(
        self,
        items: list[dict],
        aids: RulesAids | None = None,
        progress: Progress | None = None,
        caller: Caller = (None, None),
        params: dict | None = None,
    ) -> CallResult:
        """The role's raw outputs for `items` (dicts holding what the role's `request` and rules
        read), in order, through the cache. `aids` serve a rules implementation; `params` add to
        the cache key whatever else decides the outputs."""
        engine, spec, prepared, keys = self._prepared(items, aids, params)
        return self.cache.call(
            spec,
            keys,
            prepared,
            lambda batch: engine.answer(self.role, batch),
            engine.config.batch_size,
            progress,
            *caller,
        )

    def cache_keys(
        self, items: list[dict], aids: RulesAids | None = None, params: dict | None = None
    ) -> list[str]:
        """The call cache's key of each of `items`, as `call` builds it: from what the engine
        answers from (a model's whole request, or every field the rules read), never from a
        choice of fields. Loads no model."""
        return self._prepared(items, aids, params)[3]

    def _built_engine(self, aids: RulesAids | None) -> Engine:
        """The role's engine for `aids`, built once for as long as its config holds."""
        config = self.engine_config(aids)
        if self._engine is None or self._engine.config != config:
            self._engine = load_engine(config)
        return self._engine

    def _spec(self, engine: Engine, params: dict | None) -> CallSpec:
        role = self.role
        return CallSpec(
            role.name,
            engine.name,
            engine.model,
            engine.version(role),
            {**engine.params(role), **(params or {})},
        )

    def _prepared(
        self, items: list[dict], aids: RulesAids | None, params: dict | None
    ) -> tuple[Engine, CallSpec, list, list[str]]:
        """The engine, the calls' spec, the engine's prepared inputs and their keys."""
        engine = self._built_engine(aids)
        spec = self._spec(engine, params)
        prepared = engine.prepare(self.role, items)
        return engine, spec, prepared, [spec.key(engine.key(self.role, one)) for one in prepared]


class Genericizer(RoleModel):
    """Queries (`{"query"}`) -> JSON `{"template", "compatible_document_description"}`."""

    ROLE_NAME: ClassVar[str] = "genericizer"


class Instantiator(RoleModel):
    """`{"template", "chunk", "document"}` (and `anchor`, where in the chunk the template
    matched, for the rules) -> JSON `{"instruction", "answer"}` or `null`. The rules engine fills
    and answers from the matched chunk; a model sees the document window."""

    ROLE_NAME: ClassVar[str] = "instantiator"
    min_excerpt_ratio: float = Field(MIN_EXCERPT_RATIO, ge=0.0, le=1.0)


class Judge(RoleModel):
    """`{"instruction", "answer", "document"}` (and `template` where there is one) ->
    `<feedback>...<score>N</score>`; the rules judge measures grounding against the document."""

    ROLE_NAME: ClassVar[str] = "judge"
    min_score: int = Field(judge.MIN_JUDGE_SCORE, ge=1, le=5)


class Continuer(RoleModel):
    """`{"prompt"}` (a first half) -> a teacher's continuation. No rules engine: without a
    teacher the continuations asset uses each document's own second half."""

    ROLE_NAME: ClassVar[str] = "continuation"


class Candidate(RoleModel):
    """A trained checkpoint answering `{"question"}` in its training format. Built per recipe by
    eval_scores, which keys the cache by a hash of its weights too."""

    ROLE_NAME: ClassVar[str] = "candidate"
    engine: EngineName = Field("transformers", description="transformers, vllm or openai")


class BenchmarkJudge(RoleModel):
    """`{"messages"}` built by each benchmark's protocol -> the judge's verdict."""

    ROLE_NAME: ClassVar[str] = "benchmark_judge"


# The resource of each role, by the role's name.
ROLE_RESOURCES: dict[str, type[RoleModel]] = {
    resource.ROLE_NAME: resource
    for resource in (Genericizer, Instantiator, Judge, Continuer, Candidate, BenchmarkJudge)
}
# The model of a role that has no model setting: a trained checkpoint, whose path differs per
# recipe and whose own asset versions it.
CHECKPOINT = "checkpoint"


def role_resource(resource: type[RoleModel], settings: Settings, **extra) -> RoleModel:
    """The resource of one role, configured from `settings` (its FI_<ROLE>_ENGINE and _MODEL,
    and every engine option); `extra` sets the rest (thresholds, a candidate's model)."""
    engine_setting, model_setting = ROLE_SETTINGS[resource.ROLE_NAME]
    engine = getattr(settings, engine_setting)
    fields = settings.engine_options() | {
        "engine": engine,
        "home": str(settings.home),
        "batch_size": settings.batch_size_for(engine),
        "model_calls_url": settings.model_calls_url,
        "openai_base_url": settings.base_url_for(resource.ROLE_NAME),
    }
    if model_setting is not None:
        fields["model"] = getattr(settings, model_setting)
    if resource.ROLE_NAME in settings.vllm_roles:
        fields |= settings.vllm_roles[resource.ROLE_NAME].engine_options()
    if resource is BenchmarkJudge and settings.eval_judge_base_url:
        fields["openai_api_key_env"] = "FI_EVAL_JUDGE_API_KEY"
    both_vllm = settings.eval_engine == settings.eval_judge_engine == "vllm"
    if both_vllm and resource in (Candidate, BenchmarkJudge):
        # Both load in eval_scores' one process: each takes half of the share.
        fields["vllm_gpu_memory_share"] = settings.vllm_gpu_memory_share / 2
    return resource(**{**fields, **extra})


def role_version(name: str, settings: Settings) -> str:
    """Everything that decides the results of role `name` under `settings`, for the code version
    of the assets that call it: the spec its calls are cached under (`RoleModel.call_spec`: the
    role's version on its engine, the engine, the model and every parameter the engine keys
    calls by), and the settings the role declares (its thresholds, which decide what its step
    keeps). Nothing here lists what decides a call: a parameter an engine adds to its calls'
    spec is in the version by construction."""
    role = declared_roles()[name]
    engine_setting, model_setting = ROLE_SETTINGS[name]
    if getattr(settings, engine_setting) == "rules" and role.rules is None:
        # Its asset does without a model (teacher-free continuations, mechanical scores).
        return f"{role.name}:none"
    model = {} if model_setting else {"model": CHECKPOINT}
    resource = role_resource(ROLE_RESOURCES[name], settings, **model)
    spec = resource.call_spec(RulesAids(embedder_model=settings.embedder_model))
    thresholds = [f"{setting}={getattr(settings, setting)}" for setting in role.settings]
    return "|".join([spec.describe(), *thresholds])
