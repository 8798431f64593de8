"""trained_checkpoint[recipe]: stage F's training. The standalone trainer (`training/`) runs through
Dagster Pipes, so its metric lines stream into the run's log and its final metrics become the
materialization's metadata; it trains on every document shard of the recipe. It runs as a
subprocess of the step (one process, or torchrun over FI_TRAINER_GPUS_PER_NODE GPUs), or, with
FI_TRAINER_NODES > 1, as a multi-node torchrun Job on Kubernetes whose rank 0 reports through a
file on the shared FI_HOME."""

import json
import math
import os
from pathlib import Path

import dagster as dg
import polars as pl

from fi_assets.packing import training_files
from fi_assets.partitions import by_recipe, recipes
from fi_assets.placement import on_gpu
from fi_assets.reporting import line_chart
from fi_method.corpus.packing import load_training_tokenizer
from fi_resources.cluster import job_name, run_training_job, trainer_command, training_job_manifests
from fi_resources.settings import Settings
from fi_resources.storage import Storage


class TrainingConfig(dg.Config):
    """The trainer's main knobs; every other one keeps the trainer's default (python -m
    training.train --help). How long it trains is not one of them: every recipe trains on
    FI_TRAINING_TOKENS tokens, by default the standard corpus's. The defaults train the `tiny`
    preset, for a CPU demo."""

    preset: str = "tiny"
    seq_len: int = 256
    batch_size: int = 4
    lr: float = 3e-3
    warmup_steps: int = 5
    answer_only_loss: bool = False
    seed: int = 0


def trainer_step_gpus(settings: Settings) -> int:
    """GPUs of trained_checkpoint's own step: the trainer's, unless a Kubernetes Job trains."""
    return settings.trainer_gpus_per_node if settings.trainer_nodes == 1 else 0


def trained_checkpoint_asset(step_gpus: int) -> dg.AssetsDefinition:
    """trained_checkpoint, its step asking for `step_gpus` GPUs on Kubernetes (placement)."""

    @dg.asset(
        name="trained_checkpoint",
        partitions_def=recipes,
        ins={"packed_corpus": dg.AssetIn(partition_mapping=by_recipe, dagster_type=dg.Nothing)},
        group_name="training",
        kinds={"pytorch"},
        code_version="1",
        **on_gpu(step_gpus),
        description="A model pre-trained from scratch on one recipe's packed corpus (all document "
        "shards but the held-out one, FI_HELDOUT_DOC_SHARD), by the standalone trainer in "
        "`training/` launched through Dagster Pipes (FI_TRAINER_NODES x "
        "FI_TRAINER_GPUS_PER_NODE GPUs); the checkpoint and its Hugging Face export are under "
        "FI_HOME/checkpoints/<recipe>/.",
    )
    def trained_checkpoint(
        context: dg.AssetExecutionContext,
        config: TrainingConfig,
        storage: Storage,
        pipes_subprocess_client: dg.PipesSubprocessClient,
        settings: dg.ResourceParam[Settings],
    ) -> dg.MaterializeResult:
        recipe = context.partition_key
        trained_on = training_files(storage, recipe, settings.heldout_doc_shard)
        files = list(trained_on.values())
        if not files:
            raise FileNotFoundError(
                f"no packed_corpus for recipe {recipe} outside the held-out shard: materialize it"
            )
        shards = list(trained_on)
        tokens = settings.training_tokens or document_tokens(context.instance, shards, recipe)
        steps = training_steps(tokens, config, settings)
        args = _train_args(config, steps, files, storage.root / "checkpoints" / recipe, settings)
        context.log.info(
            f"training on {len(files)} packed shard(s) of {recipe} for {steps} steps "
            f"({tokens:,} tokens{'' if settings.training_tokens else ', the standard corpus'}), "
            f"{settings.trainer_nodes} node(s) x {settings.trainer_gpus_per_node} process(es)"
        )
        if settings.trainer_nodes == 1:
            result = pipes_subprocess_client.run(
                command=trainer_command(args, 1, settings.trainer_gpus_per_node),
                context=context,
                cwd=str(Path(__file__).resolve().parents[1]),
            ).get_materialize_result()
        else:
            result = _train_on_kubernetes(context, settings, args, storage)
        metadata = dict(result.metadata or {}) | {
            "training_tokens": steps * _step_tokens(config, settings),
            "recipe_tokens": _packed_tokens(files),
        }
        history_file = Path(metadata["metrics_history"].value)
        history = [json.loads(line) for line in history_file.read_text().splitlines()]
        metadata["loss_curve"] = line_chart(
            [m["step"] for m in history], [m["loss"] for m in history], "training loss", "step"
        )
        return dg.MaterializeResult(metadata=metadata)

    return trained_checkpoint


