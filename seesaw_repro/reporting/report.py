"""A paper table beside its reproduction: each cell "reproduced (paper, delta)"."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable
from rich.text import Text

from seesaw_repro.data.imagenet_lt import CLASSIFICATION_COLUMNS
from seesaw_repro.evaluation.lvis_eval import LVIS_COLUMNS
from seesaw_repro.execution import provenance
from seesaw_repro.execution.runs import RunDir, server_results
from seesaw_repro.paper import configs
from seesaw_repro.paper.presets import SMOKE, SMOKE_EVAL_IMAGES, SMOKE_TRAIN_IMAGES
from seesaw_repro.paper.recipes import RecipeError, Table
from seesaw_repro.reporting import verdicts

# The columns of a task's tables, as metrics.json names them -> as the paper heads them.
METRICS = {
    "lvis": dict(zip(LVIS_COLUMNS, ("AP", "AP_r", "AP_c", "AP_f", "AP^box"), strict=True)),
    "imagenet_lt": dict(
        zip(CLASSIFICATION_COLUMNS, ("Overall", "Many", "Medium", "Few"), strict=True)
    ),
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
        raise RecipeError(
            f"the paper's numbers for {table.name} are missing: write {table.paper_csv} "
            "(README, 'Adding a table')"
        )
    frame = pd.read_csv(table.paper_csv, dtype=str, keep_default_na=False)
    needed = ["row", "note", *metrics_of(table)]
    absent = [column for column in needed if column not in frame.columns]
    if absent:
        raise RecipeError(f"{table.paper_csv} has no column {', '.join(absent)}")
    frame = frame.set_index("row")
    missing = [row.key for row in table.rows if row.key not in frame.index]
    if missing:
        raise RecipeError(f"{table.paper_csv} has no row for {', '.join(missing)}")
    recipe_rows = {row.key for row in table.rows}
    unexplained = [k for k in frame.index if k not in recipe_rows and not frame.at[k, "note"]]
    if unexplained:
        raise RecipeError(
            f"{table.paper_csv}: row(s) {', '.join(unexplained)} have no recipe row and no "
            "note saying why"
        )
    for metric in metrics_of(table):
        numbers = pd.to_numeric(frame[metric].replace("", math.nan), errors="coerce")
        bad = frame.index[numbers.isna() & (frame[metric] != "")]
        if len(bad):
            raise RecipeError(
                f"{table.paper_csv}: {metric} of row {bad[0]} is {frame.at[bad[0], metric]!r}, "
                "not a number (leave a cell the paper does not give empty, with a note)"
            )
        frame[metric] = numbers
    return frame


ENVIRONMENTS_JOIN = "; "


def compare(table: Table, preset: str, work_dir: Path, seeds: Iterable[int] = (0,)) -> pd.DataFrame:
    """One row per row of the paper's table: run id (of the first seed), state, and per
    metric the paper, reproduced (mean over the seeds done), its sd and n, the delta, and
    the effect against the row's baseline, paired by seed (verdicts.paired_effect) beside
    the paper's, with its verdict. A paper row without a recipe row (its setting unreadable,
    or a split the suite does not run) is listed with state "not run" and its note. The
    column "values" keeps each metric's {seed: value} (for claims); "environment" what the
    row's done runs ran on (provenance.summary, several joined by ENVIRONMENTS_JOIN)."""
    paper = paper_numbers(table)
    recipe_rows = {row.key: row for row in table.rows}
    seeds = list(seeds)
    records = []
    for key in paper.index:
        row = recipe_rows.get(key)
        note = paper.at[key, "note"]
        record = {"row": key, "run_id": "", "state": "not run", "batch": math.nan}
        environments: set[str] = set()
        values: dict[str, dict[int, float]] = {metric: {} for metric in metrics_of(table)}
        if row is not None:
            states, devices, server_files = [], set(), []
            for seed in seeds:
                spec = replace(row.spec, seed=seed)
                rid = configs.run_id(configs.resolve(spec, preset))
                run_dir = RunDir(work_dir, rid)
                result = run_dir.result() or {}
                record["run_id"] = record["run_id"] or rid
                states.append("done" if result else run_dir.status()["state"])
                for metric, value in result.get("metrics", {}).items():
                    if metric in values:
                        values[metric][seed] = value
                record["batch"] = result.get("batch") or record["batch"]
                if result:
                    environments.update(map(provenance.summary, run_dir.environments()))
                if "fps" in table.extra_metrics and result.get("speed_device"):
                    devices.add(result["speed_device"])
                if server_results(result):
                    states[-1] = "server"
                    server_files += server_results(result)
            record["state"] = _state(states)
            if devices:
                note = f"{note} FPS measured on {', '.join(sorted(devices))}."
            if server_files:
                note = f"{note} Result files for the LVIS server: {', '.join(server_files)}."
        record.update({col: paper.at[key, col] for col in table.columns})
        record["baseline"] = row.baseline if row is not None else ""
        for metric in metrics_of(table):
            found = list(values[metric].values())
            ours = sum(found) / len(found) if found else math.nan
            theirs = paper.at[key, metric]
            record[f"{metric}_paper"] = theirs
            record[f"{metric}_repro"] = ours
            record[f"{metric}_sd"] = pd.Series(found, dtype=float).std()
            record[f"{metric}_n"] = len(found)
            record[f"{metric}_delta"] = ours - theirs
        record["values"] = values
        record["environment"] = ENVIRONMENTS_JOIN.join(sorted(environments))
        record["note"] = note.strip()
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    return _with_effects(table, frame, paper)


