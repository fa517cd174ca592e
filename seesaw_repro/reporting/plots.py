"""The paper's figures drawn from finished runs: PNG and PDF, sized for a paper column."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker

from seesaw_repro.errors import UserError
from seesaw_repro.execution.runs import RunDir
from seesaw_repro.files import read_json
from seesaw_repro.paper import configs, recipes
from seesaw_repro.run_folder import (
    CLASSIFICATION_ACCURACY_FILE,
    GRADIENT_STATS_FILE,
    PER_CATEGORY_FILE,
)

COLUMN_WIDTH_IN = 3.3  # one column of a two-column CVPR paper
GROUP_COLOURS = {"r": "#d62728", "c": "#ff7f0e", "f": "#2ca02c"}
GROUP_NAMES = {"r": "rare", "c": "common", "f": "frequent"}
BOX_CLASSIFIER = "roi_head.bbox_head.loss_cls"  # Mask R-CNN's; a cascade's first stage is [0]


def training_categories(train_ann: Path) -> list[dict]:
    """The categories of an LVIS train annotation file, most training instances first, each
    with its frequency group and instance count; index = the model's class index."""
    try:
        categories = json.loads(Path(train_ann).read_text())["categories"]
    except FileNotFoundError:
        raise UserError(f"the training annotations {train_ann} do not exist") from None
    ordered = sorted(categories, key=lambda c: c["id"])  # mmdet's class order: by id
    for index, category in enumerate(ordered):
        category["class_index"] = index
        if "instance_count" not in category:
            raise UserError(f"{train_ann}: category {category['id']} has no instance_count")
    return sorted(ordered, key=lambda c: -c["instance_count"])


def gradient_ratios(run_dir: Path) -> np.ndarray:
    """Per class, cumulative positive over negative gradient of the box classifier."""
    stats = read_json(Path(run_dir) / GRADIENT_STATS_FILE)
    if stats is None:
        raise UserError(
            f"{run_dir} has no {GRADIENT_STATS_FILE}: the run is not done, or was trained "
            "without gradient_stats = true"
        )
    heads = stats["heads"]
    head = heads.get(BOX_CLASSIFIER) or heads[sorted(heads)[0]]
    positive, negative = np.asarray(head["positive"]), np.asarray(head["negative"])
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(negative > 0, positive / negative, np.nan)


