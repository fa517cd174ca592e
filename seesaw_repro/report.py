"""A paper table beside its reproduction: each cell "reproduced (paper, delta)"."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table as RichTable

from . import configs
from .recipes import RecipeError, Table
from .runs import RunDir

METRICS = ["AP", "AP_r", "AP_c", "AP_f", "AP_box"]
HEADERS = {"AP": "AP", "AP_r": "AP_r", "AP_c": "AP_c", "AP_f": "AP_f", "AP_box": "AP^box"}


def paper_numbers(table: Table) -> pd.DataFrame:
    """The paper's numbers for a table, indexed by row key; unreadable cells are NaN. A
    figure's rows have none (all NaN)."""
    if table.is_figure:
        frame = pd.DataFrame(index=pd.Index([row.key for row in table.rows], name="row"))
        for column in table.columns:
            frame[column] = ""
        for metric in METRICS:
            frame[metric] = math.nan
        frame["note"] = ""
        return frame
    if not table.paper_csv.exists():
        raise RecipeError(f"the paper's numbers for {table.name} are missing: {table.paper_csv}")
    frame = pd.read_csv(table.paper_csv, dtype=str, keep_default_na=False).set_index("row")
    for metric in METRICS:
        frame[metric] = pd.to_numeric(frame[metric].replace("", math.nan))
    return frame


def compare(table: Table, preset: str, work_dir: Path) -> pd.DataFrame:
    """One row per row of the paper's table: run id, state, and per metric the paper,
    reproduced, delta. A paper row without a recipe row (its setting unreadable, or a split
    the suite does not run) is listed with state "not run" and its note."""
    paper = paper_numbers(table)
    missing = [row.key for row in table.rows if row.key not in paper.index]
    if missing:
        raise RecipeError(f"{table.paper_csv} has no row for {', '.join(missing)}")
    recipe_rows = {row.key: row for row in table.rows}
    unexplained = [k for k in paper.index if k not in recipe_rows and not paper.at[k, "note"]]
    if unexplained:
        raise RecipeError(
            f"{table.paper_csv}: row(s) {', '.join(unexplained)} have no recipe row and no "
            "note saying why"
        )
    records = []
    for key in paper.index:
        row = recipe_rows.get(key)
        note = paper.at[key, "note"]
        if row is None:
            rid, state, measured = "", "not run", {}
        else:
            rid = configs.run_id(configs.resolve(row.spec, preset))
            run_dir = RunDir(work_dir, rid)
            state, measured = run_dir.status()["state"], run_dir.metrics() or {}
            server_files = run_dir.server_results()
            if server_files:
                state = "server"
                note = f"{note} Result files for the LVIS server: {', '.join(server_files)}."
        record = {"row": key, "run_id": rid, "state": state}
        record.update({col: paper.at[key, col] for col in table.columns})
        for metric in METRICS:
            ours = measured.get(metric, math.nan)
            theirs = paper.at[key, metric]
            record[f"{metric}_paper"] = theirs
            record[f"{metric}_repro"] = ours
            record[f"{metric}_delta"] = ours - theirs
        record["note"] = note.strip()
        records.append(record)
    return pd.DataFrame.from_records(records)


def _cell(ours: float, theirs: float, delta: float, state: str, figure: bool) -> str:
    if figure:  # nothing to compare with
        return f"[dim]{state}[/]" if math.isnan(ours) else f"{ours:.1f}"
    paper = "n/a" if math.isnan(theirs) else f"{theirs:.1f}"
    if math.isnan(ours):
        return f"[dim]{state} ({paper})[/]"
    if math.isnan(delta):
        return f"{ours:.1f} ({paper})"
    colour = "green" if delta >= 0 else "red"
    return f"{ours:.1f} ({paper}, [{colour}]{delta:+.1f}[/])"


def render(table: Table, frame: pd.DataFrame, preset: str, console: Console) -> None:
    """Print the comparison as a rich table, with footnotes for missing and tiny numbers."""
    out = RichTable(title=table.title, caption=table.caption, show_lines=False)
    if table.is_figure:
        out.add_column("row")
    for col in table.columns:
        out.add_column(col, justify="center")
    for metric in METRICS:
        out.add_column(HEADERS[metric], justify="right")
    out.add_column("run", style="dim")
    for rec in frame.to_dict("records"):
        cells = ([rec["row"]] if table.is_figure else []) + [rec[col] for col in table.columns]
        cells += [
            _cell(
                rec[f"{m}_repro"],
                rec[f"{m}_paper"],
                rec[f"{m}_delta"],
                rec["state"],
                table.is_figure,
            )
            for m in METRICS
        ]
        out.add_row(*cells, f"{rec['run_id']} {rec['state']}")
    console.print(out)
    if table.is_figure:
        console.print("The paper shows this figure as a plot, with no numbers to compare.")
    else:
        console.print(
            "Cells: reproduced (paper, reproduced - paper); n/a: not readable in the paper."
        )
    for rec in frame.to_dict("records"):
        if rec["note"]:
            console.print(f"[dim]Note on row {rec['row']}: {rec['note']}[/]")
    if preset != "paper":
        console.print(
            f"[yellow]Preset {preset!r}: generated data and a small model trained from scratch on "
            "CPU; it checks the pipeline and the direction of effects, not the paper's values.[/]"
        )