def _state(states: list[str]) -> str:
    """One state for a row's runs at its seeds: theirs when all agree, else "k/n done"."""
    if len(set(states)) == 1:
        return states[0]
    return f"{sum(s in ('done', 'server') for s in states)}/{len(states)} done"


def _with_effects(table: Table, frame: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Each row's effect against its baseline row, per metric: ours (paired by seed, with
    its interval) and the paper's (row - baseline in results/paper), and the verdict."""
    values = dict(zip(frame.row, frame["values"], strict=True))
    for metric in metrics_of(table):
        pairs = [
            _versus(values, paper, row, base, metric) if base else (math.nan, verdicts.Effect(0))
            for row, base in zip(frame.row, frame.baseline, strict=True)
        ]
        papers, effects = [p for p, _ in pairs], [e for _, e in pairs]
        frame[f"{metric}_effect"] = [e.mean for e in effects]
        frame[f"{metric}_low"] = [e.low for e in effects]
        frame[f"{metric}_high"] = [e.high for e in effects]
        frame[f"{metric}_effect_n"] = [e.n for e in effects]
        frame[f"{metric}_paper_effect"] = papers
        frame[f"{metric}_verdict"] = [
            verdicts.verdict(p, e) if base else ""
            for p, e, base in zip(papers, effects, frame.baseline, strict=True)
        ]
    return frame


def _versus(
    values: dict, paper: pd.DataFrame, row: str, versus: str, metric: str
) -> tuple[float, verdicts.Effect]:
    """The paper's effect of `row` over `versus` on `metric` (at the one decimal the paper
    prints) and ours, paired by seed from `values` ({row: {metric: {seed: value}}})."""
    theirs = round(paper.at[row, metric] - paper.at[versus, metric], 1)
    return theirs, verdicts.paired_effect(values[row][metric], values[versus][metric])


def claims(table: Table, frame: pd.DataFrame) -> pd.DataFrame:
    """The paper's claims about a table (its recipe's [[claims]]) with our paired effect,
    from `compare`'s frame, and a verdict each. A claim on a row the suite does not run is
    "not run", with the row's note."""
    paper = paper_numbers(table)
    values = dict(zip(frame.row, frame["values"], strict=True))
    notes = dict(zip(frame.row, frame.note, strict=True))
    records = []
    for claim in table.claims:
        from_table, effect = _versus(values, paper, claim.row, claim.versus, claim.metric)
        paper_effect = claim.paper_effect if math.isnan(from_table) else from_table
        unrunnable = [k for k in (claim.row, claim.versus) if k not in {r.key for r in table.rows}]
        records.append(
            {
                "table": table.name,
                "claim": claim.says,
                "row": claim.row,
                "versus": claim.versus,
                "metric": claim.metric,
                "paper_effect": paper_effect,
                "effect": effect.mean,
                "low": effect.low,
                "high": effect.high,
                "n": effect.n,
                "ours": effect.text(),
                "verdict": verdicts.verdict(paper_effect, effect),
                "note": " ".join(f"{k}: {notes[k]}" for k in unrunnable if notes[k]),
            }
        )
    return pd.DataFrame.from_records(records, columns=CLAIM_COLUMNS)


