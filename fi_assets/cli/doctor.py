"""`fi doctor`: a preflight before a long backfill. Each check says what it found, or what failed
and what to do next: the data root, the call cache and the Dagster instance can be written and
reached; each role's engine and model answer (a server lists the model, a model's config and
tokenizer load); the embedder loads; a GPU is visible where an engine needs one."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fi_resources.settings import ROLE_SETTINGS, Settings

# Seconds a server has to list its models: a preflight should not wait like a generation does.
SERVER_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Check:
    """One preflight check: what was checked, whether it passed, what was found (or what
    failed), and what to do next when it failed."""

    name: str
    ok: bool
    found: str
    next_step: str = ""

    def line(self) -> str:
        """The check as `fi doctor` prints it: one line."""
        status = "ok  " if self.ok else "FAIL"
        advice = f" -> {self.next_step}" if not self.ok and self.next_step else ""
        return f"{status} {self.name}: {self.found}{advice}"


def _failed(name: str, error: BaseException, next_step: str) -> Check:
    message = " ".join(str(error).split()) or type(error).__name__
    return Check(name, False, message[:300], next_step)


def data_root_check(settings: Settings) -> Check:
    """The data root exists (or can be made) and takes a file."""
    home = settings.home.expanduser().resolve()
    try:
        home.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=home, prefix=".fi-doctor-"):
            pass
    except OSError as error:
        return _failed(f"data root {home}", error, "set FI_HOME to a folder you can write")
    return Check("data root", True, f"{home} is writable")


def call_cache_check(settings: Settings) -> Check:
    """The call cache answers a lookup (PostgreSQL when FI_MODEL_CALLS_URL is set)."""
    from fi_resources.model_calls import open_model_call_cache

    where = "PostgreSQL" if settings.model_calls_url else "SQLite in the data root"
    try:
        open_model_call_cache(settings.home, settings.model_calls_url).lookup(["fi-doctor"])
    except Exception as error:  # noqa: BLE001 (any driver's error is the finding)
        return _failed(
            f"call cache ({where})",
            error,
            "check FI_MODEL_CALLS_URL (host, port, user, database) and that the server is up",
        )
    return Check("call cache", True, f"{where} answers")


def instance_check(settings: Settings) -> Check:
    """The Dagster instance of the data root opens and lists its runs."""
    from fi_resources.instance import open_instance

    try:
        runs = open_instance(settings.home).get_runs_count()
    except Exception as error:  # noqa: BLE001 (any storage error is the finding)
        return _failed(
            "Dagster instance",
            error,
            "check FI_DAGSTER_YAML and the storage it names (PostgreSQL: host and credentials)",
        )
    return Check("Dagster instance", True, f"{runs} runs recorded")


def _server_check(name: str, url: str, model: str, api_key_env: str) -> Check:
    """One OpenAI-compatible server lists `model` among its models."""
    import openai

    key = os.environ.get(api_key_env) or "EMPTY"
    client = openai.OpenAI(base_url=url, api_key=key, timeout=SERVER_TIMEOUT_S, max_retries=0)
    try:
        served = [entry.id for entry in client.models.list()]
    except openai.AuthenticationError:
        return Check(
            f"{name} at {url}", False, "the server refused the API key", f"set {api_key_env}"
        )
    except openai.APIStatusError as error:
        return Check(
            f"{name} at {url}",
            False,
            f"GET /models answered HTTP {error.status_code}",
            "is this an OpenAI-compatible server, and does the URL end in /v1?",
        )
    except openai.APIConnectionError as error:
        return _failed(
            f"{name} at {url}",
            error.__cause__ or error,
            "start the server, or fix FI_OPENAI_BASE_URL",
        )
    if model not in served:
        listed = ", ".join(served[:5]) or "none"
        return Check(
            f"{name} at {url}",
            False,
            f"does not serve {model!r} (it serves: {listed})",
            f"set the role's model to the served name, or serve {model}",
        )
    return Check(f"{name} at {url}", True, f"serves {model}")


def _model_check(name: str, engine: str, model: str, models_dir: Path) -> list[Check]:
    """A model for `transformers` or `vllm`: its config and tokenizer load (local cache, else the
    hub); its context length and whether it has a chat template; vLLM importable."""
    from transformers import AutoConfig, AutoTokenizer

    from fi_resources.models import causal_lm_source

    checks = []
    if engine == "vllm":
        try:
            import vllm  # noqa: F401 (importable is the check)
        except ImportError as error:
            checks.append(_failed(f"{name} engine vllm", error, "make install-gpu"))
    source = causal_lm_source(model, models_dir)
    try:
        config = AutoConfig.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        checks.append(
            _failed(
                f"{name} model {model}",
                error,
                f"download it where the hub is reachable (hf download {model}) into the "
                "HF_HOME this machine reads, or give a local path",
            )
        )
        return checks
    context = getattr(config, "max_position_embeddings", None) or "unknown"
    chat = "a chat template" if tokenizer.chat_template else "no chat template (bare prompts)"
    checks.append(Check(f"{name} model", True, f"{model}: {context} tokens of context, {chat}"))
    return checks


def role_checks(settings: Settings) -> list[Check]:
    """Each role's engine and model, checked as its engine will use it: through the role's
    resource, as the assets build it (its model, URLs and key variable)."""
    from fi_resources.engines import parse_base_urls
    from fi_resources.roles import ROLE_RESOURCES, role_resource

    checks = []
    for role, (_, model_setting) in ROLE_SETTINGS.items():
        resource = role_resource(ROLE_RESOURCES[role], settings)
        engine, model = resource.engine, resource.model_name
        if engine == "rules":
            rules = resource.role.rules is not None
            found = "rules engine (offline, deterministic)" if rules else "rules: no model"
            checks.append(Check(role, True, found))
        elif model_setting is None:
            checks.append(Check(role, True, f"{engine} on the trained checkpoints"))
        elif engine == "openai":
            checks += [
                _server_check(role, url, model, resource.openai_api_key_env)
                for url in parse_base_urls(resource.openai_base_url)
            ]
        else:
            checks += _model_check(role, engine, model, settings.home / "models")
    return checks


def embedder_check(settings: Settings) -> Check:
    """The embedder loads: its dimension, window and the prompts it declares."""
    from sentence_transformers import SentenceTransformer

    from fi_resources.models import sentence_transformer_source

    try:
        model = SentenceTransformer(sentence_transformer_source(settings.embedder_model))
    except (OSError, ValueError) as error:
        return _failed(
            f"embedder {settings.embedder_model}",
            error,
            "download it where the hub is reachable, or set FI_EMBEDDER_MODEL to a local path",
        )
    prompts = ", ".join(sorted(model.prompts)) or "none"
    return Check(
        "embedder",
        True,
        f"{settings.embedder_model}: dimension {model.get_embedding_dimension()}, "
        f"window {model.max_seq_length} tokens, prompts: {prompts}",
    )


def gpu_check(settings: Settings) -> Check | None:
    """Whether a GPU is visible, where an engine or the device setting needs one."""
    engines = {getattr(settings, engine) for engine, _ in ROLE_SETTINGS.values()}
    if "vllm" not in engines and settings.device != "cuda":
        return None
    import torch

    if torch.cuda.is_available():
        return Check("GPU", True, torch.cuda.get_device_name(0))
    return Check(
        "GPU",
        False,
        "none visible, and a vllm engine or FI_DEVICE=cuda needs one",
        "run on a GPU node (CUDA_VISIBLE_DEVICES), or pick the transformers or openai engine",
    )


def run_checks(settings: Settings) -> list[Check]:
    """Every preflight check for `settings`, in the order `fi doctor` prints them."""
    checks = [data_root_check(settings), call_cache_check(settings), instance_check(settings)]
    checks += role_checks(settings)
    checks.append(embedder_check(settings))
    gpu = gpu_check(settings)
    return checks + ([gpu] if gpu else [])
