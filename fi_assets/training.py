"""training_budget and trained_checkpoint[recipe]: stage F's training.

training_budget holds the control of the comparison (fi_method.corpus.budget): the tokens every
recipe trains on, by default the smallest recipe's packed total, with the blocking check that every
recipe can fill it without repeating data. trained_checkpoint runs the standalone trainer
(`training/`) through Dagster Pipes on every training shard of the recipe, for the budget's whole
steps and one pass at most, so its metric lines stream into the run's log and its final metrics
become the materialization's metadata. It runs as a subprocess of the step (one process, or
torchrun over FI_TRAINER_GPUS_PER_NODE GPUs), or, with FI_TRAINER_NODES > 1, as a multi-node
torchrun Job on Kubernetes whose rank 0 reports through a file on the shared FI_HOME."""

import json
import os
from pathlib import Path

import dagster as dg

from fi_assets.checks import TRAINING_BUDGET, check_result, failed_checks_tags
from fi_assets.packing import packed_counts, training_files
from fi_assets.partitions import by_recipe, doc_shard_recipes, partition_keys, recipes
from fi_assets.placement import on_gpu
from fi_assets.reporting import line_chart
from fi_assets.versions import UPSTREAM_PARTITIONS_TAG
from fi_method.corpus.budget import (
    TrainingBudget,
    plan_budget,
    tokens_by_recipe_markdown,
    tokens_by_shard_markdown,
    training_steps,
)
from fi_method.corpus.packing import load_training_tokenizer
from fi_method.text import content_hash
from fi_resources.cluster import job_name, run_training_job, trainer_command, training_job_manifests
from fi_resources.settings import Settings
from fi_resources.storage import Storage
from fi_resources.tables import PACKED_CORPUS, keys


class TrainingConfig(dg.Config):
    """The trainer's main knobs; every other one keeps the trainer's default (python -m
    training.train --help). How long it trains is not one of them: every recipe trains on the
    training budget (training_budget), whole steps of batch_size x seq_len tokens. The defaults
    train the `tiny` preset, for a CPU demo."""

    preset: str = "tiny"
    seq_len: int = 256
    batch_size: int = 4
    lr: float = 3e-3
    warmup_steps: int = 5
    answer_only_loss: bool = False
    seed: int = 0


def current_budget(storage: Storage, settings: Settings) -> TrainingBudget:
    """The training budget of what is packed now (FI_TRAINING_TOKENS, or the smallest recipe's
    packed total over the training shards)."""
    return plan_budget(
        packed_counts(storage, settings.heldout_doc_shard),
        settings.training_tokens or None,
        cap=settings.max_training_tokens,
    )


@dg.asset(
    deps=keys(PACKED_CORPUS),
    group_name="training",
    kinds={"polars"},
    code_version="1",
    check_specs=[TRAINING_BUDGET],
    description="The control of the comparison: the packed tokens every recipe trains on, "
    "FI_TRAINING_TOKENS or by default the smallest recipe's total over the training shards (all "
    "but FI_HELDOUT_DOC_SHARD; at most FI_MAX_TRAINING_TOKENS when set). Shows each recipe's packed tokens against the documents' tokens, "
    "in total and per shard. Its check recipes_fill_training_budget fails, and no model trains, "
    "when a recipe could reach the budget only by repeating data.",
)
def training_budget(
    context: dg.AssetExecutionContext, storage: Storage, settings: dg.ResourceParam[Settings]
) -> dg.MaterializeResult:
    counts = packed_counts(storage, settings.heldout_doc_shard)
    budget = plan_budget(counts, settings.training_tokens or None, cap=settings.max_training_tokens)
    check = check_result(TRAINING_BUDGET, len(budget.packed_tokens), budget.failures)
    if budget.failures:
        context.log.error("the training budget cannot be met:\n" + "\n".join(budget.failures))
    # Removing a document shard changes the totals: `fi materialize` then plans this again.
    read = content_hash(*sorted(partition_keys(context.instance, doc_shard_recipes)))
    return dg.MaterializeResult(
        metadata={
            "training_budget_tokens": budget.tokens,
            "budget_source": budget.source,
            # The documents' own tokens, as `standard` packs them (absent when it is not packed).
            **({"document_tokens": budget.document_tokens} if budget.document_tokens else {}),
            **{f"{recipe}_packed_tokens": n for recipe, n in budget.packed_tokens.items()},
            "tokens_by_recipe": dg.MetadataValue.md(tokens_by_recipe_markdown(budget)),
            "tokens_by_shard": dg.MetadataValue.md(tokens_by_shard_markdown(counts)),
        },
        # What training reads of it: a recipe re-trains when the budget changes, not when
        # another recipe's packing does.
        data_version=dg.DataVersion(content_hash(str(budget.tokens))),
        check_results=[check],
        tags={UPSTREAM_PARTITIONS_TAG + PACKED_CORPUS.name: read, **failed_checks_tags([check])},
    )


def trainer_step_gpus(settings: Settings) -> int:
    """GPUs of trained_checkpoint's own step: the trainer's, unless a Kubernetes Job trains."""
    return settings.trainer_gpus_per_node if settings.trainer_nodes == 1 else 0


def trained_checkpoint_asset(step_gpus: int) -> dg.AssetsDefinition:
    """trained_checkpoint, its step asking for `step_gpus` GPUs on Kubernetes (placement)."""

    @dg.asset(
        name="trained_checkpoint",
        partitions_def=recipes,
        ins={
            "packed_corpus": dg.AssetIn(partition_mapping=by_recipe, dagster_type=dg.Nothing),
            "training_budget": dg.AssetIn(dagster_type=dg.Nothing),
        },
        group_name="training",
        kinds={"pytorch"},
        code_version="2",
        **on_gpu(step_gpus),
        description="A model pre-trained from scratch on one recipe's packed corpus (all document "
        "shards but the held-out one, FI_HELDOUT_DOC_SHARD) for the training budget's whole "
        "steps, the same for every recipe: a recipe with more packed tokens trains on a seeded "
        "subset of its samples, none is repeated. The standalone trainer in `training/` runs "
        "through Dagster Pipes (FI_TRAINER_NODES x FI_TRAINER_GPUS_PER_NODE GPUs); the checkpoint "
        "and its Hugging Face export are under FI_HOME/checkpoints/<recipe>/.",
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
        # The same refusal as training_budget's check, for a run that did not materialize it.
        budget = current_budget(storage, settings)
        if budget.failures:
            raise dg.Failure(
                "the training budget cannot be met, so no recipe trains:\n"
                + "\n".join(budget.failures)
            )
        step_tokens = _step_tokens(config, settings)
        steps = training_steps(budget.tokens, step_tokens)
        if steps == 0:
            raise dg.Failure(
                f"the training budget of {budget.tokens:,} tokens ({budget.source}) is less than "
                f"one optimizer step of {step_tokens:,} (batch_size x seq_len x GPUs): lower "
                "batch_size or seq_len in the run config"
            )
        args = _train_args(config, steps, files, storage.root / "checkpoints" / recipe, settings)
        context.log.info(
            f"training on {len(files)} packed shard(s) of {recipe} for {steps} steps "
            f"({steps * step_tokens:,} tokens of a budget of {budget.tokens:,}, {budget.source}), "
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
            "training_tokens": steps * step_tokens,
            "training_budget_tokens": budget.tokens,
            "recipe_tokens": budget.packed_tokens[recipe],
            "recipe_samples": budget.samples[recipe],
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
        # Never repeat a sample to reach the budget: the budget check guarantees one pass holds it.
        "--max-epochs",
        "1",
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
