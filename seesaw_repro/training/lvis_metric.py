"""The LVIS metric the runs use: mmdet's LVISMetric, evaluated by lvis_eval (numpy)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from mmdet.evaluation import LVISMetric
from mmdet.registry import METRICS

from seesaw_repro.evaluation.lvis_eval import FREQUENCY_GROUPS, evaluate, mmdet_key
from seesaw_repro.files import write_json_atomic


@METRICS.register_module()
class FastLVISMetric(LVISMetric):
    """mmdet's LVISMetric, evaluated by lvis_eval.evaluate: the numbers lvis-api gives (tested),
    much faster; the per-category AP goes to `per_category_file` (JSON, per metric: category
    id -> AP in [0, 1], -1 where it has no ground truth). The file is read in the job's own
    process: forking one that holds torch's threads (and CUDA) is not safe."""

    def __init__(self, ann_file: str, per_category_file: str | None = None, **kwargs) -> None:
        super().__init__(ann_file=ann_file, **kwargs)
        self.ann_file = ann_file
        self.per_category_file = per_category_file

    def compute_metrics(self, results: list) -> dict[str, float]:
        """The LVISMetric keys (`segm_AP`, `segm_APr`, ...), from our evaluation."""
        if self.cat_ids is None:
            self.cat_ids = self._lvis_api.get_cat_ids()
        _, predictions = zip(*results, strict=True)
        with tempfile.TemporaryDirectory() as tmp:
            files = self.results2json(predictions, self.outfile_prefix or f"{tmp}/results")
            if self.format_only:
                return {}
            found, per_category = {}, {}
            for metric in self.metrics:
                evaluation = evaluate(Path(self.ann_file), Path(files[metric]), metric)
                for name in ("AP", *FREQUENCY_GROUPS.values()):
                    found[mmdet_key(metric, name)] = evaluation[name]
                per_category[metric] = evaluation["per_category"]
        if self.per_category_file:
            write_json_atomic(Path(self.per_category_file), per_category)
        return found
