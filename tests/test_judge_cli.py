"""`fi judge FILE`: real AlpacaEval pairs and mismatched ones judged by the rules judge through
the real CLI and call cache, with the keep rate, the histogram, `--out`, bad rows reported with
their lines while the good rows are judged, and a second run served by the cache."""

import json
import re
from collections import Counter

import pytest
from typer.testing import CliRunner

from fi_assets.cli import app
from fi_assets.cli.judging import FileJudgement, render_summary, score_histogram
from fi_method.evaluation.benchmarks import read_alpaca_eval
from fi_resources.model_calls import CallResult
from fi_resources.settings import get_settings
from fi_resources.storage import Storage

runner = CliRunner()

# AlpacaEval rows whose reference output answers the instruction in one short paragraph.
SMALLEST_DOG, YAMATO, STARSHIP, FACEBOOK = 24, 50, 71, 93
SUPERMAN = 34  # its question, answered with the smallest dog's answer: a mismatched pair
# What the smallest dog's answer does not address: a template asking about a recipe.
SOUP_TEMPLATE = "What is the recipe for <fi>a dish</fi> soup?"


def _pair(row: dict, **extra) -> dict:
    return {"instruction": row["instruction"], "answer": row["output"], **extra}


@pytest.fixture
def alpaca() -> list[dict]:
    return read_alpaca_eval()


@pytest.fixture
def pairs_file(fi_home, tmp_path, alpaca):
    """Four real pairs, the Superman question answered about dogs, and the smallest dog pair
    under a template it does not answer and under a document it is not taken from."""
    rows = [
        _pair(alpaca[SMALLEST_DOG], id="dog"),
        _pair(alpaca[STARSHIP], id="starship"),
        {
            "id": "mismatched",
            "instruction": alpaca[SUPERMAN]["instruction"],
            "answer": alpaca[SMALLEST_DOG]["output"],
        },
        _pair(alpaca[YAMATO], id="yamato"),
        _pair(alpaca[SMALLEST_DOG], id="soup_template", template=SOUP_TEMPLATE),
        _pair(alpaca[FACEBOOK], id="facebook"),
        _pair(alpaca[SMALLEST_DOG], id="other_document", document=alpaca[YAMATO]["output"]),
    ]
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _judge(*args: str):
    return runner.invoke(app, ["judge", *map(str, args)])


def _printed_histogram(output: str) -> dict[int, int]:
    return {int(s): int(n) for s, n in re.findall(r"^\s+([1-5])\s+(\d+)\s", output, re.MULTILINE)}


def _judge_calls(fi_home) -> int:
    frame = Storage(home=str(fi_home)).model_calls.frame()
    return frame.filter(frame["role"] == "judge").height


def test_keep_rate_histogram_and_out_in_input_order(pairs_file, tmp_path):
    out = tmp_path / "judged" / "labelled.jsonl"
    result = _judge(pairs_file, "--out", out)
    assert result.exit_code == 0, result.output
    judged = [json.loads(line) for line in out.read_text().splitlines()]
    inputs = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    # Every row as given, in order, with the judge's three fields added.
    assert [
        {k: v for k, v in row.items() if k not in ("score", "kept", "feedback")} for row in judged
    ] == inputs
    by_id = {row["id"]: row for row in judged}
    for real in ("dog", "starship", "yamato", "facebook"):
        assert by_id[real]["kept"] and by_id[real]["score"] >= 4, by_id[real]
    assert not by_id["mismatched"]["kept"] and by_id["mismatched"]["score"] <= 2
    assert all(row["feedback"] and row["kept"] == (row["score"] >= 4) for row in judged)
    # The template reaches the judge: the same pair under a template it does not answer scores
    # lower (and is not served the template-less pair's cached verdict).
    assert by_id["soup_template"]["score"] < by_id["dog"]["score"]
    assert not by_id["soup_template"]["kept"]
    # A given document is judged against: the answer is not taken from this one.
    assert by_id["other_document"]["score"] < by_id["dog"]["score"]

    kept = sum(row["kept"] for row in judged)
    assert f"kept (score >= 4): {kept} of 7 ({kept / 7:.1%})" in result.stdout
    assert _printed_histogram(result.stdout) == score_histogram([r["score"] for r in judged])
    assert "unparsed" not in result.stdout
    assert "judge calls: 7 made, 0 from the call cache" in result.stdout
    assert result.stderr == ""


def test_min_judge_score_setting_sets_what_is_kept(pairs_file, tmp_path, monkeypatch):
    first = tmp_path / "first.jsonl"
    assert _judge(pairs_file, "--out", first).exit_code == 0
    scores = [json.loads(line)["score"] for line in first.read_text().splitlines()]
    monkeypatch.setenv("FI_MIN_JUDGE_SCORE", "5")
    get_settings.cache_clear()
    strict = tmp_path / "strict.jsonl"
    result = _judge(pairs_file, "--out", strict)
    assert result.exit_code == 0, result.output
    fives = scores.count(5)
    assert 0 < fives < len(scores)
    assert f"kept (score >= 5): {fives} of 7" in result.stdout
    assert [json.loads(line)["kept"] for line in strict.read_text().splitlines()] == [
        score == 5 for score in scores
    ]