def plot_gradient_ratios(runs: dict[str, Path], train_ann: Path, out: Path) -> list[Path]:
    """Figure 3: per category, the ratio of cumulative positive to negative gradients, the
    categories sorted by training instances (most first), one panel per run (label -> run
    folder), log scale, rare / common / frequent marked. Writes `out`.png and `out`.pdf."""
    categories = training_categories(train_ann)
    order = [c["class_index"] for c in categories]
    groups = [c["frequency"] for c in categories]
    x = np.arange(len(order))
    fig, axes = plt.subplots(
        1, len(runs), figsize=(COLUMN_WIDTH_IN * len(runs), 2.2), sharey=True, squeeze=False
    )
    ratios = {label: gradient_ratios(run_dir)[order] for label, run_dir in runs.items()}
    shown = np.concatenate([r[np.isfinite(r) & (r > 0)] for r in ratios.values()])
    for ax, (label, ratio) in zip(axes[0], ratios.items(), strict=True):
        colours = [GROUP_COLOURS.get(g, "grey") for g in groups]
        # Bars from 1 (balanced) up or down: above 1, more positive gradient than negative.
        ax.bar(
            x, np.nan_to_num(ratio, nan=1.0) - 1, bottom=1, width=1.0, color=colours, linewidth=0
        )
        ax.axhline(1.0, color="black", linewidth=0.6, linestyle="--")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("categories, most training instances first", fontsize=7)
        ax.set_xlim(-0.5, len(x) - 0.5)
    for ax in axes[0]:  # after all panels: a shared axis's set_yscale resets its ticks
        ax.set_yscale("log")
        ax.set_ylim(min(shown.min(), 1) / 1.25, max(shown.max(), 1) * 1.25)
        ax.yaxis.set_major_locator(
            ticker.FixedLocator([0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1, 1.5, 2, 3, 5, 10])
        )
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.tick_params(which="both", labelsize=6)
    axes[0][0].set_ylabel("positive / negative gradient", fontsize=7)
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=GROUP_COLOURS[g]) for g in GROUP_COLOURS if g in groups
    ]
    fig.legend(
        handles,
        [GROUP_NAMES[g] for g in GROUP_COLOURS if g in groups],
        loc="upper right",
        fontsize=6,
        ncol=3,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return _save(fig, out)


def per_category_ap(run_dir: Path, iou_type: str = "segm") -> dict[int, float]:
    """A done run's AP per category id (-1: no ground truth in the evaluation)."""
    found = read_json(Path(run_dir) / PER_CATEGORY_FILE)
    if found is None:
        raise UserError(f"{run_dir} has no {PER_CATEGORY_FILE}: the run is not done")
    return {int(k): v for k, v in found[iou_type].items()}


def plot_per_category(panels: dict[str, dict[str, Path]], train_ann: Path, out: Path) -> list[Path]:
    """Figure 4: mask AP per category, categories by training instances (most first), one
    panel per setting (title -> method label -> run folder), a running mean over a window of
    2.5% of the categories so that the methods can be told apart, r/c/f bands shaded.
    Writes `out`.png and `out`.pdf."""
    categories = training_categories(train_ann)
    ids = [c["id"] for c in categories]
    groups = [c["frequency"] for c in categories]
    window = max(1, len(ids) // 40)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(COLUMN_WIDTH_IN * len(panels), 2.3), sharey=True, squeeze=False
    )
    for ax, (title, runs) in zip(axes[0], panels.items(), strict=True):
        for start, group in _group_spans(groups):
            ax.axvspan(
                start - 0.5,
                start + group[1] - 0.5,
                color=GROUP_COLOURS[group[0]],
                alpha=0.08,
                linewidth=0,
            )
        for label, run_dir in runs.items():
            found = per_category_ap(run_dir)
            ap = np.array([found.get(i, -1.0) for i in ids], dtype=float)
            ap[ap < 0] = np.nan  # no ground truth: not part of the mean
            smooth = _running_mean(100 * ap, window)
            ax.plot(np.arange(len(ids)), smooth, linewidth=1.0, label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("categories, most training instances first", fontsize=7)
        ax.set_xlim(-0.5, len(ids) - 0.5)
        ax.tick_params(which="both", labelsize=6)
    axes[0][0].set_ylabel(f"mask AP (running mean of {window})", fontsize=7)
    axes[0][0].legend(fontsize=6, frameon=False)
    fig.tight_layout()
    return _save(fig, out)


def _group_spans(groups: list[str]) -> list[tuple[int, tuple[str, int]]]:
    """(start, (group, length)) of each run of equal frequency groups."""
    spans: list[tuple[int, tuple[str, int]]] = []
    for i, group in enumerate(groups):
        if spans and spans[-1][1][0] == group:
            start, (_, length) = spans[-1]
            spans[-1] = (start, (group, length + 1))
        else:
            spans.append((i, (group, 1)))
    return spans


def _running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean over a centred window, ignoring NaN entries."""
    valid = ~np.isnan(values)
    kernel = np.ones(window)
    sums = np.convolve(np.where(valid, values, 0.0), kernel, mode="same")
    counts = np.convolve(valid.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def _save(fig: plt.Figure, out: Path) -> list[Path]:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in (".png", ".pdf"):
        path = out.with_suffix(suffix)
        fig.savefig(path, dpi=300)
        written.append(path)
    plt.close(fig)
    return written


def group_accuracy(run_dir: Path, train_ann: Path) -> dict[str, float]:
    """Per frequency group, the mean over its categories (those with val instances) of the
    box classifier's accuracy on ground-truth boxes, in percent."""
    found = read_json(Path(run_dir) / CLASSIFICATION_ACCURACY_FILE)
    if found is None:
        raise UserError(
            f"{run_dir} has no {CLASSIFICATION_ACCURACY_FILE}: the run is not done, or was "
            "trained without classification_accuracy = true"
        )
    correct, total = np.asarray(found["correct"]), np.asarray(found["total"])
    categories = training_categories(train_ann)
    accuracy: dict[str, float] = {}
    for group in GROUP_NAMES:
        index = [
            c["class_index"]
            for c in categories
            if c["frequency"] == group and total[c["class_index"]] > 0
        ]
        accuracy[group] = float(100 * np.mean(correct[index] / total[index])) if index else np.nan
    return accuracy


def plot_tail_accuracy(runs: dict[str, Path], train_ann: Path, out: Path) -> list[Path]:
    """Figure 1: per frequency group, the classification accuracy on ground-truth boxes
    (left) and the mask AP (right) of each run (label -> run folder), as grouped bars.
    Writes `out`.png and `out`.pdf."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(COLUMN_WIDTH_IN, 1.8))
    width = 0.8 / len(runs)
    x = np.arange(len(GROUP_NAMES))
    for k, (label, run_dir) in enumerate(runs.items()):
        accuracy = group_accuracy(run_dir, train_ann)
        metrics = RunDir.of(run_dir).metrics() or {}
        ap = [metrics.get(f"AP_{g}", np.nan) for g in GROUP_NAMES]
        offset = (k - (len(runs) - 1) / 2) * width
        left.bar(x + offset, [accuracy[g] for g in GROUP_NAMES], width, label=label)
        right.bar(x + offset, ap, width, label=label)
    for ax, name in ((left, "accuracy (%)"), (right, "mask AP")):
        ax.set_xticks(x, list(GROUP_NAMES), fontsize=6)
        ax.set_xlabel("rare, common, frequent", fontsize=6)
        ax.set_ylabel(name, fontsize=7)
        ax.tick_params(labelsize=6)
    left.legend(fontsize=6, frameon=False)
    fig.tight_layout()
    return _save(fig, out)


def figure_runs(figure: str, preset: str, work_dir: Path) -> dict[str, RunDir]:
    """A figure's row keys -> run folders (done or not)."""
    return {
        row.key: RunDir(work_dir, configs.run_id(configs.resolve(row.spec, preset)))
        for row in recipes.load_table(figure).rows
    }


FIGURE4_PANELS = {"mask": "Mask R-CNN", "cascade": "Cascade Mask R-CNN"}
FIGURE4_SAMPLERS = {"random": "random sampler", "rfs": "RFS"}
METHOD_LABELS = {"ce": "CE", "eql": "EQL", "bags": "BAGS", "seesaw": "Seesaw"}


def draw(
    figure: str, preset: str, work_dir: Path, train_ann: Path | None, out: Path
) -> tuple[list[Path], list[str]]:
    """Draw Figure 1, 3 or 4 from its runs into `out`.png and `out`.pdf: the files written
    and the rows left out. Figures 1 and 3 need both their runs done (else UserError naming
    the run); Figure 4 draws a panel per framework and sampler from the runs that are done
    and leaves the others out. `train_ann` orders the categories (None: the preset has no
    default data root, a UserError)."""
    if train_ann is None:
        raise UserError(f"preset {preset} has no default data root: give --data-root")
    figure = recipes.table_name(figure)
    number = int(figure.removeprefix("figure"))
    run_dirs = figure_runs(figure, preset, work_dir)
    if figure == "figure04":
        panels: dict[str, dict[str, Path]] = {}
        missing = []
        for key, run_dir in run_dirs.items():
            framework, sampler, method = key.split("_")
            if not run_dir.is_done():
                missing.append(key)
                continue
            title = f"{FIGURE4_PANELS[framework]}, {FIGURE4_SAMPLERS[sampler]}"
            panels.setdefault(title, {})[METHOD_LABELS[method]] = run_dir.path
        if not panels:
            raise UserError(
                f"no run of Figure 4 (preset {preset}) is done: run `seesaw repro figure4 "
                f"--preset {preset}` (its runs are Table 1's) first"
            )
        return plot_per_category(panels, train_ann, out), missing
    for key, run_dir in run_dirs.items():
        if not run_dir.is_done():
            raise UserError(
                f"the {METHOD_LABELS.get(key, key)} run of Figure {number} ({run_dir.run_id}, "
                f"preset {preset}) is {run_dir.status()['state']}, not done: run `seesaw repro "
                f"figure{number} --preset {preset}` first"
            )
    runs = {METHOD_LABELS.get(key, key): run_dir.path for key, run_dir in run_dirs.items()}
    plot = {"figure01": plot_tail_accuracy, "figure03": plot_gradient_ratios}[figure]
    return plot(runs, train_ann, out), []
