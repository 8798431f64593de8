"""How well the rules judge tells real (instruction, answer) pairs from nonsense, on two labelled
sets. First SQuAD 2.0's (fi_method.synthesis.squad: a question with its own paragraph, with another
paragraph of the same article, and an unanswerable question with its paragraph; tuning split =
train articles, held out = dev articles): per kind and split, the share kept before (the rules
judge as of SQUAD_BEFORE: rules-2, and rules-6) and now, and ROC AUC. Then the calibration set of fi_method.synthesis.judge_calibration (real AlpacaEval and MT-Bench-101 pairs
against swapped answers, truncated answers, repeated sentences and entity-swapped instructions,
each pair's answer as its document), scored by the judge before (the rules judge as of --before,
read from git) and now. Prints ROC AUC, the share of positives kept (score >= MIN_JUDGE_SCORE) and
of each kind of negative, on the tuning half the thresholds were set on and on the held-out half,
then examples of pairs the judge rejects and keeps.

    python -m bench.judge                 # 500 pairs of each kind, seed 0
    python -m bench.judge --per-kind 300 --seed 1 --save

CPU only (Python and spaCy's small English model): no device to choose.
"""

from __future__ import annotations

import inspect
import re
import time
import types

from bench.common import load_source, parser, report, source_at, table
from fi_method.synthesis import judge, rules_judge, squad
from fi_method.synthesis.judge_calibration import (
    DEFAULT_SEED,
    KINDS,
    NEGATIVE_KINDS,
    PAIRS_PER_KIND,
    POSITIVE,
    calibration_set,
    kept_shares,
    roc_auc,
    split,
)

# The last commits with the first rules judge (rules-1), which scored by coverage, grounding and
# length alone, and with rules-2, which did not read the pair's template; and the commit before the
# focus (rules-2 reading templates when given); 03799a3 and the last commit of rules-6 (the focus
# before names apart and opposites) are the "before" of the SQuAD figures.
BEFORE = ("767bca8", "816d1d2", "03799a3")
SQUAD_BEFORE = ("03799a3", "0f3c126")
# Where the judge's module lived: it moved to the synthesis stage's folder.
JUDGE_PATHS = ("fi_method/synthesis/judge.py", "fi_method/judge.py")
# Where the rules judge has lived since it left the judge's module.
RULES_JUDGE_PATH = "fi_method/synthesis/rules_judge.py"
EXAMPLE_CHARS = 150


def judge_at(revision: str) -> types.ModuleType:
    """The rules judge as it was at a git revision, imported as a module of its own: its own
    module (RULES_JUDGE_PATH) where it had one, with the version its judge module declared; before
    that, the judge's module (fi_method/synthesis/judge.py, before that fi_method/judge.py)."""
    for path in JUDGE_PATHS:
        judge_source = source_at(revision, path)
        if judge_source is not None:
            break
    else:
        raise SystemExit(
            f"git revision {revision} has no judge module at {' or '.join(JUDGE_PATHS)}"
        )
    rules_source = source_at(revision, RULES_JUDGE_PATH)
    if rules_source is not None:
        version = re.search(r'^RULES_VERSION = "([^"]+)"', judge_source, re.MULTILINE).group(1)
        source = f"{rules_source}\nRULES_VERSION = {version!r}\n"
    else:
        # Only the rules judge is read: the role declared at the end of an old module was
        # written against the roles API of its day.
        source = judge_source.split("\nROLE = ", 1)[0]
    return load_source(source, f"judge_at_{revision}")


def judgement(judge_pair, pair):
    """A rules judge's judgement of a labelled pair, with its template where the judge reads one."""
    if "template" in inspect.signature(judge_pair).parameters:
        return judge_pair(pair.instruction, pair.answer, pair.document, pair.template)
    return judge_pair(pair.instruction, pair.answer, pair.document)


def figures(name: str, judge_pair, halves: dict[str, list]) -> tuple[list[list], dict]:
    """One table row per half: AUC, kept shares, pairs judged per second; and the held-out
    scores."""
    rows, scores = [], {}
    for half, pairs in halves.items():
        started = time.perf_counter()
        scored = [judgement(judge_pair, p).score for p in pairs]
        seconds = time.perf_counter() - started
        kept = kept_shares(pairs, scored, judge.MIN_JUDGE_SCORE)
        rows.append(
            [
                name,
                half,
                len(pairs),
                f"{roc_auc(scored, [p.positive for p in pairs]):.3f}",
                f"{kept[POSITIVE]:.1%}",
                f"{kept['negatives']:.1%}",
                *(f"{kept[kind]:.1%}" for kind in NEGATIVE_KINDS),
                len(pairs) / seconds,
            ]
        )
        scores[half] = scored
    return rows, scores


