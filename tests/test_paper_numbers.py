"""The paper's numbers in results/paper are the paper's: each comes from its text."""

import csv
import re
from dataclasses import replace
from pathlib import Path

import pytest

from seesaw_repro.configs import resolve, run_id
from seesaw_repro.recipes import PAPER_DIR, known_tables, load_table
from seesaw_repro.report import metrics_of

PAPER = Path(__file__).resolve().parents[2] / "shared" / "paper" / "seesaw_loss_cvpr2021.txt"
# Cells the paper states in its prose, not in the table: (table, row) -> (metric, phrase).
IN_PROSE = {("table02", "ce"): ("AP", "from 23.7% AP to 25.1% AP")}


# Tables whose rows precede their caption in the text: from this header to the caption.
ROWS_BEFORE_CAPTION = {12: "Schedule\tAP\t"}


def _block(text: str, number: int) -> str:
    """The text of Table `number`: from its caption to the next table's (or Sec. 4.4, or
    the end of the text), or from its header to its caption (ROWS_BEFORE_CAPTION)."""
    if number in ROWS_BEFORE_CAPTION:
        end = text.index(f"Table {number}:")
        return text[text.rindex(ROWS_BEFORE_CAPTION[number], 0, end) : end]
    start = text.index(f"Table {number}:")
    ends = [text.find(marker, start) for marker in (f"Table {number + 1}:", "4.4.")]
    return text[start : min([e for e in ends if e > 0], default=len(text))]


@pytest.mark.skipif(not PAPER.exists(), reason=f"the paper's text is not at {PAPER}")
@pytest.mark.parametrize("table", known_tables())
def test_every_number_is_on_its_row_of_the_papers_table(table):
    text = PAPER.read_text()
    block = _block(text, int(table[5:]))
    with open(PAPER_DIR / f"{table}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows
    metrics = list(metrics_of(load_table(table)))
    for row in rows:
        cells = [row[m] for m in metrics]
        if (table, row["row"]) in IN_PROSE:
            metric, phrase = IN_PROSE[(table, row["row"])]
            assert phrase in text and row[metric] in phrase
            cells[metrics.index(metric)] = ""
        if "" in cells:
            assert row["note"], f"{table} {row['row']}: a missing cell needs a note"
        # The row's metric cells, in order, end a line of the table (tabs or spaces between
        # them); a cell recorded as missing is empty there, "-" (test-dev's AP^box) or a
        # token that cannot be read as that cell (noted). A cell may carry its change from
        # the row above in parentheses (Table 12: "18.9 (+0.2)").
        delta = r"(?: \([+-]\d+\.\d\))?"
        pattern = r"[\t ]+".join(re.escape(c) + delta if c else r"(\S+)?" for c in cells)
        assert re.search(rf"(^|\t){pattern}$", block, re.MULTILINE), (table, row["row"], cells)


def test_every_recipe_row_has_the_papers_numbers_and_every_paper_row_a_recipe_or_a_note():
    for table in known_tables():
        with open(PAPER_DIR / f"{table}.csv", newline="") as f:
            paper = {row["row"]: row for row in csv.DictReader(f)}
        keys = [row.key for row in load_table(table).rows]
        assert set(keys) <= set(paper), table
        assert all(paper[k]["note"] for k in set(paper) - set(keys)), table


def test_figures_are_recipes_whose_runs_are_the_tables_and_have_no_numbers(tmp_path):
    from seesaw_repro.report import compare
    from seesaw_repro.runs import plan

    figure3 = load_table("fig 3")
    assert figure3.name == "figure03" and figure3.is_figure
    assert all(row.spec.gradient_stats for row in figure3.rows)
    frame = compare(figure3, "tiny", tmp_path)
    assert list(frame.row) == ["ce", "seesaw"] and frame.AP_paper.isna().all()
    table1 = {run.run_id for run in plan(load_table("table1"), "paper")}
    figure4 = plan(load_table("figure4"), "paper")
    assert len(figure4) == 16 and {run.run_id for run in figure4} <= table1
    # Figure 1's runs are Table 2's CE and full Seesaw rows with the accuracy recorded.
    table2 = {run.run_id for run in plan(load_table("table2"), "paper")}
    figure1 = plan(load_table("figure1"), "paper")
    assert {run.run_id for run in figure1}.isdisjoint(table2)
    untouched = [replace(run.spec, classification_accuracy=False) for run in figure1]
    assert {run_id(resolve(spec, "paper")) for spec in untouched} <= table2