CLAIM_COLUMNS = [
    "table",
    "claim",
    "row",
    "versus",
    "metric",
    "paper_effect",
    "effect",
    "low",
    "high",
    "n",
    "ours",
    "verdict",
    "note",
]


FORMATS = ("rich", "markdown", "latex", "csv")
PAPER_BATCH = {"lvis": 16, "imagenet_lt": 512}  # total batch of the paper's runs


SYMBOLS = {  # a verdict in a table cell
    "reproduced": "✓",
    "contradicted": "✗",
    "inconclusive": "?",
    "one seed": "",  # the cell's n=1 says it
    "not run": "",
    "no paper effect": "~",
}
LEGEND = (
    "Effects: ours - baseline, mean over seeds of the paired difference [95% t interval] n=seeds "
    "(the paper's effect); ✓ reproduced (interval excludes 0 on the paper's side), ✗ "
    "contradicted, ? inconclusive, ~ no paper effect to compare; n=1: one seed, a sign only."
)


VIEWS = ("auto", "absolute", "effects", "both")


def views(table: Table, preset: str, view: str = "auto") -> list[str]:
    """How a table is shown ("auto": the effects against its baselines on generated data,
    where absolute numbers say nothing; absolute numbers, then effects, on the paper's
    setup). A table without baselines has only its absolute numbers."""
    if view not in VIEWS:
        raise RecipeError(f"unknown --view {view!r}: use one of {', '.join(VIEWS)}")
    if not any(row.baseline for row in table.rows):
        return ["absolute"]
    if view == "auto":
        view = "both" if preset == "paper" else "effects"
    return ["absolute", "effects"] if view == "both" else [view]


def _cell(rec: dict, metric: str, figure: bool, markup: bool) -> str:
    ours, theirs, delta = (rec[f"{metric}_{k}"] for k in ("repro", "paper", "delta"))
    measured = verdicts.summary(rec["values"][metric])  # "" when not measured
    if figure:  # nothing to compare with
        return measured or rec["state"]
    paper = "n/a" if math.isnan(theirs) else f"{theirs:.1f}"
    if math.isnan(ours):
        return f"[dim]{rec['state']} ({paper})[/]" if markup else f"{rec['state']} ({paper})"
    if math.isnan(delta):
        return f"{measured} ({paper})"
    sign = f"{delta:+.1f}"
    if markup:
        sign = f"[{'green' if delta >= 0 else 'red'}]{sign}[/]"
    return f"{measured} ({paper}, {sign})"


def _effect_cell(rec: dict, metric: str, markup: bool) -> str:
    """A row's effect against its baseline beside the paper's; a baseline row's numbers."""
    if not rec["baseline"]:
        return _cell(rec, metric, figure=True, markup=markup)
    effect = verdicts.Effect(
        rec[f"{metric}_effect_n"],
        rec[f"{metric}_effect"],
        math.nan,
        rec[f"{metric}_low"],
        rec[f"{metric}_high"],
    )
    paper = rec[f"{metric}_paper_effect"]
    text = f"{effect.text()} ({'n/a' if math.isnan(paper) else f'{paper:+.1f}'})"
    verdict = rec[f"{metric}_verdict"]
    symbol = SYMBOLS[verdict]
    if markup and symbol:
        colour = {"reproduced": "green", "contradicted": "red"}.get(verdict, "yellow")
        symbol = f"[{colour}]{symbol}[/]"
    return f"{text} {symbol}".strip()


