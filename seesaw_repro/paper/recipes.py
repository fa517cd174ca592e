"""Recipes: what each table of the paper runs, read from recipes/tableNN.toml.

A recipe has table-wide `defaults` and `rows`; each row names only what differs from the
defaults (or, with `cumulative = true`, from the row before it), or is another recipe's row
(`same_as = "table01:mask_random_ce"`: the same spec, so the same run). Every key must be a
field of the task's spec (RunSpec for the LVIS tables, ClassificationSpec for `task =
"imagenet_lt"`), so a typo is an error, not a silent default.
"""

from __future__ import annotations

import csv
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from seesaw_repro.errors import UserError
from seesaw_repro.paper.classification_runs import TASK as CLASSIFICATION
from seesaw_repro.paper.classification_runs import ClassificationSpec
from seesaw_repro.paper.methods import RunSpec, SpecError

REPO_ROOT = Path(__file__).resolve().parents[2]  # seesaw_repro/paper/recipes.py
RECIPE_DIR = REPO_ROOT / "recipes"
PAPER_DIR = REPO_ROOT / "results" / "paper"
ROW_META_KEYS = {"key", "same_as", "baseline"}
CLAIM_KEYS = {"says", "row", "versus", "metric", "paper_effect"}


class RecipeError(UserError):
    """A recipe file is missing or malformed."""


@dataclass(frozen=True)
class Row:
    """One row of a paper table: its key (as in results/paper) and what it runs."""

    key: str
    spec: RunSpec | ClassificationSpec
    baseline: str = ""  # the row key its effects are measured against ("" = none)


@dataclass(frozen=True)
class Claim:
    """What the paper's text says of its table: row vs versus on a metric. Its effect is
    the table's (row - versus in results/paper); where a cell is unreadable, the text's
    number (paper_effect), else none."""

    says: str  # the paper's words, with where they stand
    row: str
    versus: str
    metric: str
    paper_effect: float = math.nan


@dataclass(frozen=True)
class Table:
    """A paper table: its rows and how the report lays it out."""

    name: str  # "table02"
    title: str
    caption: str
    columns: list[str]  # descriptive columns copied from the paper's CSV
    rows: list[Row]
    task: str = "lvis"  # or "imagenet_lt" (Tables 10-11)
    extra_metrics: tuple[str, ...] = ()  # beyond the task's, e.g. ("fps",) in Table 13
    note: str = ""  # a reading of the paper the report states under the table
    claims: tuple[Claim, ...] = ()
    paper_caption: str = ""  # a figure's caption as the paper prints it (the HTML report's)

    @property
    def paper_csv(self) -> Path:
        """The paper's numbers for this table (a figure has none)."""
        return PAPER_DIR / f"{self.name}.csv"

    @property
    def is_figure(self) -> bool:
        """A figure of the paper: a plot, with no numbers to compare against."""
        return self.name.startswith("figure")


def known_tables(recipe_dir: Path | None = None) -> list[str]:
    """Names of the tables that have a recipe, e.g. ["table02"]."""
    return sorted(p.stem for p in (recipe_dir or RECIPE_DIR).glob("table*.toml"))


def known_figures(recipe_dir: Path | None = None) -> list[str]:
    """Names of the figures that have a recipe, e.g. ["figure03"]."""
    return sorted(p.stem for p in (recipe_dir or RECIPE_DIR).glob("figure*.toml"))


def table_name(name: str) -> str:
    """Normalise "table2", "Table 2", "2" to "table02", and "figure3", "fig3" to "figure03"."""
    match = re.fullmatch(r"(table|figure|fig)?\s*0*(\d+)", name.strip().lower())
    if not match:
        raise RecipeError(f"{name!r} is not a table or figure name; write it as table2 or figure3")
    kind = "figure" if match.group(1) in ("figure", "fig") else "table"
    return f"{kind}{int(match.group(2)):02d}"


