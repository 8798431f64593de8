"""What the UI shows of a table: a preview Dagster draws in place (Markdown under 1,000
characters), and the full preview behind its link."""

import polars as pl

from fi_assets.reporting import INLINE_MARKDOWN_CHARS, markdown_preview, preview_metadata
from fi_method.evaluation.eval_report import (
    headline_table,
    headline_table_by_benchmark,
    render_markdown,
)


def long_pairs(count: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "score": [5 - i % 3 for i in range(count)],
            "instruction": [
                f"Question {i}: " + "why does the sky look blue " * 8 for i in range(count)
            ],
            "answer": [
                f"Answer {i}: " + "because of Rayleigh scattering " * 12 for i in range(count)
            ],
        }
    )


def test_a_preview_of_long_rows_is_cut_to_be_drawn_in_place_and_kept_whole_behind_a_link():
    frame = long_pairs(20)
    columns = ["score", "instruction", "answer"]
    metadata = preview_metadata(frame, columns)
    inline, full = metadata["preview"].value, metadata["preview_full"].value
    assert len(inline) < INLINE_MARKDOWN_CHARS <= len(full)
    assert full == markdown_preview(frame, columns)
    shown = inline.splitlines()[2:]
    assert len(shown) >= 2, "rows are given up only down to readable cells"
    assert shown[0].startswith("| 5 | Question 0: why does the sky look blue")
    assert all(cell.endswith("…") for cell in shown[0].strip("| ").split(" | ")[1:])


def test_a_short_preview_is_shown_whole_with_no_second_copy():
    frame = pl.DataFrame({"score": [5, 4], "instruction": ["What is DNA?", "Why rain?"]})
    metadata = preview_metadata(frame, ["score", "instruction"])
    assert list(metadata) == ["preview"]
    assert "| 4 | Why rain? |" in metadata["preview"].value


def test_the_eval_table_alone_fits_in_place():
    rows = [
        {
            "recipe": recipe,
            "benchmark": benchmark,
            "metric": metric,
            "value": value,
            "judge": "mechanical",
            "n_items": 16,
            "note": "",
        }
        for recipe in ("standard", "fineinstructions", "non_instructional")
        for benchmark, metric, value in (
            ("heldout_nll", "answer_nll", 10.5),
            ("mixeval", "overall", 12.5),
            ("mixeval_hard", "overall", 3.0),
        )
    ]
    table = headline_table(rows)
    assert table in render_markdown(rows)
    assert table.splitlines()[2].startswith("| standard | 10.50")
    # In place, a row per benchmark: four columns, not one per benchmark, which the UI cuts off.
    in_place = headline_table_by_benchmark(rows)
    assert len(in_place) < INLINE_MARKDOWN_CHARS < len(render_markdown(rows))
    assert (
        in_place.splitlines()[0]
        == "| benchmark | standard | fineinstructions | non_instructional |"
    )
    assert in_place.splitlines()[2] == "| heldout_nll | 10.50 † | 10.50 † | 10.50 † |"
