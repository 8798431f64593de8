"""Peak memory and time of each stage of one document partition, at several partition sizes: does
a stage's memory grow with its partition? For each size, a fresh data root gets that many real
documents in ONE partition (ShareGPT's assistant answers of at least --min-chars characters, as
bench.ingest reads them, drawn with a seed), the demo's WebQuestions sample as its template
library, and the rules engines; then each stage runs alone, in pipeline order, as
`/usr/bin/time -v fi materialize STAGE` (a fresh process; upstream is already up to date, so only
STAGE runs). Printed: the peak RSS of that process and its wall time, per stage and size, and the
ratio of the largest size's peak to the smallest's.

    python -m bench.memory --documents 100 400          # minutes
    python -m bench.memory --documents 5000 20000 50000 --folder runs --save   # hours on CPU

With --folder the data roots are kept there, and each stage's figures are written beside its root
as soon as it finishes: run the same command again after an interruption and it goes on from the
first stage not yet measured (a stage cut short runs again whole).

CPU only (the rules engines and the embedder on the CPU); no device to choose.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

from bench.common import fi_peak_rss, parser, report, table
from bench.ingest import sharegpt_answers
from fi_method.samples import seeded_sample, write_sample

SHARD = "sharegpt"
# Each stage of a document partition, in pipeline order, up to what the judge keeps.
STAGES = ("documents", "document_chunks", "matched_pairs", "instantiated_pairs", "judged_pairs")


def fi(home: Path, *arguments: str) -> tuple[float, int]:
    """(seconds, peak RSS in MB) of `fi ARGUMENTS` on the data root `home`."""
    seconds, peak, _ = fi_peak_rss(home, *arguments)
    return seconds, peak


def measure(folder: Path, answers: list[str], documents: int) -> dict[str, tuple[float, int]]:
    """(seconds, peak RSS MB) of each stage of one partition of `documents` documents. Figures
    already recorded in the folder are read back, not measured again."""
    home = folder / f"home_{documents}"
    recorded = folder / f"figures_{documents}.json"
    if not recorded.exists():
        _prepare(home, folder / f"documents_{documents}.jsonl", answers, documents)
        recorded.write_text("{}")
    figures = {stage: tuple(figure) for stage, figure in json.loads(recorded.read_text()).items()}
    for stage in STAGES:
        if stage in figures:
            continue
        figures[stage] = fi(home, "materialize", stage)
        recorded.write_text(json.dumps(figures))
        print(f"{documents} documents: {stage} {figures[stage]}", file=sys.stderr)
    return figures


def _prepare(home: Path, source: Path, answers: list[str], documents: int) -> None:
    """A fresh data root holding one partition of `documents` answers and the demo's templates,
    its template index built."""
    if home.exists():
        # A preparation cut short: start it again from nothing.
        shutil.rmtree(home)
    home.mkdir(parents=True)
    chosen = seeded_sample(answers, documents)
    source.write_text("".join(json.dumps({"text": text}) + "\n" for text in chosen))
    queries = write_sample(home / "samples").webquestions
    # One partition, whatever its size: FI_SHARD_DOCUMENTS is what bounds partitions otherwise.
    (home / "fi.toml").write_text(f"shard_documents = {documents}\n")
    fi(home, "ingest", "queries", str(queries))
    fi(home, "ingest", "documents", str(source), "--shard", SHARD)
    fi(home, "materialize", "template_index")


def main() -> None:
    arguments = parser(__doc__.split("\n\n")[0])
    arguments.add_argument("--documents", type=int, nargs="+", default=[100, 400])
    arguments.add_argument("--min-chars", type=int, default=800, help="shortest answer kept")
    arguments.add_argument(
        "--folder", type=Path, help="keep the data roots here, and resume a run cut short"
    )
    args = arguments.parse_args()
    answers = sharegpt_answers(args.min_chars)
    sizes = sorted(args.documents)
    if sizes[-1] > len(answers):
        raise SystemExit(f"at most {len(answers):,} documents ship (ShareGPT answers)")
    kept = nullcontext(args.folder.resolve()) if args.folder else tempfile.TemporaryDirectory()
    with kept as folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        results = {size: measure(Path(folder), answers, size) for size in sizes}
    rows = []
    for stage in STAGES:
        peaks = [results[size][stage][1] for size in sizes]
        rows.append(
            [
                stage,
                *(
                    f"{results[size][stage][1]:,} MB, {results[size][stage][0]:.0f} s"
                    for size in sizes
                ),
                f"{peaks[-1] / peaks[0]:.2f}",
            ]
        )
    columns = ["stage", *(f"{size:,} documents" for size in sizes), "peak ratio, largest/smallest"]
    body = (
        f"One document partition of ShareGPT answers (at least {args.min_chars} characters, a "
        "seeded draw), the demo's WebQuestions sample as template library, rules engines. Each "
        "stage alone as `/usr/bin/time -v fi materialize STAGE`: peak RSS of the largest process, "
        "wall time (model loads included).\n\n" + table(columns, rows)
    )
    report("memory", "cpu", "Peak memory per stage and partition size", body, args.save)


if __name__ == "__main__":
    main()