def _step_tokens(config: TrainingConfig, settings: Settings) -> int:
    return (
        config.batch_size * config.seq_len * settings.trainer_nodes * settings.trainer_gpus_per_node
    )


def training_steps(tokens: int, config: TrainingConfig, settings: Settings) -> int:
    """Optimizer steps that see `tokens` tokens over every training process (at least one)."""
    return max(1, math.ceil(tokens / _step_tokens(config, settings)))


def _packed_tokens(files: list[Path]) -> int:
    return int(pl.scan_parquet(files).select(pl.col("n_tokens").sum()).collect().item())


def document_tokens(instance: dg.DagsterInstance, shards: list[str], recipe: str) -> int:
    """The training documents' own token count (what `standard` packs), as packing recorded it
    for each of the recipe's shards."""
    total = 0
    for shard in shards:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=dg.AssetKey("packed_corpus"), asset_partitions=[f"{shard}|{recipe}"]
            ),
            limit=1,
        ).records
        value = (
            records[0].asset_materialization.metadata.get("document_tokens") if records else None
        )
        if value is None:
            raise FileNotFoundError(
                f"packed_corpus {shard}|{recipe} has no document_tokens: materialize it again"
            )
        total += int(value.value)
    return total


def _train_args(
    config: TrainingConfig, steps: int, files: list[Path], out: Path, settings: Settings
):
    """The trainer's command-line arguments for one recipe."""
    return [
        "--data",
        *map(str, files),
        "--out",
        str(out),
        "--tokenizer",
        load_training_tokenizer(settings.training_tokenizer).source,
        "--preset",
        config.preset,
        "--steps",
        str(steps),
        "--seq-len",
        str(config.seq_len),
        "--batch-size",
        str(config.batch_size),
        "--lr",
        str(config.lr),
        "--warmup-steps",
        str(config.warmup_steps),
        "--seed",
        str(config.seed),
        "--log-every",
        "5",
        "--checkpoint-every",
        str(steps),
        "--answer-only-loss" if config.answer_only_loss else "--no-answer-only-loss",
    ]


def _train_on_kubernetes(context, settings: Settings, args: list[str], storage: Storage):
    """Run the trainer as a multi-node Job; its rank 0 reports through a file on FI_HOME, the one
    place both this step's pod and the Job's pods see."""
    from dagster_k8s.utils import detect_current_namespace

    image = settings.k8s_image or os.environ.get("DAGSTER_CURRENT_IMAGE")
    namespace = settings.k8s_namespace or detect_current_namespace(None)
    if not image or not namespace:
        raise ValueError(
            "FI_TRAINER_NODES > 1 trains on Kubernetes: set FI_K8S_IMAGE and FI_K8S_NAMESPACE "
            "(found in a pod started by the Helm chart)"
        )
    messages = storage.dagster_dir / "pipes" / context.run_id / "trainer.jsonl"
    messages.parent.mkdir(parents=True, exist_ok=True)
    name = job_name(context.partition_key, context.run_id)
    with dg.open_pipes_session(
        context=context,
        context_injector=dg.PipesEnvContextInjector(),
        message_reader=dg.PipesFileMessageReader(str(messages)),
    ) as session:
        env = {**session.get_bootstrap_env_vars(), "FI_HOME": str(storage.root)}
        service, job = training_job_manifests(
            name,
            namespace,
            image,
            args,
            settings.trainer_nodes,
            settings.trainer_gpus_per_node,
            env,
            str(storage.root),
            settings.k8s_fi_home_claim,
        )
        context.log.info(f"starting Job {namespace}/{name}: {settings.trainer_nodes} nodes")
        run_training_job(
            service,
            job,
            lambda client, job, namespace: client.wait_for_job_success(
                job,
                namespace,
                instance=context.instance,
                run_id=context.run_id,
                num_pods_to_wait_for=settings.trainer_nodes,
            ),
        )
    return next(iter(session.get_results()))
