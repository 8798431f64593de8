"""How far the rules judge's measures can go on SQuAD 2.0, whatever thresholds combine them: each
labelled pair of fi_method.synthesis.squad becomes the rules judge's measures (coverage, missing
specifics, the focus and its relation coverage, names apart, numbers unstated, negation,
opposites, what the question asks for left ungiven, the names in the focus) plus MiniLM's cosine
similarity of the question to its best sentence or two and to the whole passage. A logistic
regression and gradient-boosted trees learn "positive" from them, and each is scored at the best
threshold the goals allow on the data it is evaluated on (at most 40 % of unanswerable questions
and 5 % of other paragraphs kept): an upper bound, since the threshold is chosen knowing the
labels. Two fits: on the tuning split, evaluated on the held-out one; and on half of the held-out
articles, evaluated on the other half (no shift between splits). The rules judge's own keep
rates are printed beside them.

With --cross-encoder, a model that reads the question and the passage together: the shipped
MiniLM fine-tuned as a sentence-transformers cross-encoder (one epoch, binary cross-entropy,
"positive" against both negatives) on each fit's training pairs, its score read at the goal's
threshold like the others. It learns from whatever unanswerable questions the training split
holds: 300 in the tuning split (the public SQuAD 2.0 train copy here holds 10 articles), ~1,250 in
half of the held-out articles.

    python -m bench.judge_ceiling           # ~5 min on 2 CPU cores (MiniLM on ~20k texts)
    python -m bench.judge_ceiling --cross-encoder --save    # ~45 min more: two fine-tunings

CPU only. scikit-learn is sentence-transformers' own dependency.
"""

from __future__ import annotations

import tempfile

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from bench.common import parser, report, table
from fi_method.synthesis import rules_judge as rj
from fi_method.synthesis import squad
from fi_method.synthesis.judge import MIN_JUDGE_SCORE, RULES_VERSION
from fi_method.synthesis.judge_calibration import roc_auc
from fi_method.text import sentence_spans
from fi_resources.embedder import Embedder
from fi_resources.models import MINILM, sentence_transformer_source

MEASURES = (
    "coverage",
    "missing_specific_share",
    "missing_named_share",
    "focus_coverage",
    "relation_coverage",
    "names_apart",
    "numbers_unstated",
    "negation_unmatched",
    "opposite_word",
    "asked_kind_not_given",
    "names_in_focus",
)
SIMILARITIES = ("best_window_similarity", "passage_similarity")
# The goals for the negatives: the threshold is the lowest that keeps no more of them.
MAX_UNANSWERABLE_KEPT = 0.40
MAX_OTHER_PARAGRAPH_KEPT = 0.05
CROSS_ENCODER_MAX_TOKENS = 256
CROSS_ENCODER_BATCH = 16
CROSS_ENCODER_LEARNING_RATE = 4e-5
# Unanswerable questions are a tenth of the tuning split and a third of the held-out one: each
# weighs this much in the fits so that both splits balance the kinds alike.
UNANSWERABLE_WEIGHT = 5.0


def measures(pair: squad.SquadPair) -> list[float]:
    """The rules judge's measures of one pair, as numbers (flags as 0 or 1)."""
    question, passage = pair.question, pair.paragraph
    terms, present = rj._query_terms(question), rj._answer_keys(passage)
    _missing, missing_share, missing_named = rj._missing_specifics(terms, present)
    found = rj._focus(question, terms, passage, present)
    names = [t for t in terms if t.named and t.found_in(present)]
    focus_keys = rj._answer_keys(found.text)
    in_focus = sum(t.found_in(focus_keys) for t in names) / len(names) if names else 1.0
    return [
        rj._coverage(terms, present),
        missing_share,
        missing_named,
        found.covered,
        found.relation_covered,
        float(bool(found.apart)),
        float(bool(rj._unstated_numbers(question, passage))),
        float(rj._negated(question) and not rj._negated(found.text)),
        float(rj._opposed(question, found.text) is not None),
        float(bool(found.unanswered)),
        in_focus,
    ]


def windows(passage: str) -> list[str]:
    """Every sentence of the passage and every two consecutive ones (the focus's windows)."""
    spans = sentence_spans(passage) or [(0, len(passage))]
    ones = [passage[a:b] for a, b in spans]
    twos = [passage[spans[i][0] : spans[i + 1][1]] for i in range(len(spans) - 1)]
    return ones + twos


def similarities(pairs: list[squad.SquadPair], embedder: Embedder) -> np.ndarray:
    """Per pair: MiniLM's cosine similarity of the question to its passage's best window, and
    to the whole passage. Each distinct text is embedded once."""
    texts = sorted(
        {p.question for p in pairs}
        | {p.paragraph for p in pairs}
        | {w for p in {p.paragraph for p in pairs} for w in windows(p)}
    )
    vectors = embedder.embed(texts)
    row = {text: i for i, text in enumerate(texts)}
    out = []
    for pair in pairs:
        question = vectors[row[pair.question]]
        best = max(float(vectors[row[w]] @ question) for w in windows(pair.paragraph))
        out.append([best, float(vectors[row[pair.paragraph]] @ question)])
    return np.array(out)