def test_bad_rows_are_reported_with_their_lines_and_the_good_rows_judged(fi_home, tmp_path, alpaca):
    lines = [
        json.dumps(_pair(alpaca[SMALLEST_DOG])),  # 1
        '{"instruction": "What is the capital of France?", "answer": ',  # 2: cut off
        json.dumps({"instruction": alpaca[YAMATO]["instruction"]}),  # 3
        json.dumps({"instruction": 42, "answer": alpaca[YAMATO]["output"]}),  # 4
        json.dumps(_pair(alpaca[STARSHIP])),  # 5
        json.dumps({"instruction": "Who wrote Hamlet?", "answer": "   "}),  # 6
        json.dumps(_pair(alpaca[YAMATO], template="What year was <fi>a ship built?")),  # 7
        json.dumps(_pair(alpaca[YAMATO], document=["not", "text"])),  # 8
        json.dumps(_pair(alpaca[YAMATO], id={"nested": 1})),  # 9
        json.dumps(_pair(alpaca[YAMATO], score=5)),  # 10: a label named like the judge's field
        json.dumps(_pair(alpaca[FACEBOOK])),  # 11
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "mixed_judged.jsonl"
    result = _judge(path, "--out", out)
    assert result.exit_code == 0, result.output
    expected = {
        2: "malformed_json",
        3: "missing_field: no 'answer' field",
        4: "not_a_string: 'instruction' is a int",
        6: "empty_text: 'answer' is empty",
        7: "unbalanced_tags",
        8: "not_a_string: 'document' is a list",
        9: "bad_id",
        10: "reserved_field: 'score'",
    }
    for line, reason in expected.items():
        assert f"{path}:{line}: {reason}" in result.stderr
    assert "8 row(s) rejected" in result.stderr
    judged = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["instruction"] for row in judged] == [
        alpaca[i]["instruction"] for i in (SMALLEST_DOG, STARSHIP, FACEBOOK)
    ]
    assert "pairs judged" in result.stdout and "kept (score >= 4): 3 of 3" in result.stdout

    rejects = Storage(home=str(fi_home)).read_rejects("judge", "mixed")
    assert dict(zip(rejects["line"], rejects["reason"], strict=True)) == {
        line: reason.split(":")[0] for line, reason in expected.items()
    }
    assert set(rejects["source"]) == {str(path)}


def test_no_good_row_exits_1_and_a_missing_file_2(fi_home, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "Who wrote Hamlet?"}\n[1, 2]\n')
    result = _judge(path)
    assert result.exit_code == 1
    assert f"{path}:2: not_an_object" in result.stderr
    assert "no row could be judged (2 rejected)" in result.stderr
    missing = _judge(tmp_path / "absent.jsonl")
    assert missing.exit_code == 2 and "absent.jsonl: no such file" in missing.stderr
    same = _judge(path, "--out", path)
    assert same.exit_code == 2 and path.read_text().startswith('{"instruction"')


def test_a_second_run_is_served_by_the_call_cache(pairs_file, fi_home, tmp_path):
    first = _judge(pairs_file, "--out", tmp_path / "first.jsonl")
    assert first.exit_code == 0 and _judge_calls(fi_home) == 7
    second = _judge(pairs_file, "--out", tmp_path / "second.jsonl")
    assert second.exit_code == 0
    assert "judge calls: 0 made, 7 from the call cache" in second.stdout
    assert _judge_calls(fi_home) == 7
    assert (tmp_path / "first.jsonl").read_text() == (tmp_path / "second.jsonl").read_text()


def test_unparsed_judge_outputs_are_counted_apart_from_the_scores():
    rows = [
        {"score": 5, "kept": True, "feedback": "addresses it"},
        {"score": 2, "kept": False, "feedback": "off the point"},
        {"score": None, "kept": False, "feedback": None},
        {"score": 5, "kept": True, "feedback": "addresses it"},
    ]
    summary = render_summary(
        FileJudgement("pairs.jsonl", rows, [], CallResult(["x"] * 4, 4, 0, 1.0)), 4, "rules"
    )
    assert "kept (score >= 4): 2 of 4 (50.0%)" in summary
    assert _printed_histogram(summary) == {1: 0, 2: 1, 3: 0, 4: 0, 5: 2}
    assert re.search(r"unparsed\s+1\s+25.0%", summary)
    assert Counter(score_histogram([5, 5, 2]).values()) == Counter({0: 3, 2: 1, 1: 1})