def grid(
    table: Table, frame: pd.DataFrame, markup: bool, view: str = "absolute"
) -> tuple[list[str], list[list[str]]]:
    """The table's header and cells, as the paper lays it out: absolute numbers, or each
    row's effect against its baseline (view "effects", with a "vs" column)."""
    effects = view == "effects"
    header = (["row"] if table.is_figure else []) + list(table.columns)
    header += (["vs"] if effects else []) + list(metrics_of(table).values()) + ["run"]
    text = escape if markup else str  # the recipe's and the paper's text is not markup
    rows = []
    for rec in frame.to_dict("records"):
        cells = ([rec["row"]] if table.is_figure else []) + [rec[c] for c in table.columns]
        cells += [rec["baseline"] or "baseline"] if effects else []
        cells = [text(cell) for cell in cells]
        if effects:
            cells += [_effect_cell(rec, m, markup) for m in metrics_of(table)]
        else:
            cells += [_cell(rec, m, table.is_figure, markup) for m in metrics_of(table)]
        rows.append([*cells, text(f"{rec['run_id'][:7]} {rec['state']}".strip())])
    return header, rows


def claim_grid(claims_frame: pd.DataFrame, with_table: bool) -> tuple[list[str], list[list[str]]]:
    """Claims as rows: what the paper says, the comparison, its effect and ours, verdict."""
    header = (["table"] if with_table else []) + ["claim", "rows", "paper", "ours", "verdict"]
    rows = []
    for rec in claims_frame.to_dict("records"):
        paper = "n/a" if math.isnan(rec["paper_effect"]) else f"{rec['paper_effect']:+.1f}"
        verdict = f"{rec['verdict']} ({rec['note']})" if rec["note"] else rec["verdict"]
        rows.append(
            ([rec["table"]] if with_table else [])
            + [
                rec["claim"],
                f"{rec['row']} vs {rec['versus']}, {rec['metric']}",
                paper,
                rec["ours"],
                verdict,
            ]
        )
    return header, rows


def verdict_counts(claims_frame: pd.DataFrame) -> str:
    """ "12 claims: 3 reproduced, 1 inconclusive, 8 not run" (verdicts in their order)."""
    counts = claims_frame.verdict.value_counts()
    found = [f"{counts[v]} {v}" for v in verdicts.VERDICTS if v in counts]
    return f"{len(claims_frame)} claims: {', '.join(found) or 'none'}"


def footnotes(table: Table, frame: pd.DataFrame, preset: str, view: str = "auto") -> list[str]:
    """What a reader must know to read the table: how cells read, row notes, and where the
    setup differed from the paper's."""
    notes = [
        "The paper shows this figure as a plot, with no numbers to compare."
        if table.is_figure
        else "Cells: reproduced, as mean ± sd (seeds) when several (paper, reproduced - paper); "
        "n/a: not readable in the paper."
    ]
    notes += [LEGEND] if "effects" in views(table, preset, view) else []
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
    rows_of: dict[str, list[str]] = {}
    for rec in frame.to_dict("records"):
        for environment in filter(None, rec["environment"].split(ENVIRONMENTS_JOIN)):
            rows_of.setdefault(environment, []).append(rec["row"])
    if len(rows_of) > 1:
        notes.append(
            f"The rows ran in {len(rows_of)} environments, which may move their numbers: "
            + "; ".join(f"{env} (rows {', '.join(rows)})" for env, rows in sorted(rows_of.items()))
            + "."
        )
    if preset.endswith(SMOKE):
        notes.append(
            f"Preset {preset!r}: smoke runs, the paper preset's runs cut to one epoch on "
            f"{SMOKE_TRAIN_IMAGES} training images and evaluated on {SMOKE_EVAL_IMAGES} val "
            "images; their numbers mean nothing, only that each run got through."
        )
    elif preset != "paper":
        notes.append(
            f"Preset {preset!r}: generated data and a small model trained from scratch on CPU; "
            "it checks the pipeline and the direction of effects, not the paper's values."
        )
    return notes


def _rich_table(title: str, caption: str, header: list[str], rows: list[list[str]]) -> RichTable:
    """A rich table of `rows`, whose cells may hold markup; title, caption and header are
    shown as written."""
    out = RichTable(title=Text(title), caption=Text(caption), show_lines=False)
    # cells wrap at spaces on a narrow screen; a column keeps its header's width (with
    # no_wrap, rich squeezed the short columns to nothing and cut the cells' paper effects)
    for name in header:
        out.add_column(Text(name), overflow="fold", min_width=len(name))
    out.columns[-1].style = "dim"
    for cells in rows:
        out.add_row(*cells)
    return out