def cross_encoder_scores(
    train: list[squad.SquadPair], test: list[squad.SquadPair], seed: int = 0
) -> np.ndarray:
    """The test pairs' scores from MiniLM fine-tuned as a cross-encoder on the training pairs."""
    from datasets import Dataset
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    model = CrossEncoder(
        sentence_transformer_source(MINILM), num_labels=1, max_length=CROSS_ENCODER_MAX_TOKENS
    )
    data = Dataset.from_dict(
        {
            "question": [p.question for p in train],
            "passage": [p.paragraph for p in train],
            "label": [float(p.kind == squad.POSITIVE) for p in train],
        }
    ).shuffle(seed=seed)
    with tempfile.TemporaryDirectory() as scratch:
        arguments = CrossEncoderTrainingArguments(
            output_dir=scratch,
            num_train_epochs=1,
            per_device_train_batch_size=CROSS_ENCODER_BATCH,
            learning_rate=CROSS_ENCODER_LEARNING_RATE,
            warmup_steps=0.1,
            save_strategy="no",
            report_to="none",
            seed=seed,
            use_cpu=True,
            disable_tqdm=True,
        )
        CrossEncoderTrainer(
            model=model, args=arguments, train_dataset=data, loss=BinaryCrossEntropyLoss(model)
        ).train()
    return model.predict(
        [(p.question, p.paragraph) for p in test], batch_size=64, show_progress_bar=False
    )


def kept_at_goal(scores: np.ndarray, kinds: np.ndarray) -> tuple[float, float, float]:
    """Positives, other paragraphs and unanswerable questions kept at the lowest threshold that
    keeps at most the goals' shares of the negatives."""
    for threshold in np.unique(scores):
        kept = scores >= threshold
        unanswerable = kept[kinds == squad.UNANSWERABLE].mean()
        other = kept[kinds == squad.OTHER_PARAGRAPH].mean()
        if unanswerable <= MAX_UNANSWERABLE_KEPT and other <= MAX_OTHER_PARAGRAPH_KEPT:
            return kept[kinds == squad.POSITIVE].mean(), other, unanswerable
    return 0.0, 0.0, 0.0


def shares(kept: np.ndarray, kinds: np.ndarray) -> tuple[float, float, float]:
    return tuple(kept[kinds == kind].mean() for kind in squad.KINDS)


def main() -> None:
    arguments = parser(__doc__.split("\n\n")[0])
    arguments.add_argument(
        "--cross-encoder", action="store_true", help="also fine-tune and score a cross-encoder"
    )
    args = arguments.parse_args()
    pairs = squad.load_pairs()
    kinds = np.array([p.kind for p in pairs])
    split = np.array([p.split for p in pairs])
    features = np.hstack([np.array([measures(p) for p in pairs]), similarities(pairs, Embedder())])
    judged = np.array(
        [
            rj.rules_judge(p.question, p.paragraph, p.paragraph).score >= MIN_JUDGE_SCORE
            for p in pairs
        ]
    )
    positive = kinds == squad.POSITIVE
    weight = np.where(kinds == squad.UNANSWERABLE, UNANSWERABLE_WEIGHT, 1.0)
    held_out = split == squad.HELD_OUT
    articles = sorted({p.article for p in pairs if p.split == squad.HELD_OUT})
    first_half = np.isin([p.article for p in pairs], articles[::2]) & held_out
    second_half = held_out & ~first_half
    rows = [
        [f"rules judge ({RULES_VERSION})", "its measures", evaluated_on, "-", "-"]
        + [f"{share:.1%}" for share in shares(judged[subset], kinds[subset])]
        for evaluated_on, subset in (("held-out", held_out), ("second half", second_half))
    ]
    models = {
        "logistic regression": lambda: LogisticRegression(max_iter=2_000),
        "gradient-boosted trees": lambda: HistGradientBoostingClassifier(max_depth=3),
    }
    columns = {"measures only": slice(0, len(MEASURES)), "measures + MiniLM": slice(None)}
    fits = {
        ("tuning", "held-out"): (split == squad.TUNING, held_out),
        ("first half", "second half"): (first_half, second_half),
    }
    for (fitted_on, evaluated_on), (train, test) in fits.items():
        for used, selected in columns.items():
            for name, make in models.items():
                model = make().fit(features[train][:, selected], positive[train], weight[train])
                scores = model.predict_proba(features[test][:, selected])[:, 1]
                kept = kept_at_goal(scores, kinds[test])
                rows.append(
                    [name, used, evaluated_on, fitted_on, f"{roc_auc(scores, positive[test]):.3f}"]
                    + [f"{share:.1%}" for share in kept]
                )
        if args.cross_encoder:
            train_pairs = [p for p, chosen in zip(pairs, train, strict=True) if chosen]
            test_pairs = [p for p, chosen in zip(pairs, test, strict=True) if chosen]
            scores = cross_encoder_scores(train_pairs, test_pairs)
            rows.append(
                ["MiniLM cross-encoder", "question and passage", evaluated_on, fitted_on]
                + [f"{roc_auc(scores, positive[test]):.3f}"]
                + [f"{share:.1%}" for share in kept_at_goal(scores, kinds[test])]
            )
    body = (
        f"{len(pairs):,} SQuAD 2.0 pairs ({', '.join(squad.KINDS)}); positives kept at the best "
        f"threshold that keeps at most {MAX_UNANSWERABLE_KEPT:.0%} of unanswerable questions and "
        f"{MAX_OTHER_PARAGRAPH_KEPT:.0%} of other paragraphs (the rules judge: as it scores).\n\n"
        + table(
            ["judge", "inputs", "evaluated on", "fitted on", "ROC AUC", "positive"]
            + [kind for kind in squad.KINDS if kind != squad.POSITIVE],
            rows,
        )
        + "\n\nHalves of the held-out split are its articles by name, alternately: "
        + ", ".join(articles[::2])
        + " in the first."
    )
    report("judge_ceiling", "cpu", "How far the rules judge's measures can go", body, args.save)


if __name__ == "__main__":
    main()
