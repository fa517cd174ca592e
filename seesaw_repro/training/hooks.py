"""mmengine hooks that leave a run's state on disk for the suite to read.

They write into the runner's work_dir, so a config trained with mmdet's own tools/train.py
leaves the same files as one trained by `seesaw repro`.
"""

import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
from mmdet.structures.bbox import bbox2roi
from mmengine.dist import all_reduce, is_distributed, is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop, Runner

from seesaw_repro.data.imagenet_lt import CLASSIFICATION_COLUMNS
from seesaw_repro.evaluation.lvis_eval import LVIS_COLUMNS, column_key
from seesaw_repro.files import write_json_atomic, write_text_atomic
from seesaw_repro.run_folder import (
    CLASSIFICATION_ACCURACY_FILE,
    GRADIENT_STATS_FILE,
    LAST_CHECKPOINT_FILE,
    METRICS_FILE,
    PROGRESS_FILE,
    checkpoint_name,
)

# The evaluator's keys (mmdet's LVISMetric names with its prefix "lvis/", values in [0, 1])
# -> the paper's columns, in percent.
LVIS_METRICS = {f"lvis/{column_key(column)}": column for column in LVIS_COLUMNS}
# classification.ShotGroupAccuracy's keys -> Tables 10-11's columns.
CLASSIFICATION_METRICS = {f"imagenet_lt/{c}": c for c in CLASSIFICATION_COLUMNS}


SPEED_METRIC = "speed/fps"  # InferenceSpeedHook's, images per second (Table 13)


def paper_metrics(evaluator_metrics: dict) -> dict[str, float]:
    """Pick the paper's metrics (LVIS's five, or the classification tables' four) from an
    evaluator's output, as percentages, and the inference speed (`fps`) where measured."""
    names = CLASSIFICATION_METRICS if "imagenet_lt/top1" in evaluator_metrics else LVIS_METRICS
    missing = [k for k in names if k not in evaluator_metrics]
    if missing:
        raise KeyError(f"the evaluation did not report {missing}")
    found = {name: round(100 * float(evaluator_metrics[k]), 2) for k, name in names.items()}
    if SPEED_METRIC in evaluator_metrics:
        found["fps"] = round(float(evaluator_metrics[SPEED_METRIC]), 2)
    return found


@HOOKS.register_module()
class ProgressFileHook(Hook):
    """Writes `progress.json` (iteration, total, seconds per iteration) every few seconds."""

    priority = "VERY_LOW"

    def __init__(self, every_seconds: float = 2.0) -> None:
        self.every_seconds = every_seconds
        self._last_write = 0.0
        self._start: tuple[float, int] | None = None

    def _write(self, runner: Runner, phase: str, iters_done: int) -> None:
        if not is_main_process():  # one writer when several processes train the run
            return
        now = time.time()
        if self._start is None:
            self._start = (now, iters_done)
        elapsed, done = now - self._start[0], iters_done - self._start[1]
        write_json_atomic(
            Path(runner.work_dir) / PROGRESS_FILE,
            {
                "phase": phase,
                "iter": iters_done,
                "max_iters": runner.max_iters,
                "sec_per_iter": elapsed / done if done else None,
                "updated": now,
            },
        )
        self._last_write = now

    def before_train(self, runner: Runner) -> None:
        # Resumed from the final checkpoint, the run is past training: only its evaluation
        # is left (see job.py), and the phase says so if that is stopped too.
        self._write(runner, "eval" if runner.iter >= runner.max_iters else "train", runner.iter)

    def after_train_iter(
        self, runner: Runner, batch_idx: int, data_batch: object = None, outputs: object = None
    ) -> None:
        # runner.iter counts the iterations before this one until the loop moves on.
        iters_done = runner.iter + 1
        finished = iters_done >= runner.max_iters
        if finished or time.time() - self._last_write >= self.every_seconds:
            self._write(runner, "eval" if finished else "train", iters_done)


# Files an evaluator writes, named relative to the work dir in the configs, so that a run's
# config trained elsewhere (mmdet's tools/train.py --work-dir) writes only there.
EVALUATOR_OUTPUTS = ("per_category_file", "outfile_prefix")


def _outputs_into_work_dir(evaluator: object, work_dir: str) -> None:
    for metric in getattr(evaluator, "metrics", []):
        for name in EVALUATOR_OUTPUTS:
            value = getattr(metric, name, None)
            if value and not Path(value).is_absolute():
                setattr(metric, name, str(Path(work_dir) / value))


