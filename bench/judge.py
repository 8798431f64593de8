"""How well the rules judge tells real (instruction, answer) pairs from nonsense: the labelled
calibration set of fi_method.synthesis.judge_calibration (real AlpacaEval and MT-Bench-101 pairs
against swapped answers, truncated answers, repeated sentences and entity-swapped instructions,
each pair's answer as its document), scored by the judge before (the rules judge as of --before,
read from git) and now. Prints ROC AUC, the share of positives kept (score >= MIN_JUDGE_SCORE) and
of each kind of negative, on the tuning half the thresholds were set on and on the held-out half,
then examples of pairs the judge rejects and keeps.

    python -m bench.judge                 # 500 pairs of each kind, seed 0
    python -m bench.judge --per-kind 300 --seed 1 --save

CPU only, pure Python: no device to choose.
"""

from __future__ import annotations

import inspect
import subprocess
import tempfile
import time
import types
from pathlib import Path

from bench.common import load_module, parser, report, table
from fi_method.synthesis import judge
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

REPOSITORY = Path(__file__).resolve().parent.parent
# The last commits with the first rules judge (rules-1), which scored by coverage, grounding and
# length alone, and with rules-2, which did not read the pair's template.
BEFORE = ("767bca8", "816d1d2")
EXAMPLE_CHARS = 150


def judge_at(revision: str) -> types.ModuleType:
    """fi_method/judge.py (now fi_method/synthesis/judge.py) as it was at a git revision,
    imported as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{revision}:fi_method/judge.py"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    name = f"judge_at_{revision}"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{name}.py"
        path.write_text(source, encoding="utf-8")
        return load_module(str(path), name)


def judgement(rules_judge, pair):
    """A rules judge's judgement of a labelled pair, with its template where the judge reads one."""
    if "template" in inspect.signature(rules_judge).parameters:
        return rules_judge(pair.instruction, pair.answer, pair.document, pair.template)
    return rules_judge(pair.instruction, pair.answer, pair.document)


def figures(name: str, rules_judge, halves: dict[str, list]) -> tuple[list[list], dict]:
    """One table row per half: AUC, kept shares, pairs judged per second; and the held-out
    scores."""
    rows, scores = [], {}
    for half, pairs in halves.items():
        started = time.perf_counter()
        scored = [judgement(rules_judge, p).score for p in pairs]
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


def _short(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= EXAMPLE_CHARS else flat[: EXAMPLE_CHARS - 3] + "..."


def examples(pairs: list, scores: list[int], kept: bool) -> list[str]:
    """The first held-out pair of each kind that the judge keeps (or rejects), as Markdown."""
    lines = []
    for kind in KINDS:
        for pair, score in zip(pairs, scores, strict=True):
            if pair.kind == kind and (score >= judge.MIN_JUDGE_SCORE) == kept:
                feedback = judgement(judge.rules_judge, pair)
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
    rows_now, scores = figures("now, reading each pair's template", judge.rules_judge, halves)
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
        table(columns, rows_before + rows_now)
        + f"\n\nNo GPU (pure Python). {args.per_kind} pairs of each kind, seed {args.seed}, split "
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
