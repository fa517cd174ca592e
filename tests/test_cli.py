"""The `seesaw` command as a user meets it: help texts and one-line errors with exit code 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from seesaw_repro.files import write_text_atomic
from seesaw_repro.paper import presets, recipes

runner = CliRunner()


@pytest.mark.parametrize(
    "args,expected",
    [
        ([], ["repro", "report", "plan", "config", "data"]),
        (["plan"], ["--preset", "all"]),
        (["config"], ["--preset", "--data-root", "--out", "tools/train.py"]),
        (["repro"], ["--preset", "--work-dir", "--data-root", "--jobs"]),
        (["report"], ["--preset", "--work-dir"]),
        (["data", "synth"], ["--out", "--seed", "LVIS"]),
    ],
)
def test_every_command_explains_itself(args, expected):
    result = runner.invoke(app, [*args, "--help"], terminal_width=200)
    assert result.exit_code == 0
    for word in expected:
        assert word in result.output


def _seesaw(*args, cwd):
    script = Path(sys.executable).parent / "seesaw"
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_unknown_table_is_one_line_and_exit_2(tmp_path):
    result = _seesaw("repro", "table99", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "table99" in lines[0] and "table2" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "seesaw-work").exists()


def test_missing_data_root_is_one_line_and_exit_2(tmp_path):
    result = _seesaw("repro", "table2", "--data-root", str(tmp_path / "nope"), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "does not exist" in lines[0] and "seesaw data synth" in lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("dry_run", [("--dry-run",), ()])
def test_missing_test_dev_files_stop_the_plan_before_anything_runs(
    tmp_path, dry_run, pretrained_cache
):
    data = tmp_path / "lvis"
    for folder in ("annotations", "train2017", "val2017"):
        (data / folder).mkdir(parents=True)
    for split in ("train", "val"):
        (data / "annotations" / f"lvis_v1_{split}.json").write_text("{}")
    args = ("repro", "table1", "--preset", "paper", "--data-root", str(data), *dry_run)
    result = _seesaw(*args, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(data) in lines[0]
    assert "annotations/lvis_v1_image_info_test_dev.json, test2017" in lines[0]
    assert result.stdout == "" and not (tmp_path / "seesaw-work").exists()
    # Table 2 has no test-dev row: the same data root is enough for it
    result = _seesaw(
        "repro", "table2", "--preset", "paper", "--data-root", str(data), "--dry-run", cwd=tmp_path
    )
    assert result.returncode == 0 and result.stdout.count("trains from the start") == 6


@pytest.mark.parametrize(
    "args,expected",
    [
        (("status", "table2", "--work-dir", "afile"), "--work-dir afile is a file, not a folder"),
        (("plan", "[red]table2"), "'[red]table2' is not a table or figure name"),  # not markup
        (("plan", "table2", "--seeds", "x"), "--seeds 'x': give a count"),
        (("report", "table2", "--view", "wide"), "unknown --view 'wide'"),
        (
            ("config", "65c306", "--out", "no/such/c.py"),
            "--out no/such/c.py: the folder no/such does not exist",
        ),
        (("repro", "table2", "--work-dir", "/proc/w"), "No such file or directory: /proc/w"),
        (("data", "synth", "--out", "afile"), "Not a directory: afile/train2017"),
        (("report", "table2", "--out", "."), "--out . is a folder: give a file name"),
        (("eval", "--ann", "garbage", "dets.json"), "garbage is not an LVIS annotation file"),
        (("eval", "--ann", "ann.json", "."), "the detection file . does not exist or is a folder"),
        (("eval", "--ann", "info.json", "dets.json"), "info.json has no annotations"),
        (("eval", "--ann", "ann.json", "null.json"), "every score must be a finite number, not"),
        (("eval", "--ann", "ann.json", "dets.json"), "a detection's segmentation is not a mask"),
        (
            ("eval", "--ann", "ann.json", "str.json"),
            "every image_id must be a whole number, not '1'",
        ),
        (("repro", "t[/x]", "--work-dir", "w[/x]"), "'t[/x]' is not a table or figure name"),
    ],
)
def test_bad_input_is_one_line_with_the_users_text(tmp_path, args, expected):
    (tmp_path / "afile").write_text("")
    (tmp_path / "garbage").write_bytes(bytes(range(256)))
    image = {"id": 1, "height": 8, "width": 8}
    category = {"id": 1, "frequency": "r", "name": "a"}
    box = {"bbox": [0, 0, 4, 4], "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]}
    ann = {"images": [image], "categories": [category]}
    annotation = {"id": 1, "image_id": 1, "category_id": 1, "area": 16, **box}
    (tmp_path / "ann.json").write_text(json.dumps({**ann, "annotations": [annotation]}))
    (tmp_path / "info.json").write_text(json.dumps({**ann, "annotations": []}))
    detection = {"image_id": 1, "category_id": 1, "score": 0.5, **box}
    for name, change in [("dets", {}), ("null", {"score": None}), ("str", {"image_id": "1"})]:
        (tmp_path / f"{name}.json").write_text(json.dumps([{**detection, **change}]))
    result = _seesaw(*args, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {expected}")


def test_paths_are_printed_as_written_not_as_markup(tmp_path):
    (tmp_path / "c[").mkdir()
    result = _seesaw("config", "287935fb", "--out", "c[/x][bold].py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("wrote c[/x][bold].py")
    assert (tmp_path / "c[" / "x][bold].py").is_file()


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(IsADirectoryError):
        write_text_atomic(tmp_path / "out", "text")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_unknown_preset_is_exit_2(tmp_path):
    result = runner.invoke(
        app, ["report", "table2", "--preset", "huge", "--work-dir", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "unknown preset 'huge'" in result.output


def test_malformed_recipe_names_file_row_and_key(tmp_path, monkeypatch):
    (tmp_path / "table02.toml").write_text(
        'title = "t"\n[defaults]\nsampler = "rfs"\n[[rows]]\nkey = "a"\nmitigaton = true\n'
    )
    monkeypatch.setattr(recipes, "RECIPE_DIR", tmp_path)
    result = runner.invoke(
        app, ["report", "table2", "--work-dir", str(tmp_path)], terminal_width=300
    )
    assert result.exit_code == 2
    assert "table02.toml" in result.output and "mitigaton" in result.output
    assert "row 1 (a)" in result.output


def test_bad_value_in_recipe_is_exit_2(tmp_path, monkeypatch):
    (tmp_path / "table02.toml").write_text(
        'title = "t"\n[[rows]]\nkey = "a"\nsampler = "uniform"\n'
    )
    monkeypatch.setattr(recipes, "RECIPE_DIR", tmp_path)
    result = runner.invoke(app, ["report", "2", "--work-dir", str(tmp_path)], terminal_width=300)
    assert result.exit_code == 2
    assert "sampler = 'uniform'" in result.output


@pytest.mark.parametrize(
    "recipe,expected",
    [
        ('[defaults]\nq = "abc"\n[[rows]]\nkey = "a"', "row 1 (a): q must be a number >= 0"),
        ('[[rows]]\nkey = "a"\nq = -1', "row 1 (a): q must be >= 0 and finite, not -1"),
        ('[[rows]]\nkey = "a"\ntau = 0', "tau must be > 0"),
        ('[[rows]]\nkey = "a"\nseed = 1.5', "seed must be a whole number >= 0, not 1.5"),
        ('[[rows]]\nkey = "a"\nsampler = 1', "sampler must be a string, not 1"),
        ("[[rows]]\nkey = 5", "row 1's key must be a word"),
        ("rows = []", "rows must be one or more [[rows]] tables"),
        ('rows = "abc"', "rows must be a list, not 'abc'"),
        ('caption = 5\n[[rows]]\nkey = "a"', "caption must be a string, not 5"),
        ('colour = 1\n[[rows]]\nkey = "a"', "the top level sets unknown key(s) colour"),
        ('[defaults]\nmitigaton = true\n[[rows]]\nkey = "a"', "[defaults] sets unknown key"),
    ],
)
def test_recipe_of_wrong_type_is_one_line_before_anything_runs(
    tmp_path, monkeypatch, recipe, expected
):
    (tmp_path / "table77.toml").write_text(f'title = "t"\n{recipe}\n')
    monkeypatch.setattr(recipes, "RECIPE_DIR", tmp_path)
    result = runner.invoke(app, ["plan", "table77"], terminal_width=400)
    assert result.exit_code == 2
    assert expected in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "csv,expected",
    [
        (None, "the paper's numbers for table77 are missing: write"),
        ("row,AP,note\na,1,\n", "has no column AP_r"),
        ("row,AP,AP_r,AP_c,AP_f,AP_box,note\nb,1,2,3,4,5,\n", "has no row for a"),
        ("row,AP,AP_r,AP_c,AP_f,AP_box,note\na,1,x,3,4,5,\n", "AP_r of row a is 'x'"),
    ],
)
def test_repro_checks_the_papers_numbers_before_training(tmp_path, monkeypatch, csv, expected):
    (tmp_path / "table77.toml").write_text('title = "t"\n[[rows]]\nkey = "a"\n')
    if csv is not None:
        (tmp_path / "table77.csv").write_text(csv)
    monkeypatch.setattr(recipes, "RECIPE_DIR", tmp_path)
    monkeypatch.setattr(recipes, "PAPER_DIR", tmp_path)
    work = tmp_path / "work"
    result = runner.invoke(app, ["repro", "table77", "--work-dir", str(work)], terminal_width=400)
    assert result.exit_code == 2 and expected in result.output
    assert not work.exists()  # nothing generated, nothing trained


@pytest.mark.parametrize(
    "row,expected",
    [
        ('same_as = "table02:b"\nsampler = "random"', "has same_as, so it may set nothing else"),
        ('same_as = "table02:zz"', "same_as 'table02:zz' names no lvis row; table02's rows: b"),
        ('same_as = "figure09:a"', "same_as rows refer in a circle: figure09 -> figure09"),
        ('same_as = "table77:a"', "no recipe for 'table77'"),
    ],
)
def test_bad_same_as_row_is_one_line_and_exit_2(tmp_path, monkeypatch, row, expected):
    (tmp_path / "table02.toml").write_text('title = "t"\n[[rows]]\nkey = "b"\n')
    (tmp_path / "figure09.toml").write_text(f'title = "f"\n[[rows]]\nkey = "a"\n{row}\n')
    monkeypatch.setattr(recipes, "RECIPE_DIR", tmp_path)
    result = runner.invoke(app, ["plan", "figure9"], terminal_width=400)
    assert result.exit_code == 2
    assert expected in result.output and len(result.output.strip().splitlines()) == 1


def test_same_as_row_is_the_other_recipes_row(tmp_path):
    (tmp_path / "table02.toml").write_text(
        'title = "t"\n[defaults]\nsampler = "random"\n[[rows]]\nkey = "b"\nq = 1.5\n'
    )
    (tmp_path / "figure09.toml").write_text(
        'title = "f"\n[[rows]]\nkey = "a"\nsame_as = "table02:b"\n'
    )
    figure = recipes.load_table("figure9", tmp_path)
    assert figure.rows[0].spec == recipes.load_table("table2", tmp_path).rows[0].spec
    assert figure.rows[0].key == "a" and figure.rows[0].spec.q == 1.5


def test_report_before_any_run_marks_rows_planned(tmp_path):
    result = runner.invoke(
        app, ["report", "table2", "--work-dir", str(tmp_path)], env={"COLUMNS": "250"}
    )
    assert result.exit_code == 0, result.output
    assert "Table 2" in result.output
    assert result.output.count("planned") >= 6
    assert "- (+2.7)" in result.output  # the paper's effect of the full Seesaw row: 26.4 - 23.7
    assert "6 claims: 6 not run" in result.output


@pytest.mark.slow
def test_data_synth_writes_an_lvis_dataset(tmp_path):
    result = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "d"), "--seed", "3"])
    assert result.exit_code == 0, result.output
    for name in ("annotations/lvis_v1_train.json", "annotations/lvis_v1_val.json"):
        assert (tmp_path / "d" / name).exists()
    val_images = presets.TINY.synth.num_val_images
    assert len(list((tmp_path / "d" / "val2017").glob("*.png"))) == val_images == 400


@pytest.mark.slow
def test_plan_all_counts_rows_runs_and_cost(tmp_path):
    result = _seesaw("plan", "all", "--preset", "paper", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    # Tables 1-9: 68 rows, 62 runs; 10-11: 15 rows, 14 runs (q = 1 is in both); 12: 12, 12;
    # 13: 3, 3; the figures' runs are Table 1's
    assert summary.startswith("98 table rows and 20 figure rows, 87 distinct runs, estimated ")
    assert "GPU-hours" in summary


def test_config_of_an_unknown_run_is_one_line_and_exit_2(tmp_path):
    result = _seesaw("config", "nosuchrun", cwd=tmp_path)
    assert result.returncode == 2
    assert "no run of preset 'tiny'" in result.stderr and "seesaw plan all" in result.stderr


def test_commands_that_only_plan_or_read_runs_import_no_torch():
    """`status`, `report`, `plan`, `eval` and repro's checks answer in a second or two: what
    they import leaves torch, mmcv and mmdet (5 s or more) to the training job."""
    code = (
        "import sys, cli\n"
        "from seesaw_repro.evaluation import lvis_eval\n"
        "from seesaw_repro.execution import executors, runs, slurm\n"
        "from seesaw_repro.paper import recipes\n"
        "from seesaw_repro.reporting import report, results, verdicts\n"
        "print(sorted({'torch', 'mmcv', 'mmdet'} & set(sys.modules)))"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"


def test_a_plan_over_budget_is_refused_before_anything_runs(tmp_path):
    """Table 2's six tiny runs cost 16.2 CPU-core minutes by the preset's estimate."""
    result = _seesaw("repro", "table2", "--budget", "5", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "6 run(s) still to train" in lines[0]
    assert "16.2 CPU-core minutes, over the budget of 5" in lines[0]
    assert not (tmp_path / "seesaw-work").exists()  # not even the data was generated
    within = _seesaw("repro", "table2", "--budget", "17", "--dry-run", cwd=tmp_path)
    assert within.returncode == 0 and within.stdout.count("trains from the start") == 6


def test_report_only_reads_the_work_dir_and_status_asks_slurm(tmp_path, monkeypatch):
    """`seesaw report` is safe from a cron job: it runs no Slurm command (bringing a run's
    state up to date may scancel its job); `seesaw status` does ask Slurm."""
    from seesaw_repro.execution.runs import RunDir, plan

    calls, fake = tmp_path / "calls", tmp_path / "bin"
    fake.mkdir()
    for command in ("squeue", "sacct", "scancel", "sinfo"):
        (fake / command).write_text(f"#!/bin/sh\necho {command} >> {calls}\n")
        (fake / command).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    run = plan(recipes.load_table("table2"), "tiny")[0]
    run_dir = RunDir(tmp_path / "w", run.run_id)
    run_dir.path.mkdir(parents=True)
    run_dir.set_status("queued", executor="slurm", job_id="4242")
    work = ["--work-dir", str(tmp_path / "w")]
    for fmt in ("rich", "csv", "html"):
        result = runner.invoke(app, ["report", "table2", "--format", fmt, *work])
        assert result.exit_code == 0, result.output
    assert not calls.exists() and run_dir.status()["state"] == "queued"
    result = runner.invoke(app, ["status", "table2", *work])
    assert result.exit_code == 0, result.output
    assert "squeue" in calls.read_text().split()
