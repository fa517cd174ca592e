"""Every method of Tables 1-9 trains and evaluates for real, in Mask R-CNN and in Cascade
Mask R-CNN, on the generated data (a short schedule: this checks the plumbing, not AP)."""

from dataclasses import replace

import pytest

from seesaw_repro.execution.executors import run_local
from seesaw_repro.execution.runs import RunDir, plan
from seesaw_repro.paper.methods import RunSpec
from seesaw_repro.paper.recipes import Row, Table
from seesaw_repro.reporting.report import METRICS

LVIS_METRICS = list(METRICS["lvis"])

pytestmark = pytest.mark.slow

METHODS = {
    "ce": RunSpec(mitigation=False, compensation=False, nla=False),
    "seesaw_norm_mask": RunSpec(norm_mask=True),
    "seesaw_no_objectness": RunSpec(objectness=False),
    "eql": RunSpec(loss="eql", nla=False),
    "bags_nla": RunSpec(loss="bags"),
    "de_bags": RunSpec(loss="bags", nla=False, decoupled="rfs", schedule="1x"),
}


def test_every_method_trains_and_evaluates_in_both_models(tmp_path, quick_data, with_quick_preset):
    rows = [
        Row(f"{model}:{key}", replace(spec, model=model))
        for model in ("mask_rcnn", "cascade_mask_rcnn")
        for key, spec in METHODS.items()
    ]
    runs = plan(Table("methods", "methods", "", [], rows), with_quick_preset.name)
    assert len(runs) == len(rows)  # the decoupled rows' pre-training is the CE row
    states = run_local(runs, tmp_path, quick_data, jobs=2)
    assert set(states.values()) == {"done"}, {r.rows[0]: states[r.run_id] for r in runs}
    for run in runs:
        metrics = RunDir(tmp_path, run.run_id).metrics()
        assert sorted(metrics) == sorted(LVIS_METRICS)
        assert all(0.0 <= value <= 100.0 for value in metrics.values()), (run.rows, metrics)
