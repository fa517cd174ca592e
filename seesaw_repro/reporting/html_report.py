"""`seesaw report --format html`: one self-contained page with every table, its effects and
verdicts, the paper's claims, the figures whose runs are done and a per-run appendix."""

from __future__ import annotations

import base64
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined

from seesaw_repro.errors import UserError
from seesaw_repro.execution.runs import PlannedRun, RunDir
from seesaw_repro.paper.recipes import Table
from seesaw_repro.reporting import plots, report, verdicts

TEMPLATE = "report.html.j2"


def _slug(text: str) -> str:
    return text.replace(" ", "-")


def _grid_view(table: Table, frame: pd.DataFrame, view: str) -> dict:
    """One view of a table (report.grid's cells), each cell with a CSS class: an effect
    cell carries its verdict's."""
    header, rows = report.grid(table, frame, markup=False, view=view)
    metrics = list(report.metrics_of(table))
    first_metric = len(header) - len(metrics) - 1
    cells = []
    for rec, row in zip(frame.to_dict("records"), rows, strict=True):
        classes = [""] * len(row)
        for k, metric in enumerate(metrics):
            verdict = rec[f"{metric}_verdict"] if view == "effects" else ""
            classes[first_metric + k] = f"num v-{_slug(verdict)}" if verdict else "num"
        classes[-1] = f"run s-{_slug(rec['state'])}"
        cells.append([{"text": t, "cls": c} for t, c in zip(row, classes, strict=True)])
    name = "Effects against each row's baseline" if view == "effects" else "Absolute numbers"
    return {"name": name, "header": header, "rows": cells}


def _claims_view(claims: pd.DataFrame) -> dict:
    header, rows = report.claim_grid(claims, with_table=False)
    cells = [
        [{"text": t, "cls": ""} for t in row[:-1]]
        + [{"text": row[-1], "cls": f"v-{_slug(verdict)}"}]
        for row, verdict in zip(rows, claims.verdict, strict=True)
    ]
    return {"header": header, "rows": cells}


def _figure(table: Table, preset: str, work_dir: Path, train_ann: Path | None) -> dict:
    """A figure drawn from its done runs as PNG data, or why it is not drawn."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            out = Path(folder) / table.name
            written, missing = plots.draw(table.name, preset, work_dir, train_ann, out)
        except UserError as error:
            return {"png": None, "why_not": str(error), "missing": []}
        png = base64.b64encode(written[0].read_bytes()).decode("ascii")
    return {"png": png, "why_not": "", "missing": missing}


def _appendix(planned: list[PlannedRun], work_dir: Path, out_dir: Path) -> list[dict]:
    """Every planned run: its rows, seed, state, config (a path relative to the page), times
    and host."""
    entries = []
    for run in planned:
        run_dir = RunDir(work_dir, run.run_id)
        status = run_dir.status()
        config = run_dir.config_file
        entries.append(
            {
                "run_id": run.run_id,
                "rows": ", ".join(run.rows),
                "seed": run.spec.seed,
                "state": status["state"],
                "state_class": _slug(status["state"]),
                "config": os.path.relpath(config, out_dir) if config.exists() else "",
                "started": _when(status.get("started")),
                "ended": _when(status.get("ended")),
                "host": status.get("host", ""),
            }
        )
    return entries


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp)) if stamp else ""


def render(
    frames: list[tuple[Table, pd.DataFrame]],
    planned: list[PlannedRun],
    preset: str,
    seeds: list[int],
    work_dir: Path,
    train_ann: Path | None,
    out_dir: Path,
    view: str = "auto",
) -> str:
    """The page for `frames` (tables with report.compare's frames): a summary of verdicts
    per table, each table's views, claims, footnotes and figure, and an appendix of the
    tables' `planned` runs (runs.plan_tables).
    Config links are relative to `out_dir`, where the page is written; the figures' categories
    come from `train_ann` (None: the figures say why they are not drawn)."""
    sections, summary, environments = [], [], set()
    for table, frame in frames:
        claims = report.claims(table, frame) if table.claims else None
        counts = claims.verdict.value_counts().to_dict() if claims is not None else {}
        states = list(frame.state)
        summary.append(
            {
                "name": table.name,
                "title": table.title,
                "counts": [counts.get(v, 0) for v in verdicts.VERDICTS],
                "done": sum(s in ("done", "server") for s in states),
                "rows": sum(s != "not run" for s in states),
            }
        )
        for joined in frame.environment:
            environments.update(filter(None, joined.split(report.ENVIRONMENTS_JOIN)))
        sections.append(
            {
                "name": table.name,
                "title": table.title,
                "caption": table.caption,
                "paper_caption": table.paper_caption,
                "views": [_grid_view(table, frame, v) for v in report.views(table, preset, view)],
                "claims": _claims_view(claims) if claims is not None else None,
                "counts": report.verdict_counts(claims) if claims is not None else "",
                "notes": report.footnotes(table, frame, preset, view),
                "figure": _figure(table, preset, work_dir, train_ann) if table.is_figure else None,
            }
        )
    environment = Environment(
        loader=PackageLoader("seesaw_repro.reporting"), autoescape=True, undefined=StrictUndefined
    )
    return environment.get_template(TEMPLATE).render(
        preset=preset,
        seeds=", ".join(map(str, seeds)),
        generated=time.strftime("%Y-%m-%d %H:%M %Z"),
        environments=sorted(environments),
        verdict_names=[_slug(v) for v in verdicts.VERDICTS],
        verdicts=verdicts.VERDICTS,
        summary=summary,
        sections=sections,
        runs=_appendix(planned, work_dir, out_dir),
        legend=report.LEGEND,
    )