@HOOKS.register_module()
class MetricsFileHook(Hook):
    """Writes `metrics.json` once the evaluation after the last training iteration is done,
    or, for a test-dev run, once its result files for the LVIS server are written.

    That file is the run's "done" mark, so it is written last and atomically.
    """

    priority = "VERY_LOW"

    def before_val(self, runner: Runner) -> None:
        _outputs_into_work_dir(runner.val_loop.evaluator, runner.work_dir)

    def before_test(self, runner: Runner) -> None:
        _outputs_into_work_dir(runner.test_loop.evaluator, runner.work_dir)

    def after_val_epoch(self, runner: Runner, metrics: dict | None = None) -> None:
        if runner.iter < runner.max_iters or not is_main_process():
            return
        batch = runner.world_size * runner.cfg.train_dataloader.batch_size
        split = runner.cfg.get("seesaw", {}).get("eval_split", "val")
        record: dict = {"split": split, "iter": runner.iter, "batch": batch}
        if metrics:
            record["metrics"] = paper_metrics(metrics)
            if "fps" in record["metrics"]:
                record["speed_device"] = inference_device()
        else:
            # mmdet's LVISMetric reports nothing when no detection passed the score threshold;
            # the AP of every category with ground truth is then 0.
            record["metrics"] = dict.fromkeys(LVIS_METRICS.values(), 0.0)
            record["note"] = "no detection above the score threshold"
        write_json_atomic(Path(runner.work_dir) / METRICS_FILE, record)

    def after_test_epoch(self, runner: Runner, metrics: dict | None = None) -> None:
        evaluator = runner.cfg.get("test_evaluator", {})
        if not is_main_process():
            return
        if runner.cfg.get("seesaw", {}).get("job") == "evaluate":  # a model fitted post hoc
            record = {"split": runner.cfg.seesaw.eval_split, "metrics": paper_metrics(metrics)}
            write_json_atomic(Path(runner.work_dir) / METRICS_FILE, record)
            return
        if not evaluator.get("format_only"):
            return
        prefix = Path(runner.work_dir) / evaluator["outfile_prefix"]
        files = [f"{prefix}.{m}.json" for m in ("bbox", "segm")]
        record = {
            "split": "test-dev",
            "metrics": {},
            "results": [f for f in files if Path(f).exists()],
            "note": "test-dev AP comes from the LVIS evaluation server: submit the segm file",
        }
        write_json_atomic(Path(runner.work_dir) / METRICS_FILE, record)


@HOOKS.register_module()
class InferenceSpeedHook(Hook):
    """Table 13's inference speed: images per second of the evaluation after the last
    training iteration (batch 1), timed from after the first `warmup` images to the end,
    with CUDA synchronised around each image; reported as `speed/fps` beside the evaluator's
    metrics, and the device in metrics.json (MetricsFileHook)."""

    priority = "LOW"  # before MetricsFileHook, which writes what this adds

    def __init__(self, warmup: int = 5) -> None:
        self.warmup = warmup
        self._images, self._seconds, self._start = 0, 0.0, 0.0

    def before_val_epoch(self, runner: Runner) -> None:
        self._images, self._seconds = 0, 0.0

    def before_val_iter(self, runner: Runner, batch_idx: int, data_batch: object = None) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def after_val_iter(
        self,
        runner: Runner,
        batch_idx: int,
        data_batch: object = None,
        outputs: list | None = None,
    ) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if batch_idx >= self.warmup:
            self._images += len(outputs or [None])
            self._seconds += time.perf_counter() - self._start

    def after_val_epoch(self, runner: Runner, metrics: dict | None = None) -> None:
        if metrics is not None and self._seconds > 0:
            metrics[SPEED_METRIC] = self._images / self._seconds


