"""Effects, intervals and verdicts on hand-made numbers and metrics files, against known
answers (scipy's t interval), and the report and `--claims` built from them."""

import json
import math
from dataclasses import replace

import pytest
from scipy import stats
from typer.testing import CliRunner

from cli import app
from seesaw_repro.execution.runs import RunDir
from seesaw_repro.paper import configs
from seesaw_repro.paper.recipes import load_table
from seesaw_repro.reporting import report, verdicts


def test_paired_effect_is_scipys_t_interval_of_the_paired_differences():
    row = {0: 30.0, 1: 28.5, 2: 33.0, 3: 31.0}
    baseline = {0: 29.0, 1: 26.5, 2: 28.5, 5: 99.0}  # seed 3 and 5 are not paired
    effect = verdicts.paired_effect(row, baseline)
    diffs = [1.0, 2.0, 4.5]
    low, high = stats.t.interval(0.95, 2, loc=sum(diffs) / 3, scale=stats.sem(diffs))
    assert effect.n == 3 and effect.mean == pytest.approx(2.5)
    assert (effect.low, effect.high) == pytest.approx((low, high))
    assert effect.sd == pytest.approx(stats.tstd(diffs))
    assert effect.text() == f"+2.5 [{low:+.1f}, {high:+.1f}] n=3"


@pytest.mark.parametrize(
    "row,paper,expected",
    [
        ({0: 2.0, 1: 3.0, 2: 2.5}, 1.4, "reproduced"),  # interval (1.3, 3.7) above 0
        ({0: 2.0, 1: 3.0, 2: 2.5}, -0.3, "contradicted"),  # the paper says lower
        ({0: 2.0, 1: -1.0, 2: 0.5}, 1.4, "inconclusive"),  # straddles 0
        ({0: 2.0}, 1.4, "one seed"),
        ({}, 1.4, "not run"),
        ({0: 2.0, 1: 3.0}, math.nan, "no paper effect"),  # an unreadable cell
    ],
)
def test_verdicts_on_hand_cases(row, paper, expected):
    effect = verdicts.paired_effect(row, {seed: 0.0 for seed in row})
    assert verdicts.verdict(paper, effect) == expected


def test_summary_cell_of_several_seeds():
    assert verdicts.summary({0: 28.0, 1: 30.0, 2: 29.0}) == "29.0 ± 1.0 (3)"
    assert verdicts.summary({0: 28.04}) == "28.0" and verdicts.summary({}) == ""


TABLE2_AP = {  # hand-made AP and AP_r of Table 2's rows at seeds 0, 1, 2
    "ce": ([20.0, 21.0, 22.0], [5.0, 9.0, 4.0]),
    "mf": ([22.0, 23.5, 24.0], [7.0, 6.0, 8.0]),
    "cf": ([19.0, 22.0, 22.5], [5.0, 9.0, 4.0]),
}


def _write_metrics(work_dir, table, preset):
    for row in table.rows:
        if row.key not in TABLE2_AP:
            continue
        for seed, (ap, ap_r) in enumerate(zip(*TABLE2_AP[row.key], strict=True)):
            rid = configs.run_id(configs.resolve(replace(row.spec, seed=seed), preset))
            run_dir = RunDir(work_dir, rid).path
            run_dir.mkdir(parents=True)
            metrics = {"AP": ap, "AP_r": ap_r, "AP_c": 1.0, "AP_f": 1.0, "AP_box": ap + 1}
            (run_dir / "metrics.json").write_text(json.dumps({"metrics": metrics, "batch": 8}))
            spec = {"seed": seed}
            (run_dir / "run.json").write_text(json.dumps({"run_id": rid, "spec": spec}))


def test_table2_effects_and_claims_from_metrics_files(tmp_path):
    table = load_table("table2")
    _write_metrics(tmp_path, table, "tiny")
    frame = report.compare(table, "tiny", tmp_path, seeds=[0, 1, 2]).set_index("row")
    assert frame.at["mf", "AP_repro"] == pytest.approx(23.1666, abs=1e-3)
    assert frame.at["mf", "AP_n"] == 3 and frame.at["mf_cf", "AP_n"] == 0
    # MF vs CE, paired: +2.0, +2.5, +2.0 -> reproduced (paper +1.4)
    low, high = stats.t.interval(0.95, 2, loc=13 / 6, scale=stats.sem([2.0, 2.5, 2.0]))
    assert frame.at["mf", "AP_effect"] == pytest.approx(13 / 6)
    assert (frame.at["mf", "AP_low"], frame.at["mf", "AP_high"]) == pytest.approx((low, high))
    assert frame.at["mf", "AP_paper_effect"] == pytest.approx(25.1 - 23.7)
    assert frame.at["mf", "AP_verdict"] == "reproduced"
    # CE's AP_r is unreadable in the paper: no paper effect from the table
    assert math.isnan(frame.at["mf", "AP_r_paper_effect"])
    assert frame.at["mf", "AP_r_verdict"] == "no paper effect"
    assert frame.at["cf", "AP_verdict"] == "inconclusive"  # -1, +1, +0.5
    assert frame.at["ce", "AP_verdict"] == ""  # the baseline itself
    claims = report.claims(table, frame.reset_index()).set_index("claim")
    said = {c.says: c for c in table.claims}
    mf_ap_r = next(k for k in said if "AP_r by 2.8" in k)
    # the text's +2.8 stands in for the unreadable cell; MF's AP_r: +2, -3, +4 straddles 0
    assert claims.at[mf_ap_r, "paper_effect"] == 2.8
    assert claims.at[mf_ap_r, "verdict"] == "inconclusive"
    assert claims.verdict.value_counts().to_dict() == {
        "not run": 3,  # MF + CF and NLA rows have no metrics
        "reproduced": 1,
        "inconclusive": 2,
    }


def test_report_and_claims_commands_print_verdicts(tmp_path):
    _write_metrics(tmp_path, load_table("table2"), "tiny")
    runner = CliRunner()
    wide = {"COLUMNS": "250"}
    result = runner.invoke(app, ["report", "table2", "--work-dir", str(tmp_path)], env=wide)
    assert result.exit_code == 0, result.output
    assert "effects against each row's baseline" in result.output
    assert "+2.2 [" in result.output and "n=3 (+1.4) ✓" in result.output
    assert "What the paper says of table02" in result.output
    result = runner.invoke(
        app, ["report", "all", "--claims", "--format", "csv", "--work-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("table,claim,row,versus,metric,paper_effect,effect")
    assert sum(",reproduced," in line for line in lines) == 1
    assert len(lines) - 1 == sum(len(load_table(t).claims) for t in _tables())
    args = ["report", "all", "--claims", "--work-dir", str(tmp_path)]
    result = runner.invoke(app, args, env=wide)
    assert "1 reproduced, 2 inconclusive" in result.output


def _tables():
    from seesaw_repro.paper.recipes import known_figures, known_tables

    return known_tables() + known_figures()