def load_table(name: str, recipe_dir: Path | None = None, _referrers: tuple = ()) -> Table:
    """Read and check the recipe of one table (from recipes/ unless `recipe_dir` is given)."""
    recipe_dir = recipe_dir or RECIPE_DIR
    stem = table_name(name)
    if stem in _referrers:
        raise RecipeError(f"same_as rows refer in a circle: {' -> '.join((*_referrers, stem))}")
    path = recipe_dir / f"{stem}.toml"
    if not path.exists():
        names = known_tables(recipe_dir) + known_figures(recipe_dir)
        known = ", ".join(re.sub(r"0*(\d+)$", r"\1", t) for t in names)
        raise RecipeError(f"no recipe for {name!r} ({path} is missing); recipes: {known}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{path}: not valid TOML ({err})") from err
    for key in ("title", "rows"):
        if key not in data:
            raise RecipeError(f"{path}: missing top-level key {key!r}")
    _check_types(path, data)
    task = data.get("task", "lvis")
    if task not in ("lvis", CLASSIFICATION):
        raise RecipeError(f"{path}: task {task!r} is not 'lvis' or {CLASSIFICATION!r}")
    spec_type = ClassificationSpec if task == CLASSIFICATION else RunSpec
    allowed = spec_type.field_names()
    defaults = data.get("defaults", {})
    _check_keys(path, "[defaults]", defaults, allowed)
    # Table 12 adds one thing per row: with `cumulative = true`, a row starts from the
    # settings of the row before it, not from the defaults alone.
    cumulative = data.get("cumulative", False)
    table_baseline = data.get("baseline", "")
    base, rows, seen = defaults, [], set()
    for index, row in enumerate(data["rows"], start=1):
        where = f"row {index}"
        if "key" not in row:
            raise RecipeError(f"{path}: {where} has no 'key'")
        if not isinstance(row["key"], str) or not re.fullmatch(r"[\w.+-]+", row["key"]):
            raise RecipeError(
                f"{path}: {where}'s key must be a word (letters, digits, _ . + -), "
                f"not {row['key']!r}"
            )
        if row["key"] in seen:
            raise RecipeError(f"{path}: {where} repeats key {row['key']!r}")
        seen.add(row["key"])
        settings = {k: v for k, v in row.items() if k not in ROW_META_KEYS}
        where = f"{where} ({row['key']})"
        _check_keys(path, where, settings, allowed)
        if "same_as" in row:
            if settings:
                raise RecipeError(f"{path}: {where} has same_as, so it may set nothing else")
            spec = _same_as(path, where, row["same_as"], task, recipe_dir, (*_referrers, stem))
        else:
            try:
                spec = spec_type(**{**base, **settings})
            except SpecError as err:
                raise RecipeError(f"{path}: {where}: {err}") from err
        if cumulative:
            base = {**base, **settings}
        baseline = row.get("baseline", table_baseline)
        rows.append(
            Row(key=row["key"], spec=spec, baseline="" if baseline == row["key"] else baseline)
        )
    keys = [row.key for row in rows]
    for row in rows:
        if row.baseline and row.baseline not in keys:
            raise RecipeError(f"{path}: row {row.key}'s baseline {row.baseline!r} is not a row")
    return Table(
        name=stem,
        title=data["title"],
        caption=data.get("caption", ""),
        columns=list(data.get("columns", [])),
        rows=rows,
        task=task,
        extra_metrics=tuple(_extra_metrics(path, data.get("extra_metrics", []))),
        note=data.get("note", ""),
        claims=tuple(_claims(path, data.get("claims", []), keys, stem)),
        paper_caption=data.get("paper_caption", ""),
    )


# The top-level keys of a recipe and their types; a row's keys are its spec's fields.
TOP_LEVEL = {
    "title": str,
    "caption": str,
    "paper_caption": str,
    "note": str,
    "task": str,
    "baseline": str,
    "cumulative": bool,
    "columns": list,
    "extra_metrics": list,
    "claims": list,
    "defaults": dict,
    "rows": list,
}


def _check_types(path: Path, data: dict) -> None:
    """A RecipeError for a top-level key that is unknown or of the wrong type, or rows that
    are not a non-empty list of tables ([[rows]])."""
    _check_keys(path, "the top level", data, set(TOP_LEVEL))
    for key, value in data.items():
        if not isinstance(value, TOP_LEVEL[key]):
            kind = {str: "a string", bool: "true or false", list: "a list", dict: "a table"}
            raise RecipeError(f"{path}: {key} must be {kind[TOP_LEVEL[key]]}, not {value!r}")
    if not data["rows"] or not all(isinstance(row, dict) for row in data["rows"]):
        raise RecipeError(f"{path}: rows must be one or more [[rows]] tables, each with a key")


def _claims(path: Path, entries: list, keys: list[str], stem: str) -> list[Claim]:
    """A recipe's [[claims]], checked: every key known, rows of the recipe or of the
    paper's table (a row the suite cannot run makes its claim "not run")."""
    paper_csv = PAPER_DIR / f"{stem}.csv"
    paper_rows = []
    if paper_csv.exists():
        with open(paper_csv, newline="") as f:
            paper_rows = [line["row"] for line in csv.DictReader(f)]
    claims = []
    for index, entry in enumerate(entries, start=1):
        where = f"{path}: claim {index}"
        if not isinstance(entry, dict) or not {"says", "row", "versus", "metric"} <= set(entry):
            raise RecipeError(f"{where} needs says, row, versus and metric")
        _check_keys(path, f"claim {index}", entry, CLAIM_KEYS)
        for name in ("row", "versus"):
            if entry[name] not in keys and entry[name] not in paper_rows:
                raise RecipeError(f"{where}: {name} {entry[name]!r} is not a row of {stem}")
        claims.append(Claim(**entry))
    return claims


def _same_as(
    path: Path, where: str, reference: str, task: str, recipe_dir: Path, referrers: tuple
) -> RunSpec | ClassificationSpec:
    """The spec of the row `reference` ("table01:mask_random_ce") names."""
    name, _, key = str(reference).partition(":")
    other = load_table(name, recipe_dir, referrers)
    specs = {row.key: row.spec for row in other.rows}
    if key not in specs or other.task != task:
        raise RecipeError(
            f"{path}: {where}: same_as {reference!r} names no {task} row; "
            f"{other.name}'s rows: {', '.join(specs)}"
        )
    return specs[key]


EXTRA_METRICS = {"fps"}  # inference speed (hooks.InferenceSpeedHook)


def _extra_metrics(path: Path, names: list) -> list[str]:
    unknown = sorted(set(names) - EXTRA_METRICS)
    if unknown:
        raise RecipeError(
            f"{path}: extra_metrics has unknown {', '.join(map(str, unknown))}; "
            f"known: {', '.join(sorted(EXTRA_METRICS))}"
        )
    return list(names)


def _check_keys(path: Path, where: str, settings: dict, allowed: set[str]) -> None:
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise RecipeError(
            f"{path}: {where} sets unknown key(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