def inference_device() -> str:
    """What the speed was measured on: the GPU's name, or "cpu"."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


@HOOKS.register_module()
class GradientStatsHook(Hook):
    """Accumulates, per category, |d loss / d z_c| from positive and from negative samples.

    The ratio of the two over a whole training run is the paper's Figure 3 (Appendix B). A
    forward pre-hook on the `loss_cls` of every box head (three in a cascade) sees the
    classifier's logits and the RoI labels; a tensor hook on those logits then sees their
    gradient (scaled by the loss weight, as training sees it). The first C columns are the
    class logits whatever the loss (Seesaw with or without objectness, cross-entropy, EQL,
    BAGS): a sample of class i gives a positive
    gradient on z_i and negative gradients on every other z_j (a background sample only
    negative ones). Each process sums its own samples; the totals over all processes travel
    in the checkpoints, so a resumed run keeps them, and are written to gradient_stats.json
    when training ends.
    """

    priority = "LOW"

    def __init__(self) -> None:
        # this process's sums since it started, and the totals of the checkpoint resumed from
        self.positive: dict[str, torch.Tensor] = {}
        self.negative: dict[str, torch.Tensor] = {}
        self.resumed: dict[str, dict[str, torch.Tensor]] = {"positive": {}, "negative": {}}
        self.heads: dict[str, int] = {}  # watched loss -> number of classes
        self.device = torch.device("cpu")

    def before_train(self, runner: Runner) -> None:
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        first = next(model.parameters(), None)
        self.device = first.device if first is not None else torch.device("cpu")
        for name, module in model.named_modules():
            if name.startswith("roi_head") and hasattr(module, "loss_cls"):
                self.heads[f"{name}.loss_cls"] = module.num_classes
                watch = self._watch(f"{name}.loss_cls", module.num_classes)
                module.loss_cls.register_forward_pre_hook(watch)

    def _watch(self, name: str, num_classes: int):
        def pre_hook(module: torch.nn.Module, args: tuple) -> None:
            logits, labels = args[0], args[1]
            if not (torch.is_grad_enabled() and logits.requires_grad):
                return
            labels = labels.detach().long()

            def on_grad(grad: torch.Tensor) -> None:
                # One pass over the N x C gradient; sums in float64, kept on the gradient's
                # device (no synchronisation per step).
                magnitude = grad[:, :num_classes].detach().abs()
                fg = labels < num_classes
                own = magnitude.gather(1, labels.clamp(max=num_classes - 1)[:, None])[:, 0]
                positive = torch.zeros(num_classes, dtype=torch.double, device=grad.device)
                positive.index_add_(0, labels[fg], own[fg].double())
                negative = magnitude.sum(0, dtype=torch.double) - positive
                self.positive[name] = self.positive.get(name, 0) + positive
                self.negative[name] = self.negative.get(name, 0) + negative

            logits.register_hook(on_grad)

        return pre_hook

    def totals(self) -> dict[str, dict[str, torch.Tensor]]:
        """{"positive"|"negative": {loss: per-class sums}} over every process and attempt, on
        the CPU. Every process must call it (a sum over processes when several train)."""
        found: dict[str, dict[str, torch.Tensor]] = {}
        names = sorted(set(self.heads) | set(self.resumed["positive"]))
        for side, sums in (("positive", self.positive), ("negative", self.negative)):
            found[side] = {}
            for name in names:
                size = self.heads.get(name) or len(self.resumed[side][name])
                own = sums.get(name)
                summed = (
                    own.clone()
                    if own is not None
                    else torch.zeros(size, dtype=torch.double, device=self.device)
                )
                all_reduce(summed)  # mmengine's: a sum, nothing when one process trains
                found[side][name] = summed.cpu() + self.resumed[side].get(name, 0)
        return found

    def before_save_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        checkpoint["gradient_stats"] = self.totals()

    def after_load_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        saved = checkpoint.get("gradient_stats", {})
        self.resumed = {side: dict(saved.get(side, {})) for side in ("positive", "negative")}
        self.positive, self.negative = {}, {}

    def after_train(self, runner: Runner) -> None:
        totals = self.totals()
        if not is_main_process():
            return
        write_json_atomic(
            Path(runner.work_dir) / GRADIENT_STATS_FILE,
            {
                "iter": runner.iter,
                "heads": {
                    name: {side: totals[side][name].tolist() for side in ("positive", "negative")}
                    for name in totals["positive"]
                },
            },
        )


@HOOKS.register_module()
class ClassifierFinetuneHook(Hook):
    """Decoupled training: only the classifier's `trainable` parameters learn (Table 9: the
    box classifiers' last layer, `fc_cls` under `roi_head`; Table 10: cRT's `classifier`,
    LWS's `scales`).

    With `fresh`, when the pre-trained model (config `load_from`) is loaded, the trainable
    part and the classifier loss's state (Seesaw's counts, `loss_cls`) are dropped from it,
    so they start from their initialisation and the counts from zero. Checkpoints this run
    writes are marked and load whole, so a resumed fine-tune keeps what it learnt. Before
    training every other parameter stops requiring gradients, and before each iteration the
    modules without a trainable parameter go to eval mode, so their BatchNorm statistics stay
    pre-trained.
    """

    priority = "HIGH"
    MARK = "classifier_finetune"

    def __init__(self, trainable: str = "fc_cls", scope: str = "roi_head", fresh: bool = True):
        self.trainable, self.scope, self.fresh = trainable, scope, fresh

    def _is_classifier(self, name: str) -> bool:
        parts = name.split(".")
        in_scope = not self.scope or parts[0] == self.scope
        return in_scope and (self.trainable in parts or "loss_cls" in parts)

    def after_load_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        if checkpoint.get(self.MARK) or not self.fresh:
            return
        state = checkpoint["state_dict"]
        dropped = [k for k in state if self._is_classifier(k)]
        for key in dropped:
            del state[key]
        runner.logger.info(f"fine-tuning the classifier: not loaded from the model: {dropped}")

    def before_save_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        checkpoint[self.MARK] = True

    def before_train(self, runner: Runner) -> None:
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        trainable = []
        for name, param in model.named_parameters():
            param.requires_grad_(self._is_classifier(name))
            if param.requires_grad:
                trainable.append(name)
        if not trainable:
            raise RuntimeError(f"no parameter named {self.trainable} under {self.scope} to train")
        runner.logger.info(f"fine-tuning only {trainable}")

    def before_train_iter(self, runner: Runner, batch_idx: int, data_batch: object = None) -> None:
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        for module in model.modules():
            if not any(p.requires_grad for p in module.parameters()):
                module.eval()


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Makes a resumed run take exactly the steps of a run never stopped.

    Each checkpoint keeps torch's random state (CPU and CUDA), which RoI sampling draws
    from, and the first iteration after a resume restores it. It keeps numpy's and Python's
    too, which the data pipeline draws from (in the main process: the tiny presets load
    without workers). An iteration-based loop needs them not: on resume it fetches the
    skipped batches again, replaying those draws. An epoch-based loop (Tables 10-11) starts
    the epoch after its checkpoint afresh, so they are restored before its first batch.
    """

    priority = "VERY_LOW"  # restore after every other hook's before_train_iter

    def __init__(self) -> None:
        self._restore: dict | None = None

    def before_save_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        checkpoint["random_state"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        }

    def after_load_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        self._restore = checkpoint.get("random_state")

    def before_train_epoch(self, runner: Runner) -> None:
        resumed = self._restore is not None and runner.iter > 0
        if resumed and isinstance(runner.train_loop, EpochBasedTrainLoop):
            np.random.set_state(self._restore["numpy"])
            random.setstate(self._restore["python"])

    def before_train_iter(self, runner: Runner, batch_idx: int, data_batch: object = None) -> None:
        if self._restore is None or runner.iter == 0:  # iter 0: load_from, not a resume
            return
        torch.set_rng_state(self._restore["torch"])
        if self._restore["cuda"]:
            torch.cuda.set_rng_state_all(self._restore["cuda"])
        self._restore = None


