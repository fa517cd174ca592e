"""The paper's numbers in results/paper are the paper's: each comes from its text."""

import csv
import re
from pathlib import Path

import pytest

from seesaw_repro.paper.recipes import PAPER_DIR, known_tables, load_table
from seesaw_repro.reporting.report import metrics_of

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
    from seesaw_repro.execution.runs import plan
    from seesaw_repro.reporting.report import compare

    figure3 = load_table("fig 3")
    assert figure3.name == "figure03" and figure3.is_figure
    frame = compare(figure3, "tiny", tmp_path)
    assert list(frame.row) == ["ce", "seesaw"] and frame.AP_paper.isna().all()
    table1 = plan(load_table("table1"), "paper")
    figure4 = plan(load_table("figure4"), "paper")
    assert len(figure4) == 16 and {run.run_id for run in figure4} <= {r.run_id for r in table1}
    # Figures 1 and 3 are Appendix B's models: Table 1's random-sampler Mask R-CNN CE and
    # Seesaw runs (R-101, 2x), which record both figures' statistics.
    appendix_b = [
        r for r in table1 if {"table01:mask_random_ce", "table01:mask_random_seesaw"} & set(r.rows)
    ]
    for figure in ("figure1", "figure3"):
        assert [r.run_id for r in plan(load_table(figure), "paper")] == [
            r.run_id for r in appendix_b
        ]
    for run in appendix_b:
        spec = run.spec
        assert (spec.model, spec.backbone, spec.sampler, spec.schedule) == (
            "mask_rcnn",
            "r101",
            "random",
            "2x",
        )
        assert spec.gradient_stats and spec.classification_accuracy
        hooks = {hook["type"] for hook in run.config["custom_hooks"]}
        assert {"GradientStatsHook", "ClassificationAccuracyHook"} <= hooks
    # Table 1's CE is standard Mask R-CNN's (C + 1 softmax); Table 2's has the objectness branch.
    ce = next(r for r in appendix_b if "table01:mask_random_ce" in r.rows)
    assert ce.config["model"]["roi_head"]["bbox_head"]["loss_cls"]["objectness"] is False
    table2_ce = load_table("table2").rows[0].spec
    assert table2_ce.objectness and not (table2_ce.mitigation or table2_ce.compensation)
