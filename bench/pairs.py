"""What the synthesis stage keeps, read from a materialized data root (FI_HOME), for example after
`fi demo --full`: the funnel of the training shards (matched, tried, instantiated, null by reason,
grounded, judged, kept), the score histogram, the largest template and its share, the fidelity
report (each recipe's packed tokens, the training budget), then a seeded random draw of kept pairs
(instruction, template, the start of the answer and the judge's score) for a reader to grade.

    FI_HOME=fi_home python -m bench.pairs                  # 20 kept pairs, seed 0
    FI_HOME=fi_home python -m bench.pairs --sample 40 --seed 1 --save
    FI_HOME=fi_home python -m bench.pairs --answer-chars 0  # whole answers, to grade them

An answer is an excerpt of a few paragraphs, and the sentences that answer often come after its
start: grade a pair on its whole answer.

CPU only (reads tables): no device to choose.
"""

from __future__ import annotations

import argparse

from bench.common import report, table
from fi_assets.evaluation import fidelity_report
from fi_resources.settings import get_settings
from fi_resources.storage import Storage

ANSWER_CHARS = 200
# Judged pairs with their instantiated rows and templates.
KEPT_PAIRS = """from judged_pairs j join instantiated_pairs p using (pair_id)
    join (select distinct template_id, template from instruction_templates) t using (template_id)"""
DEFAULT_SAMPLE = 20


def funnel(connection, heldout: str) -> list[tuple[str, int]]:
    """The synthesis funnel over the training shards (all but `heldout`)."""
    counts = connection.execute(
        """
        select
          (select count(*) from matched_pairs where rank = 0 and shard <> $h),
          (select count(*) from instantiated_pairs where shard <> $h)
            + (select count(*) from rejects where stage = 'instantiated_pairs' and shard <> $h),
          (select count(*) from instantiated_pairs where shard <> $h),
          (select count(*) from judged_pairs where shard <> $h),
          (select count(*) from judged_pairs where kept and shard <> $h)
        """,
        {"h": heldout},
    ).fetchone()
    names = ("matched (rank 0)", "tried (with alternates)", "grounded", "judged", "kept")
    return list(zip(names, counts, strict=True))


def rejects_by_reason(connection, heldout: str) -> list[tuple]:
    """Rejected rows of the synthesis stages by stage and reason, most first."""
    return connection.execute(
        "select stage, reason, count(*) from rejects where shard <> $h "
        "and stage in ('instantiated_pairs', 'judged_pairs') group by all order by 3 desc",
        {"h": heldout},
    ).fetchall()


def largest_template_share(connection, heldout: str) -> tuple[str, int, int]:
    """The template that made the most kept pairs, its count and the kept total."""
    row = connection.execute(
        f"""
        select t.template, count(*) as n, sum(count(*)) over () as total
        {KEPT_PAIRS}
        where j.kept and j.shard <> $h group by t.template order by n desc, t.template limit 1
        """,
        {"h": heldout},
    ).fetchone()
    return row or ("", 0, 0)


def kept_sample(connection, heldout: str, size: int, seed: int) -> list[tuple]:
    """A seeded random draw of kept pairs: instruction, template, answer, score, feedback."""
    return connection.execute(
        f"""
        select p.instruction, t.template, p.answer, j.score, j.feedback
        {KEPT_PAIRS}
        where j.kept and j.shard <> $h
        order by hash(j.pair_id || '{seed}'), j.pair_id limit $n
        """,
        {"h": heldout, "n": size},
    ).fetchall()


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arguments.add_argument("--sample", type=int, default=DEFAULT_SAMPLE, help="kept pairs to show")
    arguments.add_argument("--seed", type=int, default=0)
    arguments.add_argument(
        "--answer-chars",
        type=int,
        default=ANSWER_CHARS,
        help=f"characters of each answer to show (default {ANSWER_CHARS}; 0: all of it)",
    )
    arguments.add_argument("--save", action="store_true", help="also write to bench/results/")
    args = arguments.parse_args()
    settings = get_settings()
    storage = Storage.from_settings(settings)
    connection = storage.connect()
    heldout = settings.heldout_doc_shard

    steps = funnel(connection, heldout)
    scores = connection.execute(
        "select score, count(*) from judged_pairs where shard <> $h group by 1 order by 1",
        {"h": heldout},
    ).fetchall()
    template, uses, kept = largest_template_share(connection, heldout)
    answer_heading = (
        f"answer (first {args.answer_chars} characters)" if args.answer_chars else "answer"
    )
    sections = [
        f"Data root {settings.home}, training shards (all but {heldout}).",
        table(["step", "rows"], steps),
        table(["stage", "reason", "rows"], rejects_by_reason(connection, heldout)),
        table(["judge score", "pairs"], scores),
        f"Largest template share: {uses} of {kept} kept pairs"
        + (f" ({uses / kept:.1%}): {template!r}" if kept else ""),
        # Tokens per recipe and the training budget, as the demo reports them.
        fidelity_report(storage, settings),
        f"{args.sample} kept pairs drawn at random (seed {args.seed}):",
        table(
            ["#", "instruction", "template", answer_heading, "score"],
            [
                (
                    i,
                    instruction,
                    template,
                    " ".join(answer[: args.answer_chars or None].split()).replace("|", "/"),
                    score,
                )
                for i, (instruction, template, answer, score, _) in enumerate(
                    kept_sample(connection, heldout, args.sample, args.seed), 1
                )
            ],
        ),
    ]
    report("pairs", "cpu", "Kept pairs", "\n\n".join(sections), args.save)


if __name__ == "__main__":
    main()