class Diverged(RuntimeError):
    """A training iteration's loss was not finite (FailOnDivergenceHook)."""


class FailOnDivergenceHook(Hook):
    """Fails the run at the first iteration whose loss is not finite, before any checkpoint
    of it is saved: SGD has put NaN into the weights by then, every later iteration trains
    on them and the evaluation reports 0 AP (seen: the tiny Table 12 ResNeSt row, NaN from
    iteration ~70, 680 iterations on, AP 0.0).

    job.py registers it on every training runner rather than writing it into the configs:
    a config's content is its run id.
    """

    priority = "HIGHEST"  # before CheckpointHook and StopOnSignalHook save this iteration

    def after_train_iter(
        self, runner: Runner, batch_idx: int, data_batch: object = None, outputs: object = None
    ) -> None:
        loss = torch.as_tensor((outputs or {}).get("loss", 0.0), dtype=torch.float32)
        bad = (~torch.isfinite(loss.detach().cpu())).float()
        if is_distributed():  # every rank stops at the same iteration
            all_reduce(bad, op="max")
        if bad.item():
            raise Diverged(
                f"the loss was {loss.item()} at iteration {runner.iter + 1}: the run diverged "
                "(its weights are no longer finite; its checkpoints are from before). The same "
                "config will likely diverge again: it needs a lower lr or gradient clipping"
            )


class Stopped(Exception):
    """Training was stopped by a signal (StopOnSignalHook); it resumes from its checkpoint."""


