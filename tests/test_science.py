"""The paper's mechanism, at a small scale, on paired seeds: a change that silently breaks the
loss, the sampler or the category mapping (labels that no longer follow the annotations' long
tail) fails here, where a test of the pipeline alone passes (issue 18)."""

from dataclasses import replace

import numpy as np
import pytest

from seesaw_repro.execution.executors import run_local
from seesaw_repro.execution.runs import RunDir, plan
from seesaw_repro.paper import presets
from seesaw_repro.paper.recipes import load_table
from seesaw_repro.reporting import plots

pytestmark = pytest.mark.slow


@pytest.fixture
def figure3_preset(monkeypatch, quick_preset):
    """40 iterations of 4 images at lr 0.02 (the schedule its thresholds were measured at):
    too short to learn AP, long enough for the gradients. Measured (seeds 0, 1): CE's rare
    ratios 0.00-0.07, Seesaw's up to 16; 48 s for 4 runs."""
    preset = replace(quick_preset, name="figure3-short", iters_2x=40, batch_size=4, lr=0.02)
    monkeypatch.setitem(presets.PRESETS, preset.name, preset)
    return preset


def test_seesaw_rebalances_the_rare_categories_gradients_that_ce_starves(
    tmp_path, quick_data, figure3_preset
):
    """Figure 3: with CE a rare category's classifier gets far less positive than negative
    gradient; Seesaw re-balances it. Both runs of a seed see the same images in the same
    order, so the rare categories with any positive gradient are compared pairwise."""
    runs = plan(load_table("figure3"), figure3_preset.name, seeds=[0, 1])
    assert run_local(runs, tmp_path, quick_data, jobs=2) == {r.run_id: "done" for r in runs}
    train = quick_data / "annotations" / "lvis_v1_train.json"
    rare = [c["class_index"] for c in plots.training_categories(train) if c["frequency"] == "r"]
    assert len(rare) == 10
    for seed in (0, 1):
        ratios = {
            run.rows[0].rsplit(":", 1)[1]: plots.gradient_ratios(RunDir(tmp_path, run.run_id).path)
            for run in runs
            if run.spec.seed == seed
        }
        ce, seesaw = ratios["ce"][rare], ratios["seesaw"][rare]
        seen = (ce > 0) & (seesaw > 0)  # a positive RoI of the category in this seed's images
        assert seen.sum() >= 3, (seed, ce, seesaw)
        assert np.median(ce[seen]) < 0.25, (seed, ce)  # starved: the paper's CE panel
        assert np.median(seesaw[seen]) > 5 * np.median(ce[seen]), (seed, ce, seesaw)
