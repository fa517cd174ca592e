"""A paper table beside its reproduction: each cell "reproduced (paper, delta)"."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from . import configs
from .recipes import RecipeError, Table
from .runs import RunDir, server_results

# The columns of a task's tables, as metrics.json names them -> as the paper heads them.
METRICS = {
    "lvis": {"AP": "AP", "AP_r": "AP_r", "AP_c": "AP_c", "AP_f": "AP_f", "AP_box": "AP^box"},
    "imagenet_lt": {"top1": "Overall", "many": "Many", "medium": "Medium", "few": "Few"},
}
EXTRA_HEADERS = {"fps": "FPS"}


def metrics_of(table: Table) -> dict[str, str]:
    """A table's metric columns (as metrics.json names them -> the paper's headers)."""
    return {**METRICS[table.task], **{m: EXTRA_HEADERS[m] for m in table.extra_metrics}}


def paper_numbers(table: Table) -> pd.DataFrame:
    """The paper's numbers for a table, indexed by row key; unreadable cells are NaN. A
    figure's rows have none (all NaN)."""
    if table.is_figure:
        frame = pd.DataFrame(index=pd.Index([row.key for row in table.rows], name="row"))
        for column in table.columns:
            frame[column] = ""
        for metric in metrics_of(table):
            frame[metric] = math.nan
        frame["note"] = ""
        return frame
    if not table.paper_csv.exists():
        raise RecipeError(f"the paper's numbers for {table.name} are missing: {table.paper_csv}")
    frame = pd.read_csv(table.paper_csv, dtype=str, keep_default_na=False).set_index("row")
    for metric in metrics_of(table):
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
        batch = math.nan
        if row is None:
            rid, state, measured = "", "not run", {}
        else:
            rid = configs.run_id(configs.resolve(row.spec, preset))
            run_dir = RunDir(work_dir, rid)
            result = run_dir.result() or {}
            state = "done" if result else run_dir.status()["state"]
            measured, batch = result.get("metrics", {}), result.get("batch") or math.nan
            if "fps" in table.extra_metrics and result.get("speed_device"):
                note = f"{note} FPS measured on {result['speed_device']}.".strip()
            server_files = server_results(result)
            if server_files:
                state = "server"
                note = f"{note} Result files for the LVIS server: {', '.join(server_files)}."
        record = {"row": key, "run_id": rid, "state": state, "batch": batch}
        record.update({col: paper.at[key, col] for col in table.columns})
        for metric in metrics_of(table):
            ours = measured.get(metric, math.nan)
            theirs = paper.at[key, metric]
            record[f"{metric}_paper"] = theirs
            record[f"{metric}_repro"] = ours
            record[f"{metric}_delta"] = ours - theirs
        record["note"] = note.strip()
        records.append(record)
    return pd.DataFrame.from_records(records)


FORMATS = ("rich", "markdown", "latex", "csv")
PAPER_BATCH = {"lvis": 16, "imagenet_lt": 512}  # total batch of the paper's runs


def _cell(rec: dict, metric: str, figure: bool, markup: bool) -> str:
    ours, theirs, delta = (rec[f"{metric}_{k}"] for k in ("repro", "paper", "delta"))
    if figure:  # nothing to compare with
        return rec["state"] if math.isnan(ours) else f"{ours:.1f}"
    paper = "n/a" if math.isnan(theirs) else f"{theirs:.1f}"
    if math.isnan(ours):
        return f"[dim]{rec['state']} ({paper})[/]" if markup else f"{rec['state']} ({paper})"
    if math.isnan(delta):
        return f"{ours:.1f} ({paper})"
    sign = f"{delta:+.1f}"
    if markup:
        sign = f"[{'green' if delta >= 0 else 'red'}]{sign}[/]"
    return f"{ours:.1f} ({paper}, {sign})"


def _grid(table: Table, frame: pd.DataFrame, markup: bool) -> tuple[list[str], list[list[str]]]:
    """The table's header and cells, as the paper lays it out."""
    header = (["row"] if table.is_figure else []) + list(table.columns)
    header += list(metrics_of(table).values()) + ["run"]
    rows = []
    for rec in frame.to_dict("records"):
        cells = ([rec["row"]] if table.is_figure else []) + [rec[c] for c in table.columns]
        cells += [_cell(rec, m, table.is_figure, markup) for m in metrics_of(table)]
        rows.append([*cells, f"{rec['run_id'][:7]} {rec['state']}".strip()])
    return header, rows