@HOOKS.register_module()
class StopOnSignalHook(Hook):
    """On SIGTERM or SIGUSR1 (a cancel, a preemption, a Slurm requeue or time limit), finish
    the current iteration, save a checkpoint of it and raise Stopped, so that the next
    attempt resumes exactly there (see RandomStateHook).

    An epoch-based loop saves nothing extra: mmengine resumes it at epoch boundaries only,
    so it resumes from its last epoch's checkpoint.
    """

    priority = "LOWEST"  # after CheckpointHook, which may have saved this iteration already
    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
    # The signal this process received, if any, for the job to ask after a failure: Slurm
    # signals every process of a job, and a data-loader worker it kills fails the training
    # step before this hook can stop it (job.main records that as a stop too).
    received: int | None = None

    def before_train(self, runner: Runner) -> None:
        for signum in self.SIGNALS:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        StopOnSignalHook.received = signum

    def after_train_iter(
        self, runner: Runner, batch_idx: int, data_batch: object = None, outputs: object = None
    ) -> None:
        stop = torch.tensor(float(self.received is not None))
        if is_distributed():  # every rank stops at the same iteration
            all_reduce(stop, op="max")
        if not stop.item():
            return
        name = checkpoint_name("iter", runner.iter + 1)
        last = Path(runner.work_dir) / LAST_CHECKPOINT_FILE
        iteration_based = isinstance(runner.train_loop, IterBasedTrainLoop)
        if iteration_based and not (last.exists() and last.read_text().endswith(name)):
            runner.save_checkpoint(runner.work_dir, name, by_epoch=False)
            if is_main_process():
                write_text_atomic(last, str(Path(runner.work_dir) / name))
        runner.logger.warning(
            f"stopped by signal {self.received} after iteration {runner.iter + 1}; "
            f"the next attempt resumes from {last.read_text() if last.exists() else 'the start'}"
        )
        raise Stopped

    def after_train(self, runner: Runner) -> None:
        for signum in self.SIGNALS:
            signal.signal(signum, signal.SIG_DFL)


@HOOKS.register_module()
class ClassificationAccuracyHook(Hook):
    """Figure 1: how often the box classifier, given a ground-truth box of the val split as
    its RoI, ranks the true category first among all categories and background. Counted per
    category in the evaluation after training, written to classification_accuracy.json. A
    cascade's last stage is the one asked. This costs one more backbone pass per val image.
    """

    priority = "LOW"

    def before_val_epoch(self, runner: Runner) -> None:
        self.correct: torch.Tensor | None = None
        self.total: torch.Tensor | None = None

    @torch.no_grad()
    def after_val_iter(
        self, runner: Runner, batch_idx: int, data_batch: dict | None = None, outputs: object = None
    ) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        data = model.data_preprocessor(data_batch, False)
        boxes, labels = [], []
        for sample in data["data_samples"]:
            gt = sample.gt_instances
            # The val pipelines load annotations after Resize: boxes are in the original image.
            scale = gt.bboxes.new_tensor(sample.metainfo["scale_factor"]).repeat(2)
            boxes.append(gt.bboxes * scale)
            labels.append(gt.labels)
        roi_head = model.roi_head
        rois = bbox2roi(boxes)
        features = model.extract_feat(data["inputs"])
        if hasattr(roi_head, "num_stages"):  # cascade: the last stage
            stage = roi_head.num_stages - 1
            cls_score = roi_head._bbox_forward(stage, features, rois)["cls_score"]
            head = roi_head.bbox_head[stage]
        else:
            cls_score = roi_head._bbox_forward(features, rois)["cls_score"]
            head = roi_head.bbox_head
        if getattr(head.loss_cls, "custom_activation", False):
            scores = head.loss_cls.get_activation(cls_score)
        else:
            scores = cls_score.softmax(-1)
        labels = torch.cat(labels)
        right = (scores.argmax(-1) == labels).double()
        if self.correct is None:
            self.correct = torch.zeros(head.num_classes, dtype=torch.double, device=right.device)
            self.total = torch.zeros_like(self.correct)
        self.correct.index_add_(0, labels, right)
        self.total.index_add_(0, labels, torch.ones_like(right))

    def after_val_epoch(self, runner: Runner, metrics: dict | None = None) -> None:
        if runner.iter < runner.max_iters or self.correct is None:
            return
        if is_distributed():
            all_reduce(self.correct)
            all_reduce(self.total)
        if is_main_process():
            write_json_atomic(
                Path(runner.work_dir) / CLASSIFICATION_ACCURACY_FILE,
                {"correct": self.correct.cpu().tolist(), "total": self.total.cpu().tolist()},
            )
