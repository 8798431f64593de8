"""The control of the comparison (METHOD.md, stage F): every recipe trains on the same number of
tokens, made from the same documents.

Packing (stage E) fills each document's own token budget as far as the recipe's samples allow: a
strict judge leaves `fineinstructions` well short of the documents' tokens, and that is data, not a
fault. Parity is therefore enforced where the models train, not where the data is packed:

1. Each recipe's packed tokens are summed over the training shards (every document shard but the
   held-out one).
2. The training budget is the smallest of those totals (at most FI_MAX_TRAINING_TOKENS, for a
   quick run), or FI_TRAINING_TOKENS when set.
3. Every recipe trains `budget // step_tokens` whole optimizer steps, the same for all. A recipe
   with more packed tokens trains on a seeded subset of its samples (the start of the trainer's
   seeded shuffle, for one pass at most); nothing is repeated to reach the budget.
4. A recipe whose packed total is below the budget could only reach it by repeating data: that,
   a recipe that packed nothing, or recipes packed from different shards fail the blocking check
   `recipes_fill_training_budget`, and no model trains.

The trainer wraps each sample in BOS and EOS, so a recipe's samples always hold more tokens than
its packed total, which covers the steps with room to spare.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fi_method.corpus.packing import RECIPES, STANDARD


@dataclass(frozen=True)
class ShardTokens:
    """What one recipe packed from one training shard."""

    shard: str
    recipe: str
    packed_tokens: int
    samples: int


@dataclass(frozen=True)
class TrainingBudget:
    """The tokens every recipe trains on, what each recipe packed, and why the budget cannot be
    met (empty when it can)."""

    tokens: int
    # "FI_TRAINING_TOKENS", or the recipe whose packed total set it
    source: str
    packed_tokens: dict[str, int]
    samples: dict[str, int]
    # The training documents' own tokens: what `standard` packs (it packs each document whole).
    document_tokens: int | None
    failures: list[str]

    def trained_share(self, recipe: str) -> float | None:
        """The share of the recipe's packed tokens the budget trains on; None when it packed
        fewer than the budget (it cannot train on it)."""
        packed = self.packed_tokens.get(recipe, 0)
        return self.tokens / packed if packed >= self.tokens and packed else None


def plan_budget(
    counts: Iterable[ShardTokens],
    override: int | None,
    recipes: tuple[str, ...] = RECIPES,
    cap: int | None = None,
) -> TrainingBudget:
    """The training budget of `recipes` from what each packed on its training shards (`counts`):
    `override` when set (FI_TRAINING_TOKENS; 0 or None: the smallest recipe's total, at most
    `cap`, FI_MAX_TRAINING_TOKENS)."""
    counts = list(counts)
    packed = {recipe: 0 for recipe in recipes}
    samples = {recipe: 0 for recipe in recipes}
    shards: dict[str, set[str]] = {recipe: set() for recipe in recipes}
    for count in counts:
        if count.recipe in packed:
            packed[count.recipe] += count.packed_tokens
            samples[count.recipe] += count.samples
            shards[count.recipe].add(count.shard)
    smallest = min(recipes, key=lambda recipe: (packed[recipe], recipe))
    if override:
        tokens, source = override, "FI_TRAINING_TOKENS"
    elif cap and cap < packed[smallest]:
        tokens, source = cap, "FI_MAX_TRAINING_TOKENS"
    else:
        tokens, source = packed[smallest], smallest
    failures = _shard_failures(shards)
    remedy = (
        f"Set FI_TRAINING_TOKENS to at most {packed[smallest]:,} (the smallest recipe's total, "
        f"{smallest}) or unset it, or ingest more documents"
        if packed[smallest]
        else "Lower FI_TRAINING_TOKENS or unset it, or ingest more documents"
    )
    for recipe in recipes:
        if not shards[recipe]:
            continue  # already said: nothing packed outside the held-out shard
        if packed[recipe] == 0:
            failures.append(
                f"{recipe} packed no tokens on its training shards: nothing to train on (did the "
                f"judge keep no pair?); its shards' packed_corpus metadata says why"
            )
        elif packed[recipe] < tokens:
            failures.append(
                f"{recipe} packed {packed[recipe]:,} tokens on its training shards, fewer than the "
                f"training budget of {tokens:,} ({source}): it would have to repeat data to reach "
                f"it. {remedy}"
            )
    return TrainingBudget(
        tokens=tokens,
        source=source,
        packed_tokens=packed,
        samples=samples,
        document_tokens=packed[STANDARD] if STANDARD in recipes and shards[STANDARD] else None,
        failures=failures,
    )


def _shard_failures(shards: Mapping[str, set[str]]) -> list[str]:
    """Recipes not packed on every training shard another recipe was packed on: their models
    would learn from other documents."""
    every = set().union(*shards.values())
    failures = []
    for recipe, own in shards.items():
        if not own:
            failures.append(
                f"{recipe} has no packed_corpus outside the held-out shard: materialize it"
            )
        elif missing := sorted(every - own):
            failures.append(
                f"{recipe} is not packed on shard(s) {', '.join(missing)}, which other recipes "
                f"train on: materialize packed_corpus for them (every recipe trains on the same "
                f"documents)"
            )
    return failures


def training_steps(budget_tokens: int, step_tokens: int) -> int:
    """Whole optimizer steps of `step_tokens` within the budget (0 when one step exceeds it)."""
    return budget_tokens // step_tokens


def tokens_by_recipe_markdown(budget: TrainingBudget) -> str:
    """Per recipe: packed tokens, their ratio to the documents' tokens, samples, and the share of
    them the budget trains on (`short` where they cannot fill it)."""
    lines = [
        "| recipe | packed tokens | / documents' tokens | samples | trains on |",
        "|---|---|---|---|---|",
    ]
    for recipe, packed in budget.packed_tokens.items():
        share = budget.trained_share(recipe)
        lines.append(
            f"| {recipe} | {packed:,} | {_ratio(packed, budget.document_tokens)} | "
            f"{budget.samples[recipe]:,} | {'short' if share is None else f'{share:.1%}'} |"
        )
    lines.append(f"\nTraining budget: {budget.tokens:,} tokens per recipe ({budget.source}).")
    return "\n".join(lines)


def tokens_by_shard_markdown(counts: Iterable[ShardTokens], recipes=RECIPES) -> str:
    """Per shard: the documents' tokens (what `standard` packs) and each other recipe's packed
    tokens with their ratio to them. A short shard is shown, not failed: only the totals decide."""
    by_shard: dict[str, dict[str, int]] = {}
    for count in counts:
        by_shard.setdefault(count.shard, {})[count.recipe] = count.packed_tokens
    others = [recipe for recipe in recipes if recipe != STANDARD]
    lines = [
        "| shard | documents' tokens | " + " | ".join(others) + " |",
        "|---|---|" + "---|" * len(others),
    ]
    for shard, packed in sorted(by_shard.items()):
        documents = packed.get(STANDARD)
        cells = [
            "-"
            if recipe not in packed
            else f"{packed[recipe]:,} ({_ratio(packed[recipe], documents)})"
            for recipe in others
        ]
        lines.append(
            f"| {shard} | {'-' if documents is None else f'{documents:,}'} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def _ratio(tokens: int, document_tokens: int | None) -> str:
    return f"{tokens / document_tokens:.1%}" if document_tokens else "-"