def footnotes(table: Table, frame: pd.DataFrame, preset: str) -> list[str]:
    """What a reader must know to read the table: how cells read, row notes, and where the
    setup differed from the paper's."""
    notes = [
        "The paper shows this figure as a plot, with no numbers to compare."
        if table.is_figure
        else "Cells: reproduced (paper, reproduced - paper); n/a: not readable in the paper."
    ]
    notes += [f"Setup: {table.note}"] if table.note else []
    notes += [
        f"Note on row {rec['row']}: {rec['note']}"
        for rec in frame.to_dict("records")
        if rec["note"]
    ]
    paper_batch = PAPER_BATCH[table.task]
    other_batch = frame[frame.batch.notna() & (frame.batch != paper_batch)]
    if preset == "paper" and len(other_batch):
        batches = ", ".join(f"{r.row}: {int(r.batch)}" for r in other_batch.itertuples())
        notes.append(
            f"Total batch differs from the paper's {paper_batch} ({batches}); the learning "
            "rate was scaled linearly (mmengine's auto_scale_lr)."
        )
    if preset != "paper":
        notes.append(
            f"Preset {preset!r}: generated data and a small model trained from scratch on CPU; "
            "it checks the pipeline and the direction of effects, not the paper's values."
        )
    return notes


def render(table: Table, frame: pd.DataFrame, preset: str, console: Console) -> None:
    """Print the comparison as a rich table, with its footnotes."""
    out = RichTable(title=table.title, caption=table.caption, show_lines=False)
    header, rows = _grid(table, frame, markup=True)
    for name in header:
        metric = name in metrics_of(table).values()
        out.add_column(name, justify="right" if metric else "center")
    out.columns[-1].style = "dim"
    for cells in rows:
        out.add_row(*cells)
    console.print(out)
    for note in footnotes(table, frame, preset):
        style = "yellow" if note.startswith(("Preset", "Total batch")) else "dim"
        console.print(f"[{style}]{escape(note)}[/]")


LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\^{}",
    "✓": r"$\surd$",  # LaTeX's own check mark; \checkmark would need amssymb
    "τ": r"$\tau$",  # Table 10's tau-norm
}


def _latex_escape(text: str) -> str:
    return re.sub("|".join(map(re.escape, LATEX)), lambda m: LATEX[m.group()], text)


def format_text(frames: list[tuple[Table, pd.DataFrame]], preset: str, fmt: str) -> str:
    """Tables and their comparisons (`compare`) as Markdown, LaTeX table* floats (no
    package beyond LaTeX's own), or one CSV of every column, with a `table` column."""
    if fmt == "csv":
        tidy = [frame.assign(table=table.name) for table, frame in frames]
        both = pd.concat(tidy, ignore_index=True)
        return both[["table", *[c for c in both.columns if c != "table"]]].to_csv(index=False)
    if fmt not in ("markdown", "latex"):
        raise RecipeError(f"unknown report format {fmt!r}: use one of {', '.join(FORMATS)}")
    render_one = _markdown if fmt == "markdown" else _latex
    return "\n".join(
        render_one(table, *_grid(table, frame, markup=False), footnotes(table, frame, preset))
        for table, frame in frames
    )


def _markdown(table: Table, header: list[str], rows: list[list[str]], notes: list[str]) -> str:
    lines = [f"**{table.title}**", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join(" --- " for _ in header) + "|")
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join([*lines, "", table.caption, "", *(f"- {n}" for n in notes)]) + "\n"


def _latex(table: Table, header: list[str], rows: list[list[str]], notes: list[str]) -> str:
    metrics = len(metrics_of(table))
    spec = "l" * (len(header) - metrics - 1) + "r" * metrics + "l"
    lines = [
        r"\begin{table*}[t]",
        r"\centering\scriptsize",
        rf"\caption{{{_latex_escape(table.title)}. {_latex_escape(table.caption)}}}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\hline",
        " & ".join(_latex_escape(h) for h in header) + r" \\",
        r"\hline",
        *(" & ".join(_latex_escape(c) for c in r) + r" \\" for r in rows),
        r"\hline",
        r"\end{tabular}",
        *(rf"\par {_latex_escape(n)}" for n in notes),
        r"\end{table*}",
    ]
    return "\n".join(lines) + "\n"
