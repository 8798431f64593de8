"""A labelled set of real reading-comprehension pairs to calibrate the judge on, derived from
SQuAD 2.0 (Rajpurkar, Jia and Liang 2018; CC BY-SA 4.0) and shipped in `fi_method/data/squad/`.

Each pair is a question and a Wikipedia paragraph, with the paragraph as both the answer and the
document: the shape of a pipeline pair, a question answered by a verbatim passage. Three kinds:

- positive: an answerable question with its own paragraph;
- other_paragraph: the same question with another paragraph of the same article (drawn, seeded)
  that contains none of its gold answers: it mentions the same things and answers nothing;
- unanswerable: a question SQuAD 2.0's crowd workers wrote to look answerable from its paragraph
  (`is_impossible`), with that paragraph.

The split is by article: the tuning articles come from SQuAD 2.0's train set, the held-out ones
from its dev set, so the judge's thresholds never saw a held-out article.

`build_pairs` derives the pairs from a SQuAD train file and one or more dev files (public copies
hold parts of the dev set; an article in several is taken from the first); `python -m
fi_method.synthesis.squad TRAIN_JSON DEV_JSON [DEV_JSON ...]` rewrites the shipped file from
them."""

from __future__ import annotations

import argparse
import gzip
import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

SQUAD_DIR = Path(__file__).resolve().parent.parent / "data" / "squad"
PAIRS_FILE = SQUAD_DIR / "pairs.jsonl.gz"
SQUAD_VERSION = "v2.0"

POSITIVE, OTHER_PARAGRAPH, UNANSWERABLE = "positive", "other_paragraph", "unanswerable"
KINDS = (POSITIVE, OTHER_PARAGRAPH, UNANSWERABLE)
TUNING, HELD_OUT = "tuning", "held-out"
SPLITS = (TUNING, HELD_OUT)
DEFAULT_SEED = 0
# Every question of every article would make the shipped file several megabytes, so an article
# gives at most this many answerable questions and as many unanswerable ones (seeded): a few
# large articles do not outweigh the rest.
MAX_QUESTIONS_PER_ARTICLE = 150

_FIELDS = ("article", "split", "kind", "question_id", "question", "paragraph")


class SquadDataError(ValueError):
    """A SQuAD file or a shipped pairs file that cannot be read: the message names the file, the
    row and the reason."""


@dataclass(frozen=True)
class SquadPair:
    """One labelled pair: a question and a paragraph, its kind and the split of its article."""

    article: str
    split: str
    kind: str
    question_id: str
    question: str
    paragraph: str

    @property
    def positive(self) -> bool:
        """Whether the paragraph answers the question."""
        return self.kind == POSITIVE

    # The judge's inputs: the question is the instruction, the paragraph its answer and document.
    @property
    def instruction(self) -> str:
        return self.question

    @property
    def answer(self) -> str:
        return self.paragraph

    @property
    def document(self) -> str:
        return self.paragraph

    @property
    def template(self) -> None:
        """No template: SQuAD's questions were written, not filled from one."""
        return None


@dataclass(frozen=True)
class Reject:
    """A question of a SQuAD file left out, and why."""

    file: str
    question_id: str
    reason: str


