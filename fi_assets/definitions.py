"""The one place the Dagster definitions are built: assets, sensor and resources, with resource
settings taken from FI_* environment variables or fi.toml (fi_resources.settings)."""

import dagster as dg

from fi_assets.documents import documents
from fi_assets.evaluation import eval_report, eval_scores
from fi_assets.ingestion import inbox_sensor, ingested_documents, ingested_queries
from fi_assets.matching import document_chunks, matched_pairs
from fi_assets.packing import packed_corpus
from fi_assets.queries import raw_queries
from fi_assets.synthesis import continuations, instantiated_pairs, judged_pairs
from fi_assets.templates import instruction_templates, template_index
from fi_assets.training import trained_checkpoint_asset, trainer_step_gpus, training_budget
from fi_resources.embedder import Embedder, default_similarity_threshold
from fi_resources.roles import (
    BenchmarkJudge,
    Continuer,
    Genericizer,
    Instantiator,
    Judge,
    role_resource,
    role_version,
)
from fi_resources.settings import Settings, get_settings
from fi_resources.storage import Storage
from fi_resources.template_index import TemplateIndex


def _with_model_version(asset: dg.AssetsDefinition, model: str) -> dg.AssetsDefinition:
    """Append the engine/model to the asset's code version: switching models in the config makes
    the asset's partitions stale in the UI and for `fi materialize`, like a code change."""
    return asset.map_asset_specs(
        lambda spec: spec.replace_attributes(code_version=f"{spec.code_version}+{model}")
    )


def data_version_automation() -> dg.AutomationCondition:
    """Run a partition when it is missing, when an upstream partition's content hash changed, or
    when its own code version changed (a new prompt, rubric, model or threshold); plain `eager()`
    would also re-run it when upstream was re-materialized with the same content."""
    return dg.AutomationCondition.eager().replace(
        "any_deps_updated",
        dg.AutomationCondition.any_deps_match(dg.AutomationCondition.data_version_changed())
        | dg.AutomationCondition.code_version_changed(),
    )


def _automated(asset: dg.AssetsDefinition) -> dg.AssetsDefinition:
    return asset.map_asset_specs(
        lambda spec: spec.replace_attributes(automation_condition=data_version_automation())
    )


def _owned(asset, owners: dict[str, list[str]]):
    """The asset (a definition, or the spec of an inbox table) owned by its group's owners."""

    def own(spec: dg.AssetSpec) -> dg.AssetSpec:
        return spec.replace_attributes(owners=owners.get(spec.group_name, []))

    return own(asset) if isinstance(asset, dg.AssetSpec) else asset.map_asset_specs(own)


def build_assets(settings: Settings) -> list:
    """Every asset, its code version made of its own, the versions of the roles it calls and
    the settings that change its output (so a new prompt, rubric, model or threshold makes
    exactly what it feeds stale); the data assets are automated when `settings.automation` is
    on, training and evaluation never."""
    threshold = settings.similarity_threshold or default_similarity_threshold(
        settings.embedder_model
    )
    embedder = settings.embedder_model
    derived = [
        raw_queries,
        documents,
        _with_model_version(instruction_templates, role_version("genericizer", settings)),
        _with_model_version(template_index, embedder),
        _with_model_version(
            document_chunks,
            f"{embedder}:{settings.max_chunk_tokens or 'window'}|k={settings.pooling_k}",
        ),
        _with_model_version(
            matched_pairs, f"{embedder}@{threshold}|per_vector={settings.templates_per_vector}"
        ),
        _with_model_version(
            instantiated_pairs,
            f"{role_version('instantiator', settings)}|uses={settings.max_template_uses}",
        ),
        _with_model_version(judged_pairs, role_version("judge", settings)),
        _with_model_version(continuations, role_version("continuation", settings)),
        _with_model_version(
            packed_corpus,
            f"{settings.training_tokenizer or 'llama3'}@{settings.packing_seed}",
        ),
    ]
    # Training and evaluation cost GPU hours: never started by automation, only by hand (the UI,
    # `fi materialize`) or a schedule.
    expensive = [
        # The budget's own version follows the override; training follows the budget's content
        # (its DataVersion is the budget), so a recipe re-trains exactly when the budget changes.
        _with_model_version(
            training_budget,
            f"heldout:{settings.heldout_doc_shard}|tokens:{settings.training_tokens or 'smallest'}"
            f"|cap:{settings.max_training_tokens}",
        ),
        _with_model_version(
            trained_checkpoint_asset(trainer_step_gpus(settings)),
            f"heldout:{settings.heldout_doc_shard}",
        ),
        _with_model_version(
            eval_scores,
            f"{role_version('candidate', settings)}|{role_version('benchmark_judge', settings)}"
            f"|alpaca:{settings.alpaca_eval_baseline}|heldout:{settings.heldout_doc_shard}",
        ),
        eval_report,
    ]
    if settings.automation:
        derived = [_automated(asset) for asset in derived]
    if settings.backfill_shards_per_run:
        policy = dg.BackfillPolicy.multi_run(settings.backfill_shards_per_run)
        derived = [
            asset.with_attributes(backfill_policy=policy) if asset.backfill_policy else asset
            for asset in derived
        ]
    assets = [ingested_queries, ingested_documents, *derived, *expensive]
    return [_owned(asset, settings.owners) for asset in assets]


def build_resources(settings: Settings) -> dict:
    """The resources of every asset, configured from `settings`."""
    storage = Storage.from_settings(settings)
    return {
        "storage": storage,
        "genericizer": role_resource(Genericizer, settings),
        "instantiator": role_resource(
            Instantiator, settings, min_excerpt_ratio=settings.min_excerpt_ratio
        ),
        "judge": role_resource(Judge, settings, min_score=settings.min_judge_score),
        "continuer": role_resource(Continuer, settings),
        "benchmark_judge": role_resource(BenchmarkJudge, settings),
        "embedder": Embedder(
            model=settings.embedder_model,
            device=settings.device,
            batch_size=settings.embedding_batch_size,
            max_chunk_tokens=settings.max_chunk_tokens,
            similarity_threshold=settings.similarity_threshold,
            pooling_k=settings.pooling_k,
        ),
        "index": TemplateIndex(
            uri=str(storage.lancedb_dir),
            device=settings.device,
            search_kind=settings.template_search,
            approximate_from=settings.approximate_search_from,
            nprobes=settings.search_nprobes,
        ),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
        # The settings themselves, for the assets that read one directly (a shard name, a seed):
        # passed in like any resource, so a run's settings are the definitions'.
        "settings": settings,
    }


def build_executor(settings: Settings) -> dg.ExecutorDefinition | None:
    """The executor `settings.executor` names: None keeps Dagster's default (processes on the
    run's machine); k8s runs each step in its own pod, with the GPU steps' requests (placement)."""
    if settings.executor == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    return None


def build_definitions(settings: Settings) -> dg.Definitions:
    return dg.Definitions(
        assets=build_assets(settings),
        sensors=[inbox_sensor],
        resources=build_resources(settings),
        executor=build_executor(settings),
    )


defs = build_definitions(get_settings())