def squad_figures(name: str, judge_pair, pairs: list) -> list[list]:
    """One table row per split of the SQuAD set: ROC AUC (positives against both kinds of
    negative), the share of each kind kept, pairs judged per second."""
    rows = []
    for split_name in squad.SPLITS:
        chosen = [p for p in pairs if p.split == split_name]
        started = time.perf_counter()
        scored = [judgement(judge_pair, p).score for p in chosen]
        seconds = time.perf_counter() - started
        kept = {
            kind: [s >= judge.MIN_JUDGE_SCORE for s, p in zip(scored, chosen) if p.kind == kind]
            for kind in squad.KINDS
        }
        rows.append(
            [
                name,
                split_name,
                len(chosen),
                f"{roc_auc(scored, [p.positive for p in chosen]):.3f}",
                *(f"{sum(kept[kind]) / len(kept[kind]):.1%}" for kind in squad.KINDS),
                len(chosen) / seconds,
            ]
        )
    return rows


def squad_section() -> str:
    """The SQuAD figures before and now, with the split sizes, as Markdown."""
    pairs = squad.load_pairs()
    rows = []
    for revision in SQUAD_BEFORE:
        before = judge_at(revision)
        rows += squad_figures(f"{revision} ({before.RULES_VERSION})", before.rules_judge, pairs)
    rows += squad_figures(f"now ({judge.RULES_VERSION})", rules_judge.rules_judge, pairs)
    sizes = "; ".join(
        f"{split_name}: "
        + ", ".join(
            f"{sum(p.split == split_name and p.kind == kind for p in pairs)} {kind}"
            for kind in squad.KINDS
        )
        + f" from {len({p.article for p in pairs if p.split == split_name})} articles"
        for split_name in squad.SPLITS
    )
    columns = ["judge", "split", "pairs", "ROC AUC", *(f"{k} kept" for k in squad.KINDS), "pairs/s"]
    return (
        "### SQuAD 2.0: a question with its paragraph, another paragraph, or unanswerable\n\n"
        + table(columns, rows)
        + f"\n\n{sizes}. Tuning = SQuAD 2.0 train articles (the focus thresholds were set there), "
        "held out = dev articles. Goals on the held-out split: positives kept >= 80 %, "
        "other_paragraph <= 5 %, unanswerable <= 40 %.\n\n"
    )


def _short(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= EXAMPLE_CHARS else flat[: EXAMPLE_CHARS - 3] + "..."


def examples(pairs: list, scores: list[int], kept: bool) -> list[str]:
    """The first held-out pair of each kind that the judge keeps (or rejects), as Markdown."""
    lines = []
    for kind in KINDS:
        for pair, score in zip(pairs, scores, strict=True):
            if pair.kind == kind and (score >= judge.MIN_JUDGE_SCORE) == kept:
                feedback = judgement(rules_judge.rules_judge, pair)
                lines.append(
                    f"- **{kind}**, score {score}: instruction `{_short(pair.instruction)}`; "
                    f"answer `{_short(pair.answer)}`; feedback: {_short(feedback.feedback)}"
                )
                break
    return lines


def main() -> None:
    arguments = parser(__doc__.split("\n\n")[0])
    arguments.add_argument("--per-kind", type=int, default=PAIRS_PER_KIND)
    arguments.add_argument("--seed", type=int, default=DEFAULT_SEED)
    arguments.add_argument(
        "--before", nargs="*", default=BEFORE, help="git revisions of the judges to compare"
    )
    args = arguments.parse_args()
    pairs = calibration_set(args.seed, args.per_kind)
    tuning, heldout = split(pairs, args.seed)
    halves = {"tuning": tuning, "held-out": heldout}
    rows_before = []
    for revision in args.before:
        before = judge_at(revision)
        rows_before += figures(f"{revision} ({before.RULES_VERSION})", before.rules_judge, halves)[
            0
        ]
    rows_now, scores = figures("now, reading each pair's template", rules_judge.rules_judge, halves)
    columns = [
        "judge",
        "half",
        "pairs",
        "ROC AUC",
        "positives kept",
        "negatives kept",
        *(f"{kind} kept" for kind in NEGATIVE_KINDS),
        "pairs/s",
    ]
    body = (
        squad_section()
        + "### Calibration set: AlpacaEval and MT-Bench-101 pairs and made-up negatives\n\n"
        + table(columns, rows_before + rows_now)
        + f"\n\nNo GPU (CPU only). {args.per_kind} pairs of each kind, seed {args.seed}, split "
        "by source item into halves; the thresholds were set on the tuning half. Kept: score >= "
        f"{judge.MIN_JUDGE_SCORE}. Each pair's document is its answer, so grounding always holds "
        "and the judge must tell good from bad by instruction and answer alone.\n\n"
        "Held-out pairs the judge now rejects (the first of each kind):\n\n"
        + "\n".join(examples(heldout, scores["held-out"], kept=False))
        + "\n\nHeld-out pairs it keeps:\n\n"
        + "\n".join(examples(heldout, scores["held-out"], kept=True))
    )
    report("judge", "cpu", "The rules judge on labelled real pairs", body, args.save)


if __name__ == "__main__":
    main()