def _questions(path: Path) -> tuple[list[tuple[str, list[str], list[dict]]], list]:
    """Per article: (title, paragraphs, questions as dicts with their paragraph's index), and the
    questions left out (no text, no id, a gold answer not where its offset says)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise SquadDataError(f"{path}: cannot read SQuAD JSON: {error}") from error
    if not isinstance(data, dict) or data.get("version") != SQUAD_VERSION:
        raise SquadDataError(
            f"{path}: not a SQuAD {SQUAD_VERSION} file (no version {SQUAD_VERSION!r})"
        )
    articles, rejects = [], []
    for a, article in enumerate(data.get("data", [])):
        title = article.get("title")
        if not title or not article.get("paragraphs"):
            raise SquadDataError(f"{path}: article {a} has no title or no paragraphs")
        paragraphs, questions = [], []
        for p, paragraph in enumerate(article["paragraphs"]):
            context = paragraph.get("context", "")
            paragraphs.append(context)
            for qa in paragraph.get("qas", []):
                qid = str(qa.get("id", f"{title}/{p}/?"))
                reason = _invalid(qa, context)
                if reason:
                    rejects.append(Reject(str(path), qid, reason))
                    continue
                questions.append({**qa, "id": qid, "paragraph_index": p})
        articles.append((title, paragraphs, questions))
    return articles, rejects


def _invalid(qa: dict, context: str) -> str | None:
    """Why a question cannot be used, or None."""
    if not str(qa.get("question", "")).strip():
        return "no question text"
    if not qa.get("id"):
        return "no id"
    if qa.get("is_impossible"):
        return None
    if not qa.get("answers"):
        return "answerable but no gold answer"
    for answer in qa["answers"]:
        start, text = answer.get("answer_start", -1), answer.get("text", "")
        if not text or context[start : start + len(text)] != text:
            return f"gold answer {text!r} is not at offset {start} of its paragraph"
    return None


def build_pairs(
    train_json: Path,
    dev_jsons: Sequence[Path],
    seed: int = DEFAULT_SEED,
    max_questions: int | None = MAX_QUESTIONS_PER_ARTICLE,
) -> tuple[list[SquadPair], list[Reject]]:
    """The labelled pairs of the articles in a SQuAD 2.0 train file (the tuning split) and dev
    files (held out; an article in more than one is taken from the first), and the questions left
    out with the reason. Per article, every answerable question (at most `max_questions`, drawn)
    gives a positive and an other_paragraph pair, when some other paragraph contains none of its
    gold answers; every unanswerable question (as many at most) gives an unanswerable pair.
    Seeded: the same files and seed give the same pairs."""
    pairs: list[SquadPair] = []
    rejects: list[Reject] = []
    seen: set[str] = set()
    for path, split in [(train_json, TUNING), *((dev, HELD_OUT) for dev in dev_jsons)]:
        articles, left_out = _questions(path)
        rejects += left_out
        for title, paragraphs, questions in articles:
            if title in seen:
                continue
            seen.add(title)
            answerable = _drawn(
                [q for q in questions if not q.get("is_impossible")], max_questions, seed, title
            )
            for qa in answerable:
                own = qa["paragraph_index"]
                pairs.append(_pair(title, split, POSITIVE, qa, paragraphs[own]))
                golds = [a["text"].lower() for a in qa["answers"]]
                others = [
                    i
                    for i, text in enumerate(paragraphs)
                    if i != own and not any(gold in text.lower() for gold in golds)
                ]
                if others:
                    # Seeded per question, so one question's draw does not depend on the others.
                    other = random.Random(f"{seed}/{qa['id']}").choice(others)
                    pairs.append(_pair(title, split, OTHER_PARAGRAPH, qa, paragraphs[other]))
            unanswerable = _drawn(
                [q for q in questions if q.get("is_impossible")],
                max_questions,
                seed,
                f"{title}/{UNANSWERABLE}",
            )
            for qa in unanswerable:
                paragraph = paragraphs[qa["paragraph_index"]]
                pairs.append(_pair(title, split, UNANSWERABLE, qa, paragraph))
    return pairs, rejects


def _drawn(questions: list[dict], most: int | None, seed: int, name: str) -> list[dict]:
    """At most `most` of the questions, drawn with a seed of their own, in their order."""
    if most is None or len(questions) <= most:
        return questions
    chosen = {q["id"] for q in random.Random(f"{seed}/{name}").sample(questions, most)}
    return [q for q in questions if q["id"] in chosen]


def _pair(title: str, split: str, kind: str, qa: dict, paragraph: str) -> SquadPair:
    return SquadPair(title, split, kind, qa["id"], qa["question"].strip(), paragraph)


def write_pairs(pairs: Sequence[SquadPair], path: Path = PAIRS_FILE) -> None:
    """The pairs as gzipped JSON lines, byte for byte the same for the same pairs."""
    lines = "".join(json.dumps(asdict(p), ensure_ascii=False) + "\n" for p in pairs)
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as out,
    ):
        out.write(lines.encode("utf-8"))


def load_pairs(path: Path = PAIRS_FILE, split: str | None = None) -> list[SquadPair]:
    """The shipped labelled pairs (those of one split when `split` is given). A malformed line
    raises SquadDataError naming the file, the line and the reason."""
    pairs = []
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise SquadDataError(f"{path}:{number}: not JSON: {error}") from error
            missing = [f for f in _FIELDS if not isinstance(row.get(f), str) or not row[f]]
            if missing:
                raise SquadDataError(f"{path}:{number}: missing or empty {', '.join(missing)}")
            if row["kind"] not in KINDS or row["split"] not in SPLITS:
                raise SquadDataError(
                    f"{path}:{number}: kind {row['kind']!r} or split {row['split']!r} unknown"
                )
            if split is None or row["split"] == split:
                pairs.append(SquadPair(**{f: row[f] for f in _FIELDS}))
    return pairs


def main(argv: Sequence[str] | None = None) -> None:
    """Rewrite the shipped pairs from a SQuAD 2.0 train file and one or more dev files."""
    arguments = argparse.ArgumentParser(
        prog="python -m fi_method.synthesis.squad", description=main.__doc__
    )
    arguments.add_argument("train_json", type=Path)
    arguments.add_argument("dev_jsons", type=Path, nargs="+", metavar="dev_json")
    arguments.add_argument("--out", type=Path, default=PAIRS_FILE)
    args = arguments.parse_args(argv)
    pairs, rejects = build_pairs(args.train_json, args.dev_jsons)
    for reject in rejects:
        print(f"left out: {reject.file}: question {reject.question_id}: {reject.reason}")
    write_pairs(pairs, args.out)
    for split in SPLITS:
        counts = {k: sum(p.split == split and p.kind == k for p in pairs) for k in KINDS}
        articles = len({p.article for p in pairs if p.split == split})
        print(f"{split}: {counts} from {articles} articles")
    print(f"wrote {len(pairs)} pairs to {args.out}")


if __name__ == "__main__":
    main()
