"""The paper's numbers in results/paper are the paper's: each comes from its text."""

import math
from pathlib import Path

import pytest

from seesaw_repro.recipes import load_table
from seesaw_repro.report import METRICS, paper_numbers

PAPER = Path(__file__).resolve().parents[2] / "shared" / "paper" / "seesaw_loss_cvpr2021.txt"


@pytest.mark.skipif(not PAPER.exists(), reason=f"the paper's text is not at {PAPER}")
def test_table2_numbers_appear_in_the_papers_table_2():
    text = PAPER.read_text()
    block = text[text.index("Table 2: Ablation") : text.index("Table 3:")]
    frame = paper_numbers(load_table("table2"))
    for key, row in frame.iterrows():
        values = [row[m] for m in METRICS]
        if key == "ce":  # only AP^box survived in the table; AP is stated in Sec. 4.3
            assert [math.isnan(v) for v in values[1:4]] == [True, True, True]
            assert "\t" * 7 + f"{values[4]}" in block
            assert f"from {values[0]}% AP to" in text
            assert row["note"]
            continue
        assert "\t".join(f"{v}" for v in values) in block, key
