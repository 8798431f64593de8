"""trained_checkpoint[recipe]: stage F's training. The standalone trainer (`training/`) runs as a
subprocess through Dagster Pipes, so its metric lines stream into the run's log and its final
metrics become the materialization's metadata; it trains on every document shard of the recipe."""

import json
import sys
from pathlib import Path

import dagster as dg

from fi_assets.packing import training_files
from fi_assets.partitions import by_recipe, recipes
from fi_assets.reporting import line_chart
from fi_method.packing import load_training_tokenizer
from fi_resources.settings import get_settings
from fi_resources.storage import Storage


class TrainingConfig(dg.Config):
    """The trainer's main knobs; every other one keeps the trainer's default (python -m
    training.train --help). The defaults train the `tiny` preset briefly, for a CPU demo."""

    preset: str = "tiny"
    steps: int = 20
    seq_len: int = 256
    batch_size: int = 4
    lr: float = 3e-3
    warmup_steps: int = 5
    answer_only_loss: bool = False
    seed: int = 0


@dg.asset(
    partitions_def=recipes,
    ins={
        "packed_corpus": dg.AssetIn(
            partition_mapping=by_recipe,
            dagster_type=dg.Nothing,
        )
    },
    group_name="training",
    kinds={"pytorch"},
    code_version="1",
    pool="gpu",
    description="A model pre-trained from scratch on one recipe's packed corpus (all document "
    "shards but the held-out one, FI_HELDOUT_DOC_SHARD), by the standalone trainer in "
    "`training/` launched through Dagster Pipes; the "
    "checkpoint and its Hugging Face export are under FI_HOME/checkpoints/<recipe>/.",
)
def trained_checkpoint(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    storage: Storage,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    recipe = context.partition_key
    files = list(training_files(storage, recipe).values())
    if not files:
        raise FileNotFoundError(
            f"no packed_corpus for recipe {recipe} outside the held-out shard: materialize it"
        )
    out = storage.root / "checkpoints" / recipe
    command = [
        sys.executable,
        "-m",
        "training.train",
        "--data",
        *map(str, files),
        "--out",
        str(out),
        "--tokenizer",
        load_training_tokenizer(get_settings().training_tokenizer).source,
        "--preset",
        config.preset,
        "--steps",
        str(config.steps),
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
        str(config.steps),
        "--answer-only-loss" if config.answer_only_loss else "--no-answer-only-loss",
    ]
    context.log.info(f"training on {len(files)} packed shard(s) of {recipe}")
    result = pipes_subprocess_client.run(
        command=command, context=context, cwd=str(Path(__file__).resolve().parents[1])
    ).get_materialize_result()
    metadata = dict(result.metadata or {})
    history_file = Path(metadata["metrics_history"].value)
    history = [json.loads(line) for line in history_file.read_text().splitlines()]
    metadata["loss_curve"] = line_chart(
        [m["step"] for m in history], [m["loss"] for m in history], "training loss", "step"
    )
    return dg.MaterializeResult(metadata=metadata)