def render(
    table: Table, frame: pd.DataFrame, preset: str, console: Console, view: str = "auto"
) -> None:
    """Print the comparison as rich tables (each of the table's views, then its claims),
    with its footnotes."""
    for shown in views(table, preset, view):
        effects = shown == "effects"
        title = table.title + (": effects against each row's baseline" if effects else "")
        header, rows = grid(table, frame, markup=True, view=shown)
        out = _rich_table(title, table.caption, header, rows)
        for column in out.columns:
            if str(column.header) in metrics_of(table).values():
                column.justify = "right"
        console.print(out)
    if table.claims:
        render_claims(claims(table, frame), console, title=f"What the paper says of {table.name}")
    for note in footnotes(table, frame, preset, view):
        style = "yellow" if note.startswith(("Preset", "Total batch")) else "dim"
        console.print(f"[{style}]{escape(note)}[/]")


def render_claims(claims_frame: pd.DataFrame, console: Console, title: str) -> None:
    """Print claims and their verdicts as a rich table, with the counts per verdict."""
    header, rows = claim_grid(claims_frame, with_table=claims_frame.table.nunique() > 1)
    rows = [[escape(cell) for cell in cells] for cells in rows]
    console.print(_rich_table(title, verdict_counts(claims_frame), header, rows))


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
    "±": r"$\pm$",
    "✗": r"$\times$",
}


def _latex_escape(text: str) -> str:
    return re.sub("|".join(map(re.escape, LATEX)), lambda m: LATEX[m.group()], text)


def format_text(
    frames: list[tuple[Table, pd.DataFrame]], preset: str, fmt: str, view: str = "auto"
) -> str:
    """Tables and their comparisons (`compare`) as Markdown, LaTeX table* floats (no
    package beyond LaTeX's own), each view then its claims, or one CSV of every column, with
    a `table` column."""
    if fmt == "csv":
        tidy = [frame.drop(columns="values").assign(table=table.name) for table, frame in frames]
        both = pd.concat(tidy, ignore_index=True)
        return both[["table", *[c for c in both.columns if c != "table"]]].to_csv(index=False)
    render_one = _text_renderer(fmt)
    parts = []
    for table, frame in frames:
        grids = [grid(table, frame, False, shown) for shown in views(table, preset, view)]
        if table.claims:
            grids.append(claim_grid(claims(table, frame), with_table=False))
        notes = footnotes(table, frame, preset, view)
        parts += [
            render_one(table.title, table.caption, *grid, notes if i == len(grids) - 1 else [])
            for i, grid in enumerate(grids)
        ]
    return "\n".join(parts)


def format_claims(claims_frame: pd.DataFrame, fmt: str) -> str:
    """Every claim and its verdict as Markdown, a LaTeX table* float or CSV."""
    if fmt == "csv":
        return claims_frame.to_csv(index=False)
    grid = claim_grid(claims_frame, with_table=True)
    return _text_renderer(fmt)("The paper's claims", verdict_counts(claims_frame), *grid, [])


def _text_renderer(fmt: str):  # noqa: ANN202 (one of the two renderers below)
    if fmt not in ("markdown", "latex"):
        raise RecipeError(f"unknown report format {fmt!r}: use one of {', '.join(FORMATS)}")
    return _markdown if fmt == "markdown" else _latex


def _markdown(
    title: str, caption: str, header: list[str], rows: list[list[str]], notes: list[str]
) -> str:
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join(" --- " for _ in header) + "|")
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join([*lines, "", caption, "", *(f"- {n}" for n in notes)]) + "\n"


def _latex(
    title: str, caption: str, header: list[str], rows: list[list[str]], notes: list[str]
) -> str:
    spec = "".join("p{5.5cm}" if h == "claim" else "l" for h in header)
    lines = [
        r"\begin{table*}[t]",
        r"\centering\scriptsize",
        rf"\caption{{{_latex_escape(title)}. {_latex_escape(caption)}}}",
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
